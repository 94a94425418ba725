"""Per-client FIFO queues with the bookkeeping every counter-based policy shares.

A client is *backlogged* while it has a waiting request.  Subclasses (VTC and its variants,
Equinox) say what happens when a client becomes backlogged (``_backlog``: lift its counters,
mark it backlogged in their counters), when it stops (``_unbacklog``) and what an admission charges
(``_charge_admission``); this class keeps the queues, the waiting count and the client that
last left the queue (the lift's floor when nobody else is backlogged).
"""

from __future__ import annotations

from collections import deque

from schedulers.base import Policy
from traces.request import Request


class ClientQueues(Policy):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._queues: dict[str, deque[Request]] = {}
        self._last_left: str | None = None
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    # -- what subclasses decide -----------------------------------------------------
    def _new_client(self, client: str) -> None:
        """A client seen for the first time."""

    def _backlog(self, client: str, req: Request, arrival: bool) -> None:
        """``client`` has a waiting request again (``req``, by arrival or by requeue)."""
        raise NotImplementedError

    def _unbacklog(self, client: str) -> None:
        """``client``'s last waiting request was admitted."""
        raise NotImplementedError

    def _charge_admission(self, req: Request, now: float) -> None:
        raise NotImplementedError

    def _new_head(self, req: Request, now: float) -> None:
        """``req`` became the head of its client's queue after an admission."""

    def _resumed(self, req: Request) -> None:
        """``req`` was admitted without an admission charge (``resumed``)."""

    # -- the queue verbs --------------------------------------------------------------
    def on_arrival(self, req: Request, now: float) -> bool:
        client = req.client
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
            self._new_client(client)
        queue.append(req)
        self._waiting += 1
        if len(queue) == 1:
            self._backlog(client, req, arrival=True)
        return True

    def admit(self, req: Request, now: float, resumed: bool) -> None:
        client = req.client
        queue = self._queues[client]
        if queue[0] is req:
            queue.popleft()
        else:  # a request skipped ahead within its client's queue
            queue.remove(req)
        self._waiting -= 1
        if not resumed:
            self._charge_admission(req, now)
        else:
            self._resumed(req)
        if queue:
            self._new_head(queue[0], now)
        else:
            self._unbacklog(client)
            self._last_left = client

    def requeue(self, req: Request) -> None:
        queue = self._queues[req.client]
        queue.appendleft(req)
        self._waiting += 1
        if len(queue) == 1:
            self._backlog(req.client, req, arrival=False)
