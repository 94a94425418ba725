"""VTC, the Virtual Token Counter (Sheng et al., OSDI'24), weighted.

One counter per client.  Admission takes the backlogged client with the smallest
counter and admits its earliest request, stopping at the first that does not fit;
it charges ``w_p * prompt / weight``.  Every output token charges ``w_q / weight``.
A client that becomes backlogged is lifted to the smallest counter among the other
backlogged clients, so idle time earns no credit.  When no other client is
backlogged the paper lifts to the counter of the client that last left the queue;
the artifact skips that case; we follow the paper.
"""

from __future__ import annotations

import numpy as np

from engine.request import Request
from schedulers.client_queues import ClientQueues
from schedulers.heap import ClientHeap


class VTC(ClientQueues):
    name = "vtc"
    lift = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.counters: dict[str, float] = {}
        self._backlogged = ClientHeap()  # backlogged clients keyed by counter
        self._clients: list[str] = []  # first-seen order: a request's slot is its client's index
        self._index: dict[str, int] = {}
        # Every output token costs w_q / weight unless a subclass prices tokens per request.
        self.array_feedback = type(self).token_charge is VTC.token_charge

    # -- charges: what VTC-predict and friends change -----------------------------
    def admission_charge(self, req: Request) -> float:
        return self.service.w_p * req.prompt_tokens

    def token_charge(self, req: Request, k: int) -> float:
        return self.service.w_q * k

    def finish_charge(self, req: Request) -> float:
        return 0.0

    # -- queue ----------------------------------------------------------------------
    def _new_client(self, client: str) -> None:
        self.counters[client] = 0.0
        self._index[client] = len(self._clients)
        self._clients.append(client)

    def _backlog(self, client: str, req: Request, arrival: bool) -> None:
        if arrival and self.lift:
            self._lift(client)
        self._backlogged.push(client, self.counters[client])

    def _unbacklog(self, client: str) -> None:
        self._backlogged.remove(client)

    def _charge_admission(self, req: Request, now: float) -> None:
        req.slot = self._index[req.client]
        self._charge(req.client, self.admission_charge(req) / req.weight)

    def _lift(self, client: str) -> None:
        if len(self._backlogged):
            floor = self._backlogged.min_key()
        elif self._last_left is not None and self._last_left != client:
            floor = self.counters[self._last_left]
        else:
            return
        if floor > self.counters[client]:
            self.counters[client] = floor

    def peek(self) -> Request | None:
        client = self._backlogged.peek()
        return None if client is None else self._queues[client][0]

    # -- counters -------------------------------------------------------------------
    def _charge(self, client: str, amount: float) -> None:
        if amount:
            self.counters[client] += amount
            if client in self._backlogged:
                self._backlogged.update(client, self.counters[client])

    def on_tokens(self, reqs, k: int) -> None:
        per_client: dict[str, float] = {}  # one heap update per client, not per request
        for req in reqs:
            per_client[req.client] = per_client.get(req.client, 0.0) + self.token_charge(req, k) / req.weight
        self._charge_clients(per_client.items())

    def on_tokens_slots(self, slots, generated, weights, k: int) -> None:
        amounts = np.bincount(slots, weights=(self.service.w_q * k) / weights)
        clients = np.flatnonzero(amounts)
        names = self._clients
        self._charge_clients(zip([names[c] for c in clients.tolist()], amounts[clients].tolist()))

    def _charge_clients(self, amounts) -> None:
        counters, backlogged = self.counters, self._backlogged
        moved = []
        for client, amount in amounts:
            if amount:
                counters[client] += amount
                if client in backlogged:
                    moved.append((client, counters[client]))
        backlogged.update_many(moved)

    def on_finish(self, req: Request, now: float) -> None:
        self._charge(req.client, self.finish_charge(req) / req.weight)

    def describe(self) -> dict:
        return {**super().describe(), "lift": self.lift}
