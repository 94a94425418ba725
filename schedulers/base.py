"""The policy interface: what an engine asks a scheduler, and what it tells it.

An engine (the simulator, the S-LoRA engine, or vLLM through the adapter in ``serving/``) owns
the running batch, the KV cache and the clock.  A policy owns the waiting requests and decides
the order of admission.  The VTC artifact's scheduler has three verbs (append a request,
pick the next batch, update the counters after a step); ours are the same three:

**Core** (a policy implements these; ``fcfs.py`` is the smallest example, ``vtc.py`` the next):

1. *Add*: ``on_arrival(req, now) -> bool`` queues a request (``False`` rejects it);
   ``waiting`` is how many are queued.
2. *Select*: ``select(fits) -> Request | None`` names the next request to admit (None stops
   filling this step; ``fits(req)`` says whether the engine has room for it); by default it
   is ``peek()``, the head, if it fits.  The engine then calls ``admit(req, now, resumed)``
   (``resumed``: readmitted after a preemption).  ``requeue(req)`` puts a preempted request
   back at the head of the queue.
3. *Update*: ``on_tokens(tokens, k)``: the engine produced ``k`` output tokens for each
   request in ``tokens``; ``on_finish(req, now)``: a request produced its last token.

``tokens`` (``engine.feedback.Tokens``) is a sequence of Request objects (``for req in tokens``,
with ``req.generated`` up to date) and the same batch as numpy arrays: ``tokens.slots`` (each
request's ``req.slot``, which the policy may set at admission to index its own arrays; -1 for
None), ``tokens.generated`` and ``tokens.weights``.  Read either form; every engine sends the
same object, and converts only what is read.

**Optional hooks** (the defaults do nothing or keep the engine's choice):

* ``on_step(now, duration_s, step)``: a step of ``duration_s`` ran ``step``, iterable as
  ``(request, tokens computed)`` pairs, or as arrays ``step.slots`` and ``step.tokens``.
* ``token_budget(default) -> int``: the next step's token budget.
* ``bind_engine(cost_model, kv_capacity_tokens)``: called before a run with the engine's step
  costs (``split`` / ``request_seconds``, ``engine.cost_model.StepCost``) and KV capacity.
* ``prefix_lookup``: set by an engine with a prefix cache; ``prefix_lookup(req)`` is how many of
  ``req``'s prompt tokens are cached now.
* ``exact_under_fast_forward``: False if the policy needs every ``on_step`` (the simulator may
  otherwise advance decode-only stretches in one ``on_tokens(tokens, k)`` with ``k > 1``).
* ``fits.max_pending``: where the engine has it, a request fits exactly when its ``pending``
  tokens are at most this, so ``select`` may test many requests at once.

Nothing here knows about blocks, steps or vLLM objects; ``schedulers/`` imports nothing from
``engine/`` (the shared types are in ``traces/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from traces.request import Request


@dataclass(frozen=True)
class ServiceWeights:
    """VTC's service price: ``w_p`` per prompt token, ``w_q`` per output token."""

    w_p: float = 1.0
    w_q: float = 2.0


class Policy:
    """Base class; subclasses define the order. See the module docstring."""

    name = "policy"

    def __init__(self, service: ServiceWeights = ServiceWeights()):
        self.service = service

    # -- core: add ------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        raise NotImplementedError

    def on_arrival(self, req: Request, now: float) -> bool:
        raise NotImplementedError

    # -- core: select -----------------------------------------------------------------
    def peek(self) -> Request | None:
        """The request this policy would admit next."""
        raise NotImplementedError

    def select(self, fits: Callable[[Request], bool]) -> Request | None:
        """Next request to admit; by default the head, and stop at the first that does not fit."""
        req = self.peek()
        return req if req is not None and fits(req) else None

    def admit(self, req: Request, now: float, resumed: bool) -> None:
        raise NotImplementedError

    def requeue(self, req: Request) -> None:
        raise NotImplementedError

    # -- core: update -----------------------------------------------------------------
    def on_tokens(self, tokens, k: int) -> None:
        """``k`` output tokens were produced for each request in ``tokens`` (``engine.feedback.Tokens``)."""

    def on_finish(self, req: Request, now: float) -> None:
        """A request finished."""

    # -- optional hooks -----------------------------------------------------------------
    def on_step(self, now: float, duration_s: float, step) -> None:
        """A step of ``duration_s`` started at ``now`` ran ``step`` (``engine.feedback.Step``)."""

    def token_budget(self, default: int) -> int:
        """The token budget of the next step; the engine's own by default."""
        return default

    def bind_engine(self, cost_model=None, kv_capacity_tokens: float | None = None) -> None:
        """The engine's step costs and KV capacity in tokens, before a run."""

    prefix_lookup: Callable[[Request], int] | None = None  # set by an engine with a prefix cache
    exact_under_fast_forward = True  # False: the policy needs every on_step (no k > 1 stretches)

    def describe(self) -> dict:
        """The knobs that define this policy, for run.json."""
        return {"name": self.name, "w_p": self.service.w_p, "w_q": self.service.w_q}
