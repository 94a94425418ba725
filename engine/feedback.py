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


class _Batch:
    """What ``Tokens`` and ``Step`` share: a list of items (Request objects, or ``(request, tokens)``
    pairs) given, or made on first read by ``_make``, and the requests' slots as an array."""

    __slots__ = ("_items", "_make", "_slots")

    def __init__(self) -> None:
        self._items = self._make = self._slots = None

    @classmethod
    def _of(cls, items):
        b = cls()
        b._items = items if isinstance(items, list) else list(items)
        return b

    def _list(self) -> list:
        if self._items is None:
            self._items = self._make()
        return self._items

    def __iter__(self):
        return iter(self._list())

    def __len__(self) -> int:
        return len(self._slots) if self._items is None else len(self._items)

    @property
    def slots(self) -> np.ndarray:
        if self._slots is None:
            self._slots = np.array(self._slot_list(self._items), dtype=np.int64)
        return self._slots


class Tokens(_Batch):
    """``k`` output tokens for each of a step's requests (see the module docstring)."""

    __slots__ = ("_generated", "_weights")

    def __init__(self) -> None:
        super().__init__()
        self._generated = self._weights = None

    @classmethod
    def of(cls, requests) -> Tokens:
        """From Request objects (their ``generated`` already counts the new tokens)."""
        return cls._of(requests)

    @classmethod
    def from_arrays(
        cls, slots: np.ndarray, generated: np.ndarray, weights: np.ndarray, requests: Callable[[], list] | None = None
    ) -> Tokens:
        """From arrays; ``requests()``, called at most once and only if the policy iterates, gives
        the Request objects with ``generated`` up to date."""
        t = cls()
        t._slots, t._generated, t._weights, t._make = slots, generated, weights, requests
        return t

    @staticmethod
    def _slot_list(requests) -> list:
        return [-1 if r.slot is None else r.slot for r in requests]

    @property
    def requests(self) -> list:
        return self._list()

    @property
    def generated(self) -> np.ndarray:
        if self._generated is None:
            self._generated = np.array([r.generated for r in self._items], dtype=np.int64)
        return self._generated

    @property
    def weights(self) -> np.ndarray:
        if self._weights is None:
            self._weights = np.array([r.weight for r in self._items], dtype=np.float64)
        return self._weights


class Step(_Batch):
    """The batch of one step: each request and the tokens it computed (see the module docstring)."""

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        super().__init__()
        self._tokens = None

    @classmethod
    def of(cls, pairs) -> Step:
        """From ``(request, tokens)`` pairs."""
        return cls._of(pairs)

    @classmethod
    def from_arrays(cls, slots: np.ndarray, tokens: np.ndarray, pairs: Callable[[], list] | None = None) -> Step:
        """From arrays; ``pairs()``, called at most once and only if the policy iterates, gives the
        ``(request, tokens)`` pairs."""
        s = cls()
        s._slots, s._tokens, s._make = slots, tokens, pairs
        return s

    @staticmethod
    def _slot_list(pairs) -> list:
        return [-1 if r.slot is None else r.slot for r, _ in pairs]

    @property
    def pairs(self) -> list:
        return self._list()

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.array([n for _, n in self._items], dtype=np.int64)
        return self._tokens
