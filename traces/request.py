"""A request as the engine and the scheduling policies see it."""

from __future__ import annotations


class Request:
    """One request's static description and its progress through the engine.

    Policies read ``client``, ``weight``, ``prompt_tokens`` and, where they are
    allowed to (oracles), ``output_tokens``.  ``predicted_output`` is the output
    length a predicting policy charged at admission.
    """

    __slots__ = (
        "request_id",
        "client",
        "arrival_s",
        "prompt_tokens",
        "output_tokens",
        "weight",
        "prompt",  # prompt text, when the workload has it (predictors may read it)
        "row",  # position in the workload (engines that keep their batch in arrays index by it)
        # progress
        "computed",  # tokens (prompt, then output) whose KV is computed
        "generated",  # output tokens produced
        "blocks",  # KV blocks held
        "decoding",  # prefill done; each step computes one token
        "admitted_s",
        "first_token_s",
        "finish_s",
        "preemptions",
        "status",
        "reject_reason",  # why it was rejected at arrival (None: it was not)
        "cached_prompt_tokens",  # prompt tokens the prefix cache served at its first admission
        # policy scratch
        "predicted_output",
        "slot",  # the policy's index for this request's state (Tokens.slots, Step.slots: schedulers/base.py), or None
        # engine state at arrival (logged for predictors)
        "arrival_state",
    )

    def __init__(self, request_id, client, arrival_s, prompt_tokens, output_tokens, weight=1.0, prompt=None):
        self.request_id = request_id
        self.client = client
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.weight = weight
        self.prompt = prompt
        self.row = None
        self.computed = 0
        self.generated = 0
        self.blocks = 0
        self.decoding = False
        self.admitted_s = None
        self.first_token_s = None
        self.finish_s = None
        self.preemptions = 0
        self.status = "waiting"
        self.reject_reason = None
        self.cached_prompt_tokens = 0
        self.predicted_output = None
        self.slot = None
        self.arrival_state = (0, 0, 0, 0.0)

    @property
    def pending(self) -> int:
        """Tokens to compute before the next output token (1 while decoding).

        After a preemption the KV is recomputed for the prompt and every output
        token generated so far, as vLLM's recompute preemption does.
        """
        return self.prompt_tokens + self.generated - self.computed

    def __repr__(self) -> str:
        return f"Request({self.request_id}, client={self.client!r}, p={self.prompt_tokens}, o={self.output_tokens})"
