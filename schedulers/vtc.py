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

from schedulers.client_queues import ClientQueues
from schedulers.counters import ClientCounters
from traces.request import Request


class VTC(ClientQueues):
    name = "vtc"
    lift = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._counters = ClientCounters(rows=1)  # a request's slot is its client's column

    @property
    def counters(self) -> dict[str, float]:
        """Every client's counter."""
        return self._counters.as_dict(0)

    # -- charges: what VTC-predict and friends change -----------------------------
    def admission_charge(self, req: Request) -> float:
        return self.service.w_p * req.prompt_tokens

    def token_charges(self, tokens, k: int):
        """What the ``k`` new tokens of each request in ``tokens`` cost (a number or an array)."""
        return self.service.w_q * k

    def finish_charge(self, req: Request) -> float:
        return 0.0

    # -- queue ----------------------------------------------------------------------
    def _new_client(self, client: str) -> None:
        self._counters.add_client(client)

    def _backlog(self, client: str, req: Request, arrival: bool) -> None:
        i = self._counters.index[client]
        if arrival and self.lift:
            self._lift(i)
        self._counters.backlog(i)

    def _unbacklog(self, client: str) -> None:
        self._counters.unbacklog(self._counters.index[client])

    def _charge_admission(self, req: Request, now: float) -> None:
        req.slot = self._counters.index[req.client]
        self._charge(req.slot, self.admission_charge(req) / req.weight)

    def _lift(self, i: int) -> None:
        last = self._last_left
        self._counters.lift(i, None if last is None else self._counters.index[last])

    def peek(self) -> Request | None:
        best = self._counters.smallest((1.0,))
        return None if best is None else self._queues[self._counters.names[best[0]]][0]

    # -- counters -------------------------------------------------------------------
    def _charge(self, i: int, amount: float) -> None:
        if amount:
            self._counters.add(i, (amount,))

    def on_tokens(self, tokens, k: int) -> None:
        self._counters.add_per_request(0, tokens.slots, self.token_charges(tokens, k) / tokens.weights)

    def on_finish(self, req: Request, now: float) -> None:
        self._charge(self._counters.index[req.client], self.finish_charge(req) / req.weight)

    def describe(self) -> dict:
        return {**super().describe(), "lift": self.lift}
