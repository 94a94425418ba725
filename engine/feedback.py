"""What an engine tells a policy after a step, in the one form every policy reads.

``Policy.on_tokens(tokens, k)`` gets a ``Tokens`` and ``Policy.on_step(now, duration_s, step)`` a
``Step``.  Each is both a sequence of the step's requests (iterate it: Request objects, or
``(request, tokens computed)`` pairs) and the same batch as numpy arrays (``slots``: each
request's ``req.slot``, -1 for None; ``generated``, ``weights``; ``tokens``), so that a policy
writes its per-step update once, in whichever form it likes, and every engine drives it:

* engines that hold Request objects (the vLLM adapter's bridge, the S-LoRA engine, tests) build
  them with ``Tokens.of(requests)`` and ``Step.of(pairs)``; the arrays are built on first read;
* the simulator keeps its batch in arrays and builds them with ``from_arrays``; the Request
  objects are looked up (and their ``generated`` brought up to date) only if the policy iterates.

This is the one place the per-request and the array forms meet; policies never convert.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _slots(reqs) -> np.ndarray:
    return np.array([-1 if r.slot is None else r.slot for r in reqs], dtype=np.int64)


class Tokens:
    """``k`` output tokens for each of a step's requests (see the module docstring)."""

    __slots__ = ("_requests", "_make", "_slots", "_generated", "_weights")

    def __init__(self) -> None:
        self._requests = self._make = self._slots = self._generated = self._weights = None

    @classmethod
    def of(cls, requests) -> Tokens:
        """From Request objects (their ``generated`` already counts the new tokens)."""
        t = cls()
        t._requests = requests if isinstance(requests, list) else list(requests)
        return t

    @classmethod
    def from_arrays(
        cls, slots: np.ndarray, generated: np.ndarray, weights: np.ndarray, requests: Callable[[], list] | None = None
    ) -> Tokens:
        """From arrays; ``requests()``, called at most once and only if the policy iterates, gives
        the Request objects with ``generated`` up to date."""
        t = cls()
        t._slots, t._generated, t._weights, t._make = slots, generated, weights, requests
        return t

    @property
    def requests(self) -> list:
        if self._requests is None:
            self._requests = self._make()
        return self._requests

    def __iter__(self):
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self._slots) if self._requests is None else len(self._requests)

    @property
    def slots(self) -> np.ndarray:
        if self._slots is None:
            self._slots = _slots(self._requests)
        return self._slots

    @property
    def generated(self) -> np.ndarray:
        if self._generated is None:
            self._generated = np.array([r.generated for r in self._requests], dtype=np.int64)
        return self._generated

    @property
    def weights(self) -> np.ndarray:
        if self._weights is None:
            self._weights = np.array([r.weight for r in self._requests], dtype=np.float64)
        return self._weights


class Step:
    """The batch of one step: each request and the tokens it computed (see the module docstring)."""

    __slots__ = ("_pairs", "_make", "_slots", "_tokens")

    def __init__(self) -> None:
        self._pairs = self._make = self._slots = self._tokens = None

    @classmethod
    def of(cls, pairs) -> Step:
        """From ``(request, tokens)`` pairs."""
        s = cls()
        s._pairs = pairs if isinstance(pairs, list) else list(pairs)
        return s

    @classmethod
    def from_arrays(cls, slots: np.ndarray, tokens: np.ndarray, pairs: Callable[[], list] | None = None) -> Step:
        """From arrays; ``pairs()``, called at most once and only if the policy iterates, gives the
        ``(request, tokens)`` pairs."""
        s = cls()
        s._slots, s._tokens, s._make = slots, tokens, pairs
        return s

    @property
    def pairs(self) -> list:
        if self._pairs is None:
            self._pairs = self._make()
        return self._pairs

    def __iter__(self):
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self._slots) if self._pairs is None else len(self._pairs)

    @property
    def slots(self) -> np.ndarray:
        if self._slots is None:
            self._slots = np.array([-1 if r.slot is None else r.slot for r, _ in self._pairs], dtype=np.int64)
        return self._slots

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.array([n for _, n in self._pairs], dtype=np.int64)
        return self._tokens
