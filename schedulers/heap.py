"""An indexed min-heap of clients keyed by a number, with O(log n) update and removal.

The VTC family needs "the backlogged client with the smallest counter" after
every admission and every decode step; a heap with a position index gives that
in O(log clients) instead of a scan.  Ties go to the client first pushed, as the
VTC artifact's ``min`` over an insertion-ordered dict does.
"""

from __future__ import annotations

import heapq


class ClientHeap:
    __slots__ = ("_keys", "_heap", "_pos", "_seq", "_next_seq")

    def __init__(self) -> None:
        self._heap: list = []  # clients
        self._keys: dict = {}  # client -> (key, seq)
        self._pos: dict = {}  # client -> index in _heap
        self._seq: dict = {}  # client -> first-seen order (tie break)
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def __contains__(self, client) -> bool:
        return client in self._pos

    def peek(self):
        """The client with the smallest key, or None."""
        return self._heap[0] if self._heap else None

    def min_key(self) -> float:
        return self._keys[self._heap[0]][0]

    def key(self, client) -> float:
        return self._keys[client][0]

    def ascending(self):
        """Yield ``(client, key)`` in increasing key order without changing the heap.

        A best-first walk of the heap's tree: the k smallest cost O(k log k), however many
        clients there are.
        """
        heap, keys = self._heap, self._keys
        if not heap:
            return
        frontier = [(keys[heap[0]], 0)]
        n = len(heap)
        while frontier:
            key, i = heapq.heappop(frontier)
            yield heap[i], key[0]
            for child in (2 * i + 1, 2 * i + 2):
                if child < n:
                    heapq.heappush(frontier, (keys[heap[child]], child))

    def push(self, client, key: float) -> None:
        seq = self._seq.get(client)
        if seq is None:
            seq = self._seq[client] = self._next_seq
            self._next_seq += 1
        self._keys[client] = (key, seq)
        self._heap.append(client)
        self._pos[client] = len(self._heap) - 1
        self._up(len(self._heap) - 1)

    def update(self, client, key: float) -> None:
        old = self._keys[client]
        new = (key, old[1])
        self._keys[client] = new
        i = self._pos[client]
        if new < old:
            self._up(i)
        else:
            self._down(i)

    def update_many(self, items: list) -> None:
        """``update`` for many ``(client, key)`` pairs at once.

        When they are a good part of the heap (every running client charged at every step),
        re-sorting the whole heap (a sorted list is a heap) is cheaper than one sift each.
        """
        if len(items) * 8 < len(self._heap):
            for client, key in items:
                self.update(client, key)
            return
        keys = self._keys
        for client, key in items:
            keys[client] = (key, keys[client][1])
        self._heap.sort(key=keys.__getitem__)
        self._pos = {client: i for i, client in enumerate(self._heap)}

    def remove(self, client) -> None:
        i = self._pos.pop(client)
        del self._keys[client]
        last = self._heap.pop()
        if i < len(self._heap):
            self._heap[i] = last
            self._pos[last] = i
            self._up(i)
            self._down(self._pos[last])

    def _up(self, i: int) -> None:
        heap, keys, pos = self._heap, self._keys, self._pos
        item = heap[i]
        k = keys[item]
        while i:
            parent = (i - 1) >> 1
            p = heap[parent]
            if keys[p] <= k:
                break
            heap[i] = p
            pos[p] = i
            i = parent
        heap[i] = item
        pos[item] = i

    def _down(self, i: int) -> None:
        heap, keys, pos = self._heap, self._keys, self._pos
        n = len(heap)
        item = heap[i]
        k = keys[item]
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            right = child + 1
            if right < n and keys[heap[right]] < keys[heap[child]]:
                child = right
            c = heap[child]
            if k <= keys[c]:
                break
            heap[i] = c
            pos[c] = i
            i = child
        heap[i] = item
        pos[item] = i
