"""Per-client counters and the backlogged client with the smallest one (VTC, Equinox).

Counters live in numpy arrays, one row per counter (VTC has one, Equinox two), one column
per client in the order clients were first seen; that order breaks ties (the client seen
first wins, as the VTC artifact's ``min`` over an insertion-ordered dict).  The minimum of
each row over the *backlogged* clients is kept per block of ``BLOCK`` clients, so

* charging k clients at once (every client in a step's batch) is a few numpy calls over
  O(k * BLOCK) elements, not k heap updates in Python;
* the backlogged client with the smallest counter is two ``argmin`` calls, over the block
  minima and inside one block: O(clients / BLOCK + BLOCK) elements, flat in practice up to
  hundreds of thousands of clients;
* the smallest non-negative combination ``a * row0 + b * row1`` (Equinox's Holistic
  Fairness) opens blocks in increasing order of their lower bound ``a * min0 + b * min1``
  and stops at the first bound above the best score found.
"""

from __future__ import annotations

import numpy as np

BLOCK = 256
DENSE_CLIENTS = 4 * BLOCK  # up to this many clients, a step's charges go over all of them at once
INF = float("inf")


class ClientCounters:
    def __init__(self, rows: int = 1) -> None:
        self.rows = rows
        self.index: dict[str, int] = {}  # client -> column (first-seen order)
        self.names: list[str] = []
        self.values = np.zeros((rows, BLOCK))
        self.keys = np.full((rows, BLOCK), INF)  # the values of backlogged clients, inf elsewhere
        self.backlogged = np.zeros(BLOCK, dtype=bool)
        self.block_min = np.full((rows, 1), INF)  # per block, the minimum of keys
        self.totals = [0.0] * rows  # sums over the backlogged clients
        self.count = 0  # backlogged clients

    # -- clients ---------------------------------------------------------------------
    def add_client(self, name: str) -> int:
        i = len(self.names)
        if i == self.values.shape[1]:  # double the columns (a whole number of blocks)
            self.values = np.concatenate((self.values, np.zeros_like(self.values)), axis=1)
            self.keys = np.concatenate((self.keys, np.full_like(self.keys, INF)), axis=1)
            self.backlogged = np.concatenate((self.backlogged, np.zeros_like(self.backlogged)))
            self.block_min = np.concatenate((self.block_min, np.full_like(self.block_min, INF)), axis=1)
        self.index[name] = i
        self.names.append(name)
        return i

    def __len__(self) -> int:
        """Backlogged clients."""
        return self.count

    def as_dict(self, row: int) -> dict[str, float]:
        return dict(zip(self.names, self.values[row, : len(self.names)].tolist()))

    # -- changes -----------------------------------------------------------------------
    def backlog(self, i: int) -> None:
        self.backlogged[i] = True
        self.count += 1
        block = i // BLOCK
        for row in range(self.rows):
            value = float(self.values[row, i])
            self.keys[row, i] = value
            self.totals[row] += value
            if value < self.block_min[row, block]:
                self.block_min[row, block] = value

    def unbacklog(self, i: int) -> None:
        self.backlogged[i] = False
        self.count -= 1
        if self.count:
            for row in range(self.rows):
                self.totals[row] -= float(self.values[row, i])
        else:
            self.totals = [0.0] * self.rows  # no drift carried over an empty queue
        block = i // BLOCK
        was_min = any(self.keys[row, i] == self.block_min[row, block] for row in range(self.rows))
        self.keys[:, i] = INF
        if was_min:
            self._refresh(block)

    def add(self, i: int, amounts: tuple[float, ...]) -> None:
        """Add ``amounts`` (one per row) to client ``i``'s counters."""
        backlogged = self.backlogged[i]
        refresh = False
        for row, amount in enumerate(amounts):
            if amount:
                value = float(self.values[row, i]) + amount
                self.values[row, i] = value
                if backlogged:
                    self.totals[row] += amount
                    # a lower key may be the block's new minimum; a raised minimum needs a rescan
                    refresh |= amount < 0 or self.keys[row, i] == self.block_min[row, i // BLOCK]
                    self.keys[row, i] = value
        if refresh:
            self._refresh(i // BLOCK)

    def set(self, i: int, row: int, value: float) -> None:
        """Set one counter (a lift)."""
        old = float(self.values[row, i])
        self.values[row, i] = value
        if self.backlogged[i]:
            self.keys[row, i] = value
            self.totals[row] += value - old
            self._refresh(i // BLOCK)

    def add_many(self, row: int, columns: np.ndarray, amounts: np.ndarray) -> None:
        """Add ``amounts[j]`` to counter ``row`` of client ``columns[j]`` (distinct columns)."""
        self.values[row, columns] += amounts
        self.keys[row, columns] += amounts  # inf stays inf for the clients not backlogged
        mine = self.backlogged[columns]
        if mine.any():
            self.totals[row] += float(amounts[mine].sum())
            self._refresh(np.unique(columns[mine] // BLOCK), row)

    def add_per_request(self, row: int, clients: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """Add each ``amounts[j]`` to counter ``row`` of client ``clients[j]`` (a client may repeat:
        its amounts are summed in order first); returns the clients charged."""
        if len(self.names) <= DENSE_CLIENTS:  # sum per client over every client
            per_client = np.bincount(clients, weights=amounts, minlength=len(self.names))
            self.add_dense(row, per_client)
            return np.flatnonzero(per_client)
        unique, inverse = np.unique(clients, return_inverse=True)  # over the clients charged only
        self.add_many(row, unique, np.bincount(inverse, weights=amounts))
        return unique

    def add_dense(self, row: int, amounts: np.ndarray) -> None:
        """Add ``amounts[j]`` to counter ``row`` of client ``j``, for the first ``len(amounts)``
        clients (one pass over them: cheaper than ``add_many`` when clients are few)."""
        m = len(amounts)
        self.values[row, :m] += amounts
        self.keys[row, :m] += amounts
        self.totals[row] += float(amounts[self.backlogged[:m]].sum())
        blocks = (m + BLOCK - 1) // BLOCK
        self._refresh(0 if blocks == 1 else np.arange(blocks), row)

    def _refresh(self, blocks, row: int | None = None) -> None:
        """Recompute the block minima of ``blocks`` (one block index or an array of them), of
        one row or all."""
        rows = slice(None) if row is None else row
        if isinstance(blocks, (int, np.integer)):
            self.block_min[rows, blocks] = self.keys[rows, blocks * BLOCK : (blocks + 1) * BLOCK].min(axis=-1)
            return
        n = self.block_min.shape[1]
        self.block_min[rows, blocks] = self.keys.reshape(self.rows, n, BLOCK)[rows, blocks].min(axis=-1)

    # -- queries -----------------------------------------------------------------------
    def value(self, i: int, row: int = 0) -> float:
        return float(self.values[row, i])

    def min(self, row: int = 0) -> float:
        """The smallest counter of ``row`` over the backlogged clients (inf when none)."""
        return float(self.block_min[row].min())

    def _scores(self, block: int, coef: tuple[float, ...]) -> np.ndarray:
        """``sum(coef[r] * row r)`` of a block's clients (inf for those not backlogged)."""
        s = slice(block * BLOCK, (block + 1) * BLOCK)
        score = None
        for row, c in enumerate(coef):
            if c:  # 0 * inf would be nan
                term = self.keys[row, s] if c == 1.0 else c * self.keys[row, s]
                score = term if score is None else score + term
        return score

    def _bounds(self, coef: tuple[float, ...]) -> np.ndarray:
        """Per block, a lower bound of its clients' scores (exact with one coefficient)."""
        bound = None
        for row, c in enumerate(coef):
            if c:
                term = self.block_min[row] if c == 1.0 else c * self.block_min[row]
                bound = term if bound is None else bound + term
        return bound

    def smallest(self, coef: tuple[float, ...]) -> tuple[int, float] | None:
        """The backlogged client with the smallest score ``sum(coef[r] * row r)`` (ties: first
        seen), and its score; None when no client is backlogged.  Coefficients are >= 0, one > 0.

        The block with the smallest bound is opened first; another block is opened only if
        its bound could still beat (or tie from a lower column) the best score found."""
        if self.block_min.shape[1] == 1:  # one block: no bounds needed
            scores = self._scores(0, coef)
            j = int(scores.argmin())
            return None if scores[j] == INF else (j, float(scores[j]))
        bounds = self._bounds(coef)
        block = int(bounds.argmin())
        if bounds[block] == INF:
            return None
        scores = self._scores(block, coef)
        j = int(scores.argmin())
        best, best_i = float(scores[j]), block * BLOCK + j
        if sum(1 for c in coef if c) > 1:  # with one coefficient the bounds are exact
            maybe = np.flatnonzero(bounds <= best)  # usually just ``block``
            if len(maybe) > 8:  # many ties (lifted clients): keep the blocks that could still win
                starts = maybe * BLOCK
                maybe = maybe[(bounds[maybe] < best) | (starts < best_i)]
            for other in maybe.tolist():
                if other == block:
                    continue
                if bounds[other] > best or (bounds[other] == best and other * BLOCK > best_i):
                    continue
                scores = self._scores(other, coef)
                j = int(scores.argmin())
                if scores[j] < best or (scores[j] == best and other * BLOCK + j < best_i):
                    best, best_i = float(scores[j]), other * BLOCK + j
        return best_i, best

    def within(self, coef: tuple[float, ...], upto: float) -> list[tuple[int, float]]:
        """Every backlogged client whose score is at most ``upto``, by increasing (score, first seen)."""
        if self.block_min.shape[1] == 1:
            scores = self._scores(0, coef)
            inside = np.flatnonzero((scores <= upto) & (scores < INF))
            inside = inside[np.argsort(scores[inside], kind="stable")]  # ties stay in column order
            return list(zip(inside.tolist(), scores[inside].tolist()))
        bounds = self._bounds(coef)
        columns, scores = [], []
        for block in np.flatnonzero(bounds <= upto).tolist():
            block_scores = self._scores(block, coef)
            inside = np.flatnonzero((block_scores <= upto) & (block_scores < INF))
            columns.append(inside + block * BLOCK)
            scores.append(block_scores[inside])
        if not columns:
            return []
        columns, scores = np.concatenate(columns), np.concatenate(scores)
        order = np.lexsort((columns, scores))
        return list(zip(columns[order].tolist(), scores[order].tolist()))
