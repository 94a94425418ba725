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
        self._block_min = np.full((rows, 1), INF)  # per block, the minimum of keys (see block_min)
        self._views()
        self.totals = [0.0] * rows  # sums over the backlogged clients
        self.count = 0  # backlogged clients
        # A block whose minima are out of date (-1: none).  Raising or removing a block's smallest
        # key leaves its minima to be recomputed at the next query, so that an admission (charge,
        # then leave the queue) followed by an arrival in the same block rescans the block once.
        self._stale = -1

    def _views(self) -> None:
        """Views that the hot paths index without rebuilding them: each row of the block minima and
        of the keys, and the keys as (rows, blocks, BLOCK)."""
        self._min_rows = list(self._block_min)
        self._key_rows = list(self.keys)
        self._key_blocks = self.keys.reshape(self.rows, -1, BLOCK)

    # -- clients ---------------------------------------------------------------------
    def add_client(self, name: str) -> int:
        i = len(self.names)
        if i == self.values.shape[1]:  # double the columns (a whole number of blocks)
            self.values = np.concatenate((self.values, np.zeros_like(self.values)), axis=1)
            self.keys = np.concatenate((self.keys, np.full_like(self.keys, INF)), axis=1)
            self.backlogged = np.concatenate((self.backlogged, np.zeros_like(self.backlogged)))
            self._block_min = np.concatenate((self._block_min, np.full_like(self._block_min, INF)), axis=1)
            self._views()
        self.index[name] = i
        self.names.append(name)
        return i

    def __len__(self) -> int:
        """Backlogged clients."""
        return self.count

    def as_dict(self, row: int) -> dict[str, float]:
        return dict(zip(self.names, self.values[row, : len(self.names)].tolist()))

    @property
    def block_min(self) -> np.ndarray:
        """Per row and block, the smallest key (inf: no backlogged client in the block)."""
        if self._stale >= 0:
            self._clean()
        return self._block_min

    # -- changes -----------------------------------------------------------------------
    # (One client's counters are read and written one element at a time: with one or two rows
    # that is cheaper than a column view.)
    def backlog(self, i: int) -> None:
        self.backlogged[i] = True
        self.count += 1
        block = i // BLOCK
        values, keys, totals, block_min = self.values, self.keys, self.totals, self._block_min
        fresh = block != self._stale
        for row in range(self.rows):
            value = values.item(row, i)
            keys[row, i] = value
            totals[row] += value
            if fresh and value < block_min.item(row, block):
                block_min[row, block] = value

    def unbacklog(self, i: int) -> None:
        self.backlogged[i] = False
        self.count -= 1
        values, keys, block_min = self.values, self.keys, self._block_min
        if self.count:
            totals = self.totals
            for row in range(self.rows):
                totals[row] -= values.item(row, i)
        else:
            self.totals = [0.0] * self.rows  # no drift carried over an empty queue
        block = i // BLOCK
        stale = block == self._stale
        for row in range(self.rows):
            if not stale and keys.item(row, i) == block_min.item(row, block):  # it held a minimum
                stale = True
                self._mark(block)  # rescan later
            keys[row, i] = INF

    def add(self, i: int, amounts: tuple[float, ...]) -> None:
        """Add ``amounts`` (one per row) to client ``i``'s counters."""
        values = self.values
        if not self.backlogged[i]:
            for row, amount in enumerate(amounts):
                if amount:
                    values[row, i] = values.item(row, i) + amount
            return
        keys, block_min, totals = self.keys, self._block_min, self.totals
        block = i // BLOCK
        stale = block == self._stale
        for row, amount in enumerate(amounts):
            if amount:
                value = values.item(row, i) + amount
                values[row, i] = value
                totals[row] += amount
                if stale:
                    pass
                elif amount < 0:  # a lower key: the block's minimum is the smaller of the two
                    if value < block_min[row, block]:
                        block_min[row, block] = value
                elif keys[row, i] == block_min[row, block]:  # the minimum was raised: rescan later
                    stale = True
                keys[row, i] = value
        if stale:
            self._mark(block)

    def set(self, i: int, row: int, value: float) -> None:
        """Set one counter (a lift)."""
        old = self.values.item(row, i)
        self.values[row, i] = value
        if self.backlogged[i]:
            self.keys[row, i] = value
            self.totals[row] += value - old
            self._mark(i // BLOCK)

    def lift(self, i: int, last: int | None) -> None:
        """Raise each counter of client ``i`` (not backlogged) to the smallest over the backlogged
        clients, or, when none is, to the counter of client ``last`` (the last to leave the queue;
        None or ``i``: no lift)."""
        values = self.values
        if self.count:
            if self._stale >= 0:
                self._clean()
            # A backlogged client of i's own block bounds the floor from above: usually no lift.
            block, block_min = i // BLOCK, self._block_min
            for row in range(self.rows):
                if values.item(row, i) < block_min.item(row, block):
                    break
            else:
                return
            floors = block_min.min(axis=1).tolist()
        elif last is not None and last != i:
            floors = [values.item(row, last) for row in range(self.rows)]
        else:
            return
        for row, floor in enumerate(floors):
            if floor > values.item(row, i):
                self.set(i, row, floor)

    def add_many(self, row: int, columns: np.ndarray, amounts: np.ndarray) -> None:
        """Add ``amounts[j]`` to counter ``row`` of client ``columns[j]`` (distinct columns)."""
        self.values[row, columns] += amounts
        keys = self._key_rows[row]
        old = keys[columns]
        new = old + amounts
        keys[columns] = new  # inf stays inf for the clients not backlogged
        mine = self.backlogged[columns]
        if not mine.any():
            return
        self.totals[row] += float(amounts[mine].sum())
        if self._stale >= 0:
            self._clean()
        # Only a block whose smallest key rose needs a rescan (with clients spread over many
        # blocks, hardly any); a key that fell below its block's minimum is the new minimum.
        block_min = self._min_rows[row]
        blocks = columns // BLOCK
        low = block_min[blocks]
        fell = mine & (new < low)
        if fell.any():
            np.minimum.at(block_min, blocks[fell], new[fell])
        rose = mine & (old == low) & (amounts > 0)
        if rose.any():
            self._refresh(np.unique(blocks[rose]), row)

    def add_per_request(self, row: int, clients: np.ndarray, amounts: np.ndarray) -> None:
        """Add each ``amounts[j]`` to counter ``row`` of client ``clients[j]`` (a client may repeat:
        its amounts are summed in order first)."""
        if len(self.names) <= DENSE_CLIENTS:  # sum per client over every client
            self.add_dense(row, np.bincount(clients, weights=amounts, minlength=len(self.names)))
            return
        # over the clients charged only (np.unique's own overhead would be most of the step)
        ordered = np.sort(clients)
        first = np.empty(len(ordered), dtype=bool)
        first[:1] = True
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        unique = ordered[first]
        self.add_many(row, unique, np.bincount(np.searchsorted(unique, clients), weights=amounts))

    def add_dense(self, row: int, amounts: np.ndarray) -> None:
        """Add ``amounts[j]`` to counter ``row`` of client ``j``, for the first ``len(amounts)``
        clients (one pass over them: cheaper than ``add_many`` when clients are few)."""
        m = len(amounts)
        self.values[row, :m] += amounts
        self.keys[row, :m] += amounts
        self.totals[row] += float(amounts[self.backlogged[:m]].sum())
        blocks = (m + BLOCK - 1) // BLOCK
        self._refresh(0 if blocks == 1 else np.arange(blocks), row)

    def _mark(self, block: int) -> None:
        """``block``'s minima may be out of date; a block marked before is recomputed now."""
        if self._stale != block:
            if self._stale >= 0:
                self._refresh(self._stale)
            self._stale = block

    def _clean(self) -> None:
        self._refresh(self._stale)
        self._stale = -1

    def _refresh(self, blocks, row: int | None = None) -> None:
        """Recompute the block minima of ``blocks`` (one block index or an array of them), of
        one row or all."""
        if isinstance(blocks, (int, np.integer)):
            key_blocks, block_min = self._key_blocks, self._block_min
            for r in range(self.rows) if row is None else (row,):
                keys = key_blocks[r, blocks]
                block_min[r, blocks] = keys.item(keys.argmin())  # the minimum (argmin is the cheaper call)
            return
        rows = slice(None) if row is None else row
        self._block_min[rows, blocks] = self._key_blocks[rows, blocks].min(axis=-1)

    # -- queries -----------------------------------------------------------------------
    def value(self, i: int, row: int = 0) -> float:
        return self.values.item(row, i)

    def min(self, row: int = 0) -> float:
        """The smallest counter of ``row`` over the backlogged clients (inf when none)."""
        if self._stale >= 0:
            self._clean()
        return float(self._block_min[row].min())

    def _scores(self, block: int, coef: tuple[float, ...]) -> np.ndarray:
        """``sum(coef[r] * row r)`` of a block's clients (inf for those not backlogged)."""
        s = slice(block * BLOCK, (block + 1) * BLOCK)
        score = None
        for row, c in enumerate(coef):
            if c:  # 0 * inf would be nan
                keys = self._key_rows[row][s]
                term = keys if c == 1.0 else c * keys
                score = term if score is None else score + term
        return score

    def _bounds(self, coef: tuple[float, ...]) -> np.ndarray:
        """Per block, a lower bound of its clients' scores (exact with one coefficient)."""
        bound = None
        for row, c in enumerate(coef):
            if c:
                block_min = self._min_rows[row]
                term = block_min if c == 1.0 else c * block_min
                bound = term if bound is None else bound + term
        return bound

    def smallest(self, coef: tuple[float, ...]) -> tuple[int, float] | None:
        """The backlogged client with the smallest score ``sum(coef[r] * row r)`` (ties: first
        seen), and its score; None when no client is backlogged.  Coefficients are >= 0, one > 0.

        The block with the smallest bound is opened first; another block is opened only if
        its bound could still beat (or tie from a lower column) the best score found."""
        if self._stale >= 0:
            self._clean()
        if self._block_min.shape[1] == 1:  # one block: no bounds needed
            scores = self._scores(0, coef)
            j = int(scores.argmin())
            best = scores.item(j)
            return None if best == INF else (j, best)
        bounds = self._bounds(coef)
        block = int(bounds.argmin())
        low = bounds.item(block)
        if low == INF:
            return None
        scores = self._scores(block, coef)
        j = int(scores.argmin())
        best, best_i = scores.item(j), block * BLOCK + j
        if len(coef) - coef.count(0) == 1:  # with one coefficient the bounds are exact
            return best_i, best
        # Another block could hold a lower score (or an equal one in a lower column) only if its
        # bound is at most ``best``: usually none is.  (``bounds`` is a new array: a sum of terms.)
        bounds[block] = INF
        if bounds.item(int(bounds.argmin())) > best:
            return best_i, best
        bounds[block] = low
        maybe = np.flatnonzero(bounds <= best)
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
                best, best_i = scores.item(j), other * BLOCK + j
        return best_i, best

    def smallest_where(
        self, coef: tuple[float, ...], upto: float, sizes: np.ndarray, limit: float
    ) -> tuple[int, float] | None:
        """The first of ``within(coef, upto)`` whose ``sizes[column]`` is at most ``limit``, or None:
        the backlogged client with the smallest (score, first seen) among those, in array operations."""
        if self._stale >= 0:
            self._clean()
        blocks = [0] if self._block_min.shape[1] == 1 else np.flatnonzero(self._bounds(coef) <= upto).tolist()
        best = None
        for block in blocks:
            scores = self._scores(block, coef)
            start = block * BLOCK
            eligible = (scores <= upto) & (scores < INF) & (sizes[start : start + BLOCK] <= limit)
            if not eligible.any():
                continue
            j = int(np.where(eligible, scores, INF).argmin())
            if best is None or scores.item(j) < best[1]:  # a later block wins only with a lower score
                best = (start + j, scores.item(j))
        return best

    def within(self, coef: tuple[float, ...], upto: float) -> list[tuple[int, float]]:
        """Every backlogged client whose score is at most ``upto``, by increasing (score, first seen)."""
        if self._stale >= 0:
            self._clean()
        if self._block_min.shape[1] == 1:
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

    def smallest_eligible(
        self, coef: tuple[float, ...], caps: tuple[float, ...] | None, sizes: list | tuple = ()
    ) -> tuple[int, float] | None:
        """The backlogged client with the smallest (score, first seen) among those whose counter of
        each row ``r`` is at most ``caps[r]`` (None: any) and whose ``array[column]`` is at most
        ``limit`` for each ``(array, limit)`` in ``sizes``; None when there is none.

        Blocks are opened in increasing order of their lower bound, skipping a block whose minimum
        of some row is over its cap, until the next bound cannot beat the best found."""
        if self._stale >= 0:
            self._clean()
        bounds = self._bounds(coef)
        if bounds.base is not None:  # a row of the block minima itself: work on a copy
            bounds = bounds.copy()
        if caps is not None:
            for row, cap in enumerate(caps):
                bounds[self._min_rows[row] > cap] = INF
        best = None
        while True:
            block = int(bounds.argmin())
            low = bounds.item(block)
            if low == INF:
                break
            if best is not None and (low > best[1] or (low == best[1] and block * BLOCK > best[0])):
                break
            bounds[block] = INF
            s = slice(block * BLOCK, (block + 1) * BLOCK)
            scores = self._scores(block, coef)
            ok = scores < INF
            if caps is not None:
                for row, cap in enumerate(caps):
                    ok &= self._key_rows[row][s] <= cap
            for array, limit in sizes:
                ok &= array[s] <= limit
            if not ok.any():
                continue
            j = int(np.where(ok, scores, INF).argmin())
            score, i = scores.item(j), block * BLOCK + j
            if best is None or score < best[1] or (score == best[1] and i < best[0]):
                best = (i, score)
        return best
