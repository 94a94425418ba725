"""First come, first served: admit in arrival order."""

from __future__ import annotations

from collections import deque

from schedulers.base import Policy
from traces.request import Request


class FCFS(Policy):
    name = "fcfs"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._queue: deque[Request] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def on_arrival(self, req: Request, now: float) -> bool:
        self._queue.append(req)
        return True

    def peek(self) -> Request | None:
        return self._queue[0] if self._queue else None

    def admit(self, req: Request, now: float, resumed: bool) -> None:
        self._queue.popleft()

    def requeue(self, req: Request) -> None:
        self._queue.appendleft(req)
