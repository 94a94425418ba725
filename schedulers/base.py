"""The policy interface: what an engine asks a scheduler, and what it tells it.

An engine (the simulator, or vLLM through the adapter) owns the running batch,
the KV cache and the clock.  A policy owns the waiting requests and decides the
order of admission.  The engine calls, in this order within a step:

* ``on_arrival(req, now)`` when a request arrives; ``False`` rejects it.
* ``select(fits)`` to ask for the next request to admit; ``fits(req)`` says
  whether the engine has room for it.  Returning None stops filling this step.
  The simulator's ``fits`` also has ``max_pending``: a request fits exactly when its
  ``pending`` tokens are at most that, so a policy may test many requests at once.
* ``admit(req, now, resumed)`` when the engine admits the selected request.
* ``requeue(req)`` when the engine preempts a running request: it waits again,
  at the head of its client's queue.
* ``on_tokens(reqs, k)`` after the engine produced ``k`` output tokens for each
  request in ``reqs`` (``k > 1`` when the engine advances several steps at once).
* ``on_finish(req, now)`` when a request has produced its last token.
* ``on_step(now, duration_s, batch)`` after each step, with ``(request, tokens)`` pairs.
* ``token_budget(default)`` before each step: the step's token budget.

A policy with ``array_feedback`` gives every request it admits a ``slot`` (``req.slot``, an
index into its own per-request or per-client state); an engine that keeps its batch in
arrays (the simulator) then reports steps and tokens as arrays (``on_step_slots``,
``on_tokens_slots``) instead of Request objects: one call per step, vectorised inside.

Nothing here knows about blocks, steps or vLLM objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from traces.request import Request


@dataclass(frozen=True)
class ServiceWeights:
    """VTC's service price: ``w_p`` per prompt token, ``w_q`` per output token."""

    w_p: float = 1.0
    w_q: float = 2.0


class Policy:
    """Base class; subclasses define the order. See the module docstring."""

    name = "policy"
    # The simulator may advance pure decode stretches in one move (calling on_tokens with k > 1
    # and skipping on_step) only for policies whose decisions come out identical that way.
    exact_under_fast_forward = True
    # Set by an engine with a prefix cache before the run: ``prefix_lookup(req)`` is how many of
    # ``req``'s prompt tokens are cached right now (a multiple of the block size).  None: no cache.
    prefix_lookup: Callable[[Request], int] | None = None

    def __init__(self, service: ServiceWeights = ServiceWeights()):
        self.service = service

    # -- queue ---------------------------------------------------------------
    @property
    def waiting(self) -> int:
        raise NotImplementedError

    def on_arrival(self, req: Request, now: float) -> bool:
        raise NotImplementedError

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

    # -- feedback ------------------------------------------------------------
    def on_tokens(self, reqs: Iterable[Request], k: int) -> None:
        """Output tokens were produced; counters that charge per token update here."""

    # -- feedback in arrays (optional) -----------------------------------------
    array_feedback = False

    def on_tokens_slots(self, slots, generated, weights, k: int) -> None:
        """``on_tokens`` for the requests with these slots (numpy arrays, one entry per request:
        slot, output tokens generated so far, weight); a slot of -1 is a request without one."""
        raise NotImplementedError

    def on_step_slots(self, now: float, duration_s: float, slots, tokens) -> None:
        """``on_step`` with the batch as arrays: each request's slot (-1: none) and tokens computed."""
        raise NotImplementedError

    def on_finish(self, req: Request, now: float) -> None:
        """A request finished."""

    def on_step(self, now: float, duration_s: float, batch: list) -> None:
        """A step of ``duration_s`` started at ``now`` ran ``batch``: ``(request, tokens)`` pairs."""

    def token_budget(self, default: int) -> int:
        """The token budget of the next step; the engine's own by default."""
        return default

    def describe(self) -> dict:
        """The knobs that define this policy, for run.json."""
        return {"name": self.name, "w_p": self.service.w_p, "w_q": self.service.w_q}
