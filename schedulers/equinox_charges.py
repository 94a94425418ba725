"""What Equinox charged each admitted, unfinished request, and the predictions behind it.

Columns indexed by the request's slot (``req.slot``), so that a step's charges are a few array
operations over its batch, not a loop over its requests.
"""

from __future__ import annotations

import numpy as np

FLOATS = (
    "out_hat",  # predicted output tokens (charged at admission)
    "q",  # the UFC quality factor fixed at admission
    "ufc",  # UFC charged so far
    "rfc",  # RFC charged so far (prediction, then whatever went beyond it)
    "rfc_actual",  # engine time measured so far, / weight
    "weight",
    "prompt",  # prompt tokens
    "context",  # tokens whose KV the request holds (computed), as the steps reported them
    "reserve",  # KV tokens reserved for it by memory-aware admission: prompt + max(quantile, generated)
)


class Charges:
    def __init__(self, capacity: int = 256) -> None:
        self._columns = np.zeros((len(FLOATS), capacity))  # one row per name in FLOATS
        self._views()
        self._ks = np.arange(1.0, capacity + 1)  # 1, 2, ... (peak_kv)
        self.client = np.zeros(capacity, dtype=np.int64)  # the client's first-seen index
        self.running = np.zeros(capacity, dtype=bool)  # admitted and holding KV (not preempted)
        self._free = list(range(capacity - 1, -1, -1))

    def _views(self) -> None:
        for row, name in enumerate(FLOATS):
            setattr(self, name, self._columns[row])

    def add(self, client: int, values: tuple) -> int:
        """A new request's charge (``values`` in FLOATS' order); returns its slot."""
        if not self._free:
            n = len(self.client)
            self._columns = np.concatenate((self._columns, np.zeros_like(self._columns)), axis=1)
            self._views()
            self._ks = np.arange(1.0, 2 * n + 1)
            self.client = np.concatenate((self.client, np.zeros(n, dtype=np.int64)))
            self.running = np.concatenate((self.running, np.zeros(n, dtype=bool)))
            self._free = list(range(2 * n - 1, n - 1, -1))
        slot = self._free.pop()
        self.client[slot] = client
        self._columns[:, slot] = values
        self.running[slot] = True
        return slot

    def release(self, slot: int) -> None:
        self.running[slot] = False
        self._free.append(slot)

    def peak_kv(self) -> float:
        """The most KV tokens the running requests will hold at once if each grows to its
        reservation and then frees its KV: each holds ``max(context, prompt)`` now and grows a token
        a step for ``reserve - that`` more steps.  With ``r`` sorted from longest to shortest, the
        ``k`` longest still run when the ``k``-th finishes, holding ``sum(held[:k]) + k * r[k]``."""
        slots = np.flatnonzero(self.running)
        n = len(slots)
        if not n:
            return 0.0
        held = np.maximum(self.context[slots], self.prompt[slots])
        remaining = self.reserve[slots] - held
        np.maximum(remaining, 0.0, out=remaining)
        order = remaining.argsort()[::-1]  # longest first (token counts: the sums are exact in any order)
        peak = held[order].cumsum()
        peak += self._ks[:n] * remaining[order]
        return float(peak.max())
