"""RPM(N): per-client rate limit; a client's request is rejected when it already
had N accepted requests in the last 60 s.  Accepted requests are served FCFS."""

from __future__ import annotations

from collections import defaultdict, deque

from schedulers.fcfs import FCFS
from traces.request import Request

WINDOW_S = 60.0


class RPM(FCFS):
    name = "rpm"

    def __init__(self, limit: int = 5, **kwargs):
        super().__init__(**kwargs)
        if limit < 1:
            raise ValueError("RPM limit must be >= 1")
        self.limit = limit
        self._accepted: dict[str, deque[float]] = defaultdict(deque)

    def on_arrival(self, req: Request, now: float) -> bool:
        recent = self._accepted[req.client]
        while recent and recent[0] <= req.arrival_s - WINDOW_S:
            recent.popleft()
        if len(recent) >= self.limit:
            return False
        recent.append(req.arrival_s)
        return super().on_arrival(req, now)

    def retry_after_s(self, req: Request) -> float:
        """Seconds from ``req``'s arrival until its client's window has room (0: it has room now)."""
        recent = self._accepted[req.client]
        while recent and recent[0] <= req.arrival_s - WINDOW_S:
            recent.popleft()
        if len(recent) < self.limit:
            return 0.0
        return max(0.0, recent[0] + WINDOW_S - req.arrival_s)

    def describe(self) -> dict:
        return {**super().describe(), "limit": self.limit, "window_s": WINDOW_S}
