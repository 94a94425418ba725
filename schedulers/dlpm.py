"""DLPM, Deficit Longest Prefix Match (after Cao et al., "Locality-aware Fair Scheduling in LLM
Serving", arXiv 2501.14312): deficit round robin for fairness, longest cached prefix for locality.

Every client has a deficit ``d``, in VTC's service units over the client's weight.  An admission
charges ``w_p * prompt / weight``, every output token ``w_q / weight`` (the same prices as VTC).
A client may be chosen only while ``d > 0``.  When every backlogged client has ``d <= 0``, each
of them is refilled by the quantum ``Q`` (as many times as it takes for one to go positive, so
the largest lands in ``(0, Q]``).  Among the waiting requests of the clients with ``d > 0`` (the
first ``LPM_DEPTH`` of each client's queue), the one with the most prompt tokens in the prefix
cache (``Policy.prefix_lookup``) is admitted; ties go to the client whose oldest waiting request
arrived first, then to the earlier request.  As VTC does, filling stops at a choice that does not
fit.  docs/DLPM.md states the rule, the knob and the bound it gives.
"""

from __future__ import annotations

import numpy as np

from schedulers.client_queues import ClientQueues
from traces.request import Request

DEFAULT_QUANTUM = 2048.0  # service units per refill (a 2,048-token prompt, or 1,024 output tokens)
LPM_DEPTH = 32  # requests of each client's queue whose cached prefix a decision looks up


class DLPM(ClientQueues):
    name = "dlpm"

    def __init__(self, quantum: float = DEFAULT_QUANTUM, **kwargs):
        super().__init__(**kwargs)
        if not quantum > 0:
            raise ValueError("the DLPM quantum must be > 0")
        self.quantum = float(quantum)
        self._index: dict[str, int] = {}  # client -> its position in _deficit (a request's slot)
        self._deficit = np.zeros(16)
        self._backlogged: dict[str, None] = {}  # clients with a waiting request, an ordered set
        self.refills = 0  # quanta given to every backlogged client so far

    @property
    def deficits(self) -> dict[str, float]:
        """Every client's deficit."""
        return {c: float(self._deficit[i]) for c, i in self._index.items()}

    # -- queue ------------------------------------------------------------------------
    def _new_client(self, client: str) -> None:
        i = len(self._index)
        self._index[client] = i
        if i == len(self._deficit):
            self._deficit = np.concatenate((self._deficit, np.zeros_like(self._deficit)))

    def _backlog(self, client: str, req: Request, arrival: bool) -> None:
        self._backlogged[client] = None

    def _unbacklog(self, client: str) -> None:
        del self._backlogged[client]

    def _charge_admission(self, req: Request, now: float) -> None:
        req.slot = i = self._index[req.client]
        self._deficit[i] -= self.service.w_p * req.prompt_tokens / req.weight

    def _refill(self) -> None:
        """Every backlogged client has ``d <= 0``: give each the quantum until one has ``d > 0``."""
        rows = np.fromiter((self._index[c] for c in self._backlogged), dtype=np.int64, count=len(self._backlogged))
        top = float(self._deficit[rows].max())
        k = int(-top // self.quantum) + 1  # the fewest quanta that lift ``top`` above 0
        while top + k * self.quantum <= 0:  # rounding
            k += 1
        self._deficit[rows] += k * self.quantum
        self.refills += k

    def _eligible(self) -> list[str]:
        d = self._deficit
        index = self._index
        return [c for c in self._backlogged if d[index[c]] > 0]

    def peek(self) -> Request | None:
        """The request DLPM admits next (refilling first when no backlogged client has deficit left)."""
        if not self._backlogged:
            return None
        clients = self._eligible()
        if not clients:
            self._refill()
            clients = self._eligible()
        queues = self._queues
        lookup = self.prefix_lookup
        best = best_key = None
        for client in clients:
            queue = queues[client]
            head = queue[0]
            if lookup is None:  # nothing is cached: the client that has waited longest
                key = (0, head.arrival_s, head.request_id, 0)
                if best_key is None or key < best_key:
                    best, best_key = head, key
                continue
            for position, req in enumerate(queue):
                if position == LPM_DEPTH:
                    break
                key = (-lookup(req), head.arrival_s, head.request_id, position)
                if best_key is None or key < best_key:
                    best, best_key = req, key
        return best

    # -- charges ----------------------------------------------------------------------
    def on_tokens(self, tokens, k: int) -> None:
        np.subtract.at(self._deficit, tokens.slots, (self.service.w_q * k) / tokens.weights)

    def describe(self) -> dict:
        return {**super().describe(), "quantum": self.quantum, "lpm_depth": LPM_DEPTH}
