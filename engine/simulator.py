"""The built-in engine: iteration-level continuous batching as vLLM v1 does it.

Each step the engine (1) schedules the running requests in admission order, one
token for a decode and up to the remaining token budget for a prefill (chunked
prefill), preempting the most recently admitted request by recompute when the
paged KV cache has no free block; then (2), if nothing was preempted, asks the
policy for waiting requests while the batch has room (request cap, token budget,
KV blocks for the scheduled tokens).  The step's time comes from the cost model;
tokens, first tokens and completions land at the end of the step.

The running batch lives in numpy arrays (one column per request, admission order), so
a step costs a fixed number of array operations however large the batch, and a step in which
every running request only decodes is counted rather than written into the columns (see
``_decode_step``); the policy is told about requests one by one only when they arrive, are
admitted, preempted or finish (and per step for policies that charge per request).  Stretches of pure decode steps in
which nothing can change but token counts (no arrival, admission, completion or
preemption is possible) are advanced in one move; ``fast_forward=False`` runs them step
by step, with identical results (a test proves it).
"""

from __future__ import annotations

import gc
import heapq
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.cost_model import StepCost, decode_split, request_seconds, step_split
from engine.feedback import Step, Tokens
from engine.prefix_cache import PrefixCache, block_keys
from engine.results import outcome_columns
from schedulers.base import Policy
from traces.request import Request
from traces.result_schemas import EXCEEDS_KV, RATE_LIMIT, REQUEST_SCHEMA, STEP_SCHEMA, TOO_LONG
from traces.schema import column_lists

MAX_STRETCH = 4096
INF = float("inf")
INT_MAX = np.iinfo(np.int64).max
# A stretch shorter than this is left to the step path: moving it in one go costs about what its
# steps cost (under overload an arrival or a completion ends a stretch every few steps).
MIN_STRETCH = 8


@dataclass(frozen=True)
class EngineConfig:
    kv_capacity_tokens: int
    max_running: int = 256  # vLLM's max_num_seqs
    max_batch_tokens: int = 2048  # per-step token budget (max_num_batched_tokens)
    block_size: int = 16
    chunked_prefill: bool = True
    # Decodes first, then partial prefills, then new prefills (Sarathi-Serve).  With chunked prefill
    # this is already the admission order (a partial prefill takes all the budget left, so nothing
    # admitted after it exists until it is done): the same steps (tests/test_simulator.py).
    stall_free: bool = False
    admit_every: int = 1  # admit new requests every N steps (S-LoRA/VTC merges every 10)
    fast_forward: bool = True
    max_model_len: int | None = None  # context limit: prompt + output over it is rejected (None: none)
    prefix_caching: bool = True  # automatic prefix caching (vLLM's default), engine/prefix_cache.py
    prefix_hash_tokens: int = 512  # prompt tokens each of the workload's prefix_hashes covers (Mooncake)
    # Admit a waiting request only when the KV blocks of its whole prompt (plus the output it
    # recomputes after a preemption) are free, not just those of its first chunk: vLLM 0.32's
    # scheduler_reserve_full_isl (on by default), which stops long prompts from thrashing.
    reserve_full_prompt: bool = True

    @property
    def total_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    def as_dict(self) -> dict:
        return asdict(self)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def reject_reasons(prompt_tokens, output_tokens, config: EngineConfig) -> list:
    """Per request, why it can never run on this engine (``TOO_LONG``, ``EXCEEDS_KV``) or None.

    ``too_long``: prompt + output over ``max_model_len`` (vLLM refuses such a request), or,
    without chunked prefill, over the step's token budget; ``exceeds_kv``: its KV blocks would
    not fit the cache even alone.
    """
    total = np.asarray(prompt_tokens, dtype=np.int64) + np.asarray(output_tokens, dtype=np.int64)
    too_long = np.zeros(len(total), dtype=bool)
    if config.max_model_len is not None:
        too_long |= total > config.max_model_len
    if not config.chunked_prefill:
        too_long |= total > config.max_batch_tokens
    exceeds = (total + config.block_size - 1) // config.block_size > config.total_blocks
    if not (too_long.any() or exceeds.any()):
        return [None] * len(total)
    out = np.full(len(total), None, dtype=object)
    out[exceeds] = EXCEEDS_KV
    out[too_long] = TOO_LONG
    return out.tolist()


class _StepLog:
    """Column buffers for steps.parquet, appended a row or a stretch at a time.

    With a ``path`` the rows go to disk in fixed batches of ``FLUSH_ROWS`` as the run goes
    (memory stays bounded however long the run); the batches are cut at the same rows
    whichever path produced them, so the file is identical either way.
    """

    FLUSH_ROWS = 1 << 16

    def __init__(self, path=None) -> None:
        self.pending: list[tuple] = []  # rows (values in STEP_SCHEMA's order) not yet in a chunk
        self.chunks: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.rows = 0
        self.writer = None if path is None else pq.ParquetWriter(path, STEP_SCHEMA, compression="zstd")

    def row(self, *values) -> None:
        """One step: its values in STEP_SCHEMA's order."""
        self.pending.append(values)
        self.buffered += 1
        if self.writer is not None and self.buffered >= self.FLUSH_ROWS:
            self._write()

    def block(self, values: dict[str, np.ndarray]) -> None:
        k = len(values["step"])
        if k <= 64:  # a short stretch joins the rows: cheaper than a chunk of its own
            self.pending.extend(zip(*(values[f.name].tolist() for f in STEP_SCHEMA)))
        else:
            self._flush_rows()
            self.chunks.append(values)
        self.buffered += k
        if self.writer is not None and self.buffered >= self.FLUSH_ROWS:
            self._write()

    def _flush_rows(self) -> None:
        if self.pending:
            columns = zip(*self.pending)
            self.chunks.append({f.name: np.asarray(c) for f, c in zip(STEP_SCHEMA, columns)})
            self.pending = []

    def _table(self) -> pa.Table:
        self._flush_rows()
        arrays = []
        for field in STEP_SCHEMA:
            parts = [np.asarray(c[field.name]) for c in self.chunks]
            data = np.concatenate(parts) if parts else np.array([])
            arrays.append(pa.array(data, type=field.type))
        self.chunks = []
        return pa.Table.from_arrays(arrays, schema=STEP_SCHEMA)

    def _write(self, final: bool = False) -> None:
        table = self._table()
        full = table.num_rows - table.num_rows % self.FLUSH_ROWS
        for start in range(0, full, self.FLUSH_ROWS):
            self.writer.write_table(table.slice(start, self.FLUSH_ROWS))
        rest = table.slice(full)
        if final:
            if rest.num_rows or self.rows + full == 0:
                self.writer.write_table(rest)
        else:
            self.chunks = [{name: rest.column(name).to_numpy() for name in rest.column_names}]
        self.rows += full + (rest.num_rows if final else 0)
        self.buffered = 0 if final else rest.num_rows

    def close(self) -> pa.Table | None:
        """The whole table in memory, or None once the file is complete."""
        if self.writer is None:
            return self._table()
        self._write(final=True)
        self.writer.close()
        return None


# Rows of the running batch's int64 array: one column per running request, admission order.
ROW, PROMPT, OUTPUT, COMPUTED, GENERATED, BLOCKS, DECODING, SLOT = range(8)
_EMPTY = np.zeros(0, dtype=np.int64)


class _Batch:
    """The running requests, admission order, as columns of one int64 array (and their weights).

    ``a[FIELD, :n]`` is a field of every running request; ``blocks == ceil(computed / block)``
    always holds (a request holds exactly the blocks its computed tokens fill).
    """

    def __init__(self, capacity: int) -> None:
        self.a = np.zeros((8, max(1, capacity)), dtype=np.int64)
        self.weight = np.zeros(max(1, capacity))
        self.n = 0

    def append(self, values: tuple, weight: float) -> None:
        if self.n == self.a.shape[1]:
            self.a = np.concatenate((self.a, np.zeros_like(self.a)), axis=1)
            self.weight = np.concatenate((self.weight, np.zeros_like(self.weight)))
        self.a[:, self.n] = values
        self.weight[self.n] = weight
        self.n += 1

    def remove(self, positions: list[int]) -> None:
        """Remove the requests at ``positions``, keeping the others in order."""
        a, weight, n = self.a, self.weight, self.n
        if len(positions) <= 4:  # usually one or two finish in a step: shift the tail down
            for p in sorted(positions, reverse=True):
                a[:, p : n - 1] = a[:, p + 1 : n]
                weight[p : n - 1] = weight[p + 1 : n]
                n -= 1
        else:
            keep = np.ones(n, dtype=bool)
            keep[positions] = False
            m = int(np.count_nonzero(keep))
            a[:, :m] = a[:, :n][:, keep]
            weight[:m] = weight[:n][keep]
            n = m
        self.n = n


class _Fits:
    """The engine's ``fits(req)`` for ``Policy.select``: a waiting request fits exactly when its
    pending tokens are at most ``max_pending``, which a policy may read to test many at once."""

    __slots__ = ("max_pending",)

    def __init__(self) -> None:
        self.max_pending: float = INF

    def __call__(self, req: Request) -> bool:
        return req.pending <= self.max_pending


class Simulator:
    """Replays one workload under one policy.  ``run`` returns (requests, steps) tables."""

    def __init__(
        self,
        config: EngineConfig,
        cost_model,
        policy: Policy,
        *,
        progress: Callable[[int], None] | None = None,
        steps_path=None,
    ):
        self.config = config
        self.cost = cost_model
        self.policy = policy
        self.progress = progress
        self.steps_path = steps_path  # stream steps.parquet here instead of returning it
        kind = type(policy)
        self._charges_tokens = kind.on_tokens is not Policy.on_tokens
        self._wants_steps = kind.on_step is not Policy.on_step

    # -- set-up --------------------------------------------------------------------
    def run(self, workload: pa.Table, scheduler_name: str | None = None) -> tuple[pa.Table, pa.Table | None]:
        """Replay ``workload``: the requests table, and the steps table (None when streamed to disk)."""
        cfg = self.config
        self.bs = cfg.block_size
        self.free = cfg.total_blocks
        self.batch = _Batch(min(cfg.max_running, 1024))
        self.waiting_tokens = 0
        self._min_pending: list = []  # lazy heap of (pending, id, req) over waiting requests
        self.log = _StepLog(self.steps_path)
        self.step = 0
        self.finished = 0
        self._last_dt = float("inf")
        # Decode steps advance every decoding request by one token; they are counted in ``_g``
        # instead of being written into the batch (see ``_decode_step``).
        self._g = 0
        self._lazy = False  # the aggregates below describe the batch
        self._decoding = 0  # decoding requests in the batch
        self._kv_stored = 0  # sum of their stored COMPUTED
        self._residues = [0] * self.bs  # how many of them have stored COMPUTED % bs == r
        self._next_finish = INF  # at most the smallest g at which one of them finishes
        # Engine seconds of each request (the cost model's split of every step; requests.parquet).
        # During lazy decode steps a decoding request's entry holds its value minus
        # ``_es_x + stored COMPUTED * _es_y`` (the decode shares since it joined; see _fold_es).
        self._es_x = self._es_y = 0.0

        columns = column_lists(workload)  # Request's positional arguments, in order
        arrivals = columns[2]
        self.reqs = reqs = [Request(*row) for row in zip(*columns)]
        for i, req in enumerate(reqs):
            req.row = i
        self._reasons = reject_reasons(columns[3], columns[4], cfg)  # None: it can run
        self._cache = None
        self._step_cached = 0  # prompt tokens this step's admissions took from the cache
        if cfg.prefix_caching:
            keys, any_keys = block_keys(workload, self.bs, cfg.prefix_hash_tokens)
            if any_keys:
                self._cache = PrefixCache(cfg.total_blocks, self.bs, keys)
            self.policy.prefix_lookup = self._prefix_lookup
        self._es = np.zeros(len(reqs))
        # what an engine-aware policy (Equinox) reads: step costs, KV capacity
        self.policy.bind_engine(cost_model=StepCost(self.cost), kv_capacity_tokens=cfg.total_blocks * cfg.block_size)
        # The request objects live as long as the replay: keep the collector from walking them
        # again and again (a million of them make every full collection long), as vLLM does.
        # A process that froze its heap itself (a vLLM server) keeps it frozen.
        thaw = gc.get_freeze_count() == 0
        gc.freeze()
        try:
            self._loop(reqs, arrivals)
        finally:
            if thaw:
                gc.unfreeze()
        return self._request_table(workload, reqs, scheduler_name or self.policy.name), self.log.close()

    # -- main loop -----------------------------------------------------------------
    def _loop(self, reqs: list[Request], arrivals: list[float]) -> None:
        n = len(reqs)
        nxt = 0
        now = 0.0
        policy = self.policy
        batch = self.batch
        while True:
            while nxt < n and arrivals[nxt] <= now:
                self._arrive(reqs[nxt], now)
                nxt += 1
            if not batch.n and policy.waiting == 0:
                if nxt >= n:
                    break
                gap_end = arrivals[nxt]
                self._idle(now, gap_end)
                now = gap_end
                continue
            next_arrival = arrivals[nxt] if nxt < n else float("inf")
            if self.config.fast_forward and policy.exact_under_fast_forward:
                end = self._stretch(now, next_arrival)
                if end is not None:
                    now = end
                    continue
            now = self._step(now)

    def _arrive(self, req: Request, now: float) -> None:
        kv_used = 1.0 - self.free / self.config.total_blocks
        req.arrival_state = (self.policy.waiting, self.waiting_tokens, self.batch.n, kv_used)
        reason = self._reasons[req.row]
        if reason is None and not self.policy.on_arrival(req, now):
            reason = RATE_LIMIT
        if reason is not None:
            req.status = "rejected"
            req.reject_reason = reason
            self.finished += 1
            return
        self._enqueue(req)

    def _enqueue(self, req: Request) -> None:
        req.status = "waiting"
        pending = req.pending
        self.waiting_tokens += pending
        heapq.heappush(self._min_pending, (pending, req.request_id, req))

    def _idle(self, start: float, end: float) -> None:
        cfg = self.config
        self.log.row(
            self.step, start, end - start, False, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, cfg.total_blocks * self.bs,
            cfg.max_batch_tokens, 0.0, 0,
        )  # fmt: skip
        self.step += 1

    # -- one step --------------------------------------------------------------------
    def _chunk(self, pending: int, budget: int) -> int:
        """Tokens a request with ``pending`` tokens would compute within ``budget`` (0: it cannot run)."""
        if pending <= budget:
            return pending
        return budget if self.config.chunked_prefill else 0

    def _max_pending(self, budget: int, free: int) -> float:
        """The most pending tokens a request may have to start within ``budget`` tokens (> 0) and
        ``free`` KV blocks (for its first chunk): it fits exactly when its pending tokens are at
        most this (inf: any).  With chunked prefill its chunk is min(pending, budget), whose blocks
        fit when it is at most ``free * block``; without, the whole prompt must fit both."""
        room = free * self.bs
        if not self.config.chunked_prefill:
            return min(budget, room)
        if self.config.reserve_full_prompt:  # the whole prompt's blocks must be free
            return room
        return INF if budget <= room else room

    def _step(self, now: float) -> float:
        """One engine step from ``now``; returns when it ends."""
        step_budget = self.policy.token_budget(self.config.max_batch_tokens)
        n = self.batch.n
        if not self._lazy:
            self._rebuild()
        if self._lazy and self._decoding == n and n <= step_budget:
            need = self._residues[-self._g % self.bs]
            preempted = 0
            if need > self.free:
                need, preempted = self._preempt_for_blocks()
            return self._decode_step(now, step_budget, need, preempted)
        self._materialize()
        return self._general_step(now, step_budget)

    # -- decode steps, lazily ----------------------------------------------------------
    # When every running request decodes, fits the budget and gets its next KV block, a step
    # advances each of them by one token: ``_g`` counts those steps, and a decoding request's
    # COMPUTED and GENERATED columns hold its values minus ``_g`` (its BLOCKS column is then
    # stale: ceil(computed / block) is the truth).  The step's new blocks, KV length and
    # completions come from a few aggregates over the decoding requests instead of the
    # columns.  Any other step first writes the columns back (``_materialize``).

    def _rebuild(self) -> None:
        """Aggregates of a written-back batch (``_g`` is 0), when every request decodes."""
        batch = self.batch
        n = batch.n
        a = batch.a
        if n and int(np.count_nonzero(a[DECODING, :n])) != n:
            return
        computed = a[COMPUTED, :n]
        self._decoding = n
        self._kv_stored = int(computed.sum())
        self._residues = np.bincount(computed % self.bs, minlength=self.bs).tolist()
        self._next_finish = int((a[OUTPUT, :n] - a[GENERATED, :n]).min()) if n else INF
        self._lazy = True

    def _forget_decoding(self, computed: int) -> None:
        """Take a decoding request with stored COMPUTED ``computed`` out of the aggregates."""
        self._decoding -= 1
        self._kv_stored -= computed
        self._residues[computed % self.bs] -= 1

    def _preempt_for_blocks(self) -> tuple[int, int]:
        """Every request decodes but their new blocks do not fit: preempt the most recently
        admitted until the rest's fit (what ``_schedule_with_preemption`` decides: with new
        blocks of 0 or 1 a request, the walk in order stops at the same cut); (new blocks of
        the rest, preempted)."""
        batch = self.batch
        residue = -self._g % self.bs
        before = batch.n
        while self._residues[residue] > self.free:
            self._preempt_last()
        n = batch.n
        left = batch.a[OUTPUT, :n] - batch.a[GENERATED, :n]
        self._next_finish = int(left.min()) if n else INF
        return self._residues[residue], before - n

    def _materialize(self) -> None:
        """Write the decode steps counted in ``_g`` into the columns; the aggregates lapse."""
        g = self._g
        if g:
            batch = self.batch
            n = batch.n
            a = batch.a
            self._fold_es(np.flatnonzero(a[DECODING, :n]))
            self._es_x = self._es_y = 0.0
            shift = a[DECODING, :n] * g
            a[COMPUTED, :n] += shift
            a[GENERATED, :n] += shift
            blocks = (a[COMPUTED, :n] + self.bs - 1) // self.bs
            a[BLOCKS, :n] = np.where(shift != 0, blocks, a[BLOCKS, :n])
            self._g = 0
        self._lazy = False

    def _fold_es(self, pos) -> None:
        """Add the lazy decode steps' shares to the engine seconds of the decoding requests at ``pos``."""
        a = self.batch.a
        self._es[a[ROW, pos]] += self._es_x + a[COMPUTED, pos] * self._es_y

    def _decode_step(self, now: float, step_budget: int, need: int, preempted: int) -> float:
        """A step in which every running request decodes (``need`` of them take a new block,
        after ``preempted`` were preempted for blocks), then, if none was, waiting requests are
        admitted as in ``_general_step``."""
        cfg = self.config
        batch = self.batch
        a = batch.a
        n = batch.n
        self.free -= need
        chunks: list[int] = []
        complete: list[bool] = []
        self._step_cached = 0
        if not preempted and (self.step % cfg.admit_every == 0 or not n):
            chunks, complete = self._admit(now, step_budget - n)
        m = batch.n
        admitted = m - n
        if not m:
            raise RuntimeError(f"engine stalled at t={now:.3f}s: nothing could be scheduled")

        # cost of the step (the same operations as _general_step's)
        g = self._g
        decode_kv = self._kv_stored + n * g + n
        cached = self._step_cached  # admissions start from their cache hits
        if admitted == 0:
            prefill_tokens, prefill_pairs = 0, 0.0
        elif admitted == 1:
            prefill_tokens = k = chunks[0]
            prefill_pairs = k * (int(a[COMPUTED, n]) + (k + 1) / 2) if cached else k * ((k + 1) / 2)
        else:
            k = np.array(chunks, dtype=np.int64)
            prefill_tokens = int(k.sum())
            if cached:
                prefill_pairs = float((k * (a[COMPUTED, n:m] + (k + 1) / 2)).sum())
            else:
                prefill_pairs = float((k * ((k + 1) / 2)).sum())
        dt = float(self.cost.step_time(prefill_tokens, prefill_pairs, n, decode_kv, m))
        self._last_dt = dt
        if admitted:  # the decodes' shares accrue in _es_x, _es_y; each prefill's lands now
            pt, dtok, pair, kv, pr, dr = step_split(self.cost, prefill_tokens, prefill_pairs, n, decode_kv, m)
            common = dtok + dr
            es = self._es
            for j in range(admitted):
                k = chunks[j]
                c = int(a[COMPUTED, n + j]) if cached else 0  # a prefill starts from its cache hits
                es[a[ROW, n + j]] += pt * k + pair * k * (c + (k + 1) / 2) + pr
        elif n:
            common, kv = decode_split(self.cost, dt, n, decode_kv)
        if n:
            self._es_x += common + kv * (g + 1)
            self._es_y += kv
        if self._wants_steps:
            tokens = np.ones(m, dtype=np.int64)
            tokens[n:] = chunks
            self._report_step(now, dt, slice(0, m), tokens)
        flops = self.cost.step_flops(prefill_tokens, prefill_pairs, n, decode_kv)
        end = now + dt

        # tokens land: every decoding request advances (g); an admitted request whose chunk
        # is its whole prompt produces its first token and decodes from now on
        self._g = g = g + 1
        produced = slice(0, m)
        bs = self.bs
        reqs = self.reqs
        cache = self._cache
        for j in range(admitted):
            p = n + j
            start = int(a[COMPUTED, p])  # its cache hit
            if cache is not None:
                cache.register(int(a[ROW, p]), start + chunks[j], self.free)
            if not complete[j]:
                a[COMPUTED, p] = start + chunks[j]
                produced = None
                continue
            computed = start + chunks[j] - g
            generated = int(a[GENERATED, p]) + 1 - g
            a[COMPUTED, p] = computed
            a[GENERATED, p] = generated
            a[DECODING, p] = 1
            self._es[int(a[ROW, p])] -= self._es_x + computed * self._es_y  # it decodes from now on
            self._decoding += 1
            self._kv_stored += computed
            self._residues[computed % bs] += 1
            left = int(a[OUTPUT, p]) - generated
            if left < self._next_finish:
                self._next_finish = left
            req = reqs[int(a[ROW, p])]
            if req.first_token_s is None:
                req.first_token_s = end
        if produced is None:
            produced = np.flatnonzero(a[DECODING, :m])
        if self._charges_tokens:
            self._charge_tokens(produced, 1, a[GENERATED, produced] + g)
        finished = 0
        if g >= self._next_finish:
            left = a[OUTPUT, :m] - a[GENERATED, :m]  # tokens to go, plus g, for a decoding request
            if self._decoding != m:
                left[a[DECODING, :m] == 0] = INT_MAX
            done = np.flatnonzero(left <= g)
            rest = left[left > g]
            low = int(rest.min()) if len(rest) else INT_MAX
            self._next_finish = INF if low == INT_MAX else low
            finished = len(done)
            if finished:
                self._finish(done, end)

        self.log.row(
            self.step, now, dt, True, prefill_tokens, n, admitted, n, m, self.policy.waiting, admitted, finished,
            preempted,
            (cfg.total_blocks - self.free) * bs, cfg.total_blocks * bs, step_budget, float(flops), cached,
        )  # fmt: skip
        self.step += 1
        return end

    def _general_step(self, now: float, step_budget: int) -> float:
        """A step over a written-back batch: prefills, a block shortage (preemption), a budget
        that does not cover every running request."""
        cfg = self.config
        batch = self.batch
        budget = step_budget
        planned = self._schedule_running(budget)
        if planned is None:  # stall-free with a block shortage, or a prefill that must wait its turn
            planned = self._schedule_running_in_order(budget)
        pos, tokens, preempted = planned  # pos None: the first len(tokens) positions, in order
        budget = step_budget - int(tokens.sum())

        admitted = 0
        self._step_cached = 0
        if not preempted and (self.step % cfg.admit_every == 0 or not batch.n):
            first = batch.n
            admitted_tokens, _ = self._admit(now, budget)
            admitted = len(admitted_tokens)
            if admitted:
                if pos is not None:
                    pos = np.concatenate((pos, np.arange(first, batch.n)))
                tokens = np.concatenate((tokens, admitted_tokens))
        m = len(tokens)
        if not m:
            raise RuntimeError(f"engine stalled at t={now:.3f}s: nothing could be scheduled")
        a = batch.a
        cols = a[:, :m] if pos is None else a[:, pos]  # a view, or a copy written back below

        # cost of the step
        decoding = cols[DECODING] != 0
        computed = cols[COMPUTED]
        decode_tokens = int(np.count_nonzero(decoding))
        prefill_reqs = m - decode_tokens
        if prefill_reqs:
            prefill = ~decoding
            if prefill_reqs == 1:  # the usual case, in plain numbers (the same operations)
                (j,) = np.flatnonzero(prefill).tolist()
                n, c = int(tokens[j]), int(computed[j])
                prefill_tokens, prefill_pairs = n, n * (c + (n + 1) / 2)
                decode_kv = int(computed.sum()) - c + decode_tokens
            else:
                chunks = tokens[prefill]
                prefill_tokens = int(chunks.sum())
                prefill_pairs = float((chunks * (computed[prefill] + (chunks + 1) / 2)).sum())
                decode_kv = int(computed[decoding].sum()) + decode_tokens
        else:
            prefill_tokens, prefill_pairs = 0, 0.0
            decode_kv = int(computed.sum()) + decode_tokens
        dt = float(self.cost.step_time(prefill_tokens, prefill_pairs, decode_tokens, decode_kv, m))
        self._last_dt = dt
        split = step_split(self.cost, prefill_tokens, prefill_pairs, decode_tokens, decode_kv, m)
        self._es[cols[ROW]] += request_seconds(split, tokens, computed, decoding)
        if self._wants_steps:
            self._report_step(now, dt, slice(0, m) if pos is None else pos, tokens)
        flops = self.cost.step_flops(prefill_tokens, prefill_pairs, decode_tokens, decode_kv)
        end = now + dt

        # tokens land: a decode produces one; a prefill chunk that completes the prompt (or the
        # recompute after a preemption) produces the first (or next) token
        computed += tokens
        generated = cols[GENERATED]
        produced = None  # None: every scheduled request produced a token
        if prefill_reqs and self._cache is not None:
            register = self._cache.register
            for r, c in zip(cols[ROW, prefill].tolist(), computed[prefill].tolist()):
                register(r, c, self.free)
        if prefill_reqs:
            first = prefill & (computed >= cols[PROMPT] + generated)
            if first.any():
                cols[DECODING, first] = 1
                reqs = self.reqs
                for r in cols[ROW, first].tolist():
                    if reqs[r].first_token_s is None:
                        reqs[r].first_token_s = end
            produced = decoding | first
            generated += produced
        else:
            generated += 1
        done = generated >= cols[OUTPUT]
        if pos is not None:
            a[:, pos] = cols
        if produced is None:
            self._charge_tokens(slice(0, m) if pos is None else pos, 1)
        else:
            done &= produced
            produced = np.flatnonzero(produced)
            if len(produced):
                self._charge_tokens(produced if pos is None else pos[produced], 1)
        done = np.flatnonzero(done)
        finished = len(done)
        if finished:
            self._finish(done if pos is None else pos[done], end)

        self.log.row(
            self.step, now, dt, True, prefill_tokens, decode_tokens, prefill_reqs, decode_tokens, m,
            self.policy.waiting, admitted, finished, preempted, (cfg.total_blocks - self.free) * self.bs,
            cfg.total_blocks * self.bs, step_budget, float(flops), self._step_cached,
        )  # fmt: skip
        self.step += 1
        return end

    def _running_order(self) -> np.ndarray:
        """Positions in scheduling order: admission order; stall-free takes every decode first."""
        n = self.batch.n
        if not self.config.stall_free:
            return np.arange(n)
        decoding = self.batch.a[DECODING, :n] != 0
        return np.concatenate((np.flatnonzero(decoding), np.flatnonzero(~decoding)))

    def _schedule_running(self, budget: int) -> tuple[np.ndarray | None, np.ndarray, int] | None:
        """Schedule the running requests in a few array operations: (positions, tokens,
        preempted), positions None when they are the first ``len(tokens)`` in admission order.

        None when the in-order walk is needed instead: in stall-free order when the KV cache
        cannot hold the step's new blocks, or, without chunked prefill, when a prefill does not
        fit the budget (it is skipped and later requests may still fit).
        """
        batch = self.batch
        n = batch.n
        if not n:
            return None, _EMPTY, 0
        a = batch.a
        pending = a[PROMPT, :n] + a[GENERATED, :n] - a[COMPUTED, :n]  # 1 for a decode
        if self.config.stall_free and not a[DECODING, :n].all():
            order = self._running_order()
            pending = pending[order]
        else:
            order = None
        total = int(pending.sum())
        if total <= budget:
            pos, tokens = order, pending
        elif self.config.chunked_prefill:  # each takes what the budget has left, in order
            ends = np.cumsum(pending)
            tokens = np.clip(budget - (ends - pending), 0, pending)
            take = tokens > 0
            tokens = tokens[take]
            pos = None if order is None else order[take]  # in admission order, a prefix
        else:
            return None
        m = len(tokens)
        if pos is None:
            need = (a[COMPUTED, :m] + tokens + self.bs - 1) // self.bs - a[BLOCKS, :m]
        else:
            need = (a[COMPUTED, pos] + tokens + self.bs - 1) // self.bs - a[BLOCKS, pos]
        total = int(need.sum())
        if total <= self.free:
            self.free -= total
            if pos is None:
                a[BLOCKS, :m] += need
            else:
                a[BLOCKS, pos] += need
            return pos, tokens, 0
        if pos is not None or self._cache is not None:  # (shared blocks: a victim may free fewer than it holds)
            return None
        return self._schedule_with_preemption(tokens, need)

    def _schedule_with_preemption(self, tokens: np.ndarray, need: np.ndarray) -> tuple[None, np.ndarray, int]:
        """Admission order with a block shortage, in array operations: request i is scheduled
        once the most recently admitted requests are preempted until the blocks the first i + 1
        need fit; when that would preempt request i itself, it and everything after it go.

        ``need[i]`` is the new blocks of the i-th request (the first ``len(need)`` get tokens).
        With ``S[c]`` the blocks held by the requests from c on and ``C[i]`` the blocks the
        first i + 1 need, request i needs the cut ``c_i = max {c : C[i] <= free + S[c]}``; the
        first i with ``c_i <= i`` is preempted with all after it, else the last cut stands.
        """
        a = self.batch.a
        n = self.batch.n
        tail = np.concatenate((np.cumsum(a[BLOCKS, :n][::-1])[::-1], [0]))  # S[c], c = 0..n, non-increasing
        needed = np.cumsum(need)
        cuts = np.searchsorted(-tail, self.free - needed, side="right") - 1
        stuck = cuts <= np.arange(len(need))
        if stuck.any():
            scheduled = cut = int(stuck.argmax())
        else:
            scheduled, cut = len(need), int(cuts[-1])
        if scheduled:
            a[BLOCKS, :scheduled] += need[:scheduled]
            self.free -= int(needed[scheduled - 1])
        for _ in range(n - cut):  # the most recently admitted first, as the in-order walk pops them
            self._preempt_last()
        return None, tokens[:scheduled], n - cut

    def _schedule_running_in_order(self, budget: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Schedule the running requests one by one, preempting the most recently admitted
        until each one's new blocks fit: (positions, tokens, preempted).

        A victim already scheduled this step (only possible in stall-free order) gives its
        tokens back; the walk stops when the request being scheduled is itself the victim.
        """
        batch = self.batch
        a = batch.a
        bs = self.bs
        scheduled: list[list[int]] = []  # [position, tokens]
        preempted = 0
        for p in self._running_order().tolist():
            if budget <= 0:
                break
            if p >= batch.n:  # preempted earlier in this step
                continue
            computed = int(a[COMPUTED, p])
            if a[DECODING, p]:
                n = 1
                need = 1 if computed % bs == 0 else 0
            else:
                n = self._chunk(int(a[PROMPT, p] + a[GENERATED, p]) - computed, budget)
                if n == 0:
                    continue
                need = _ceil_div(computed + n, bs) - int(a[BLOCKS, p])
            while need > self.free:
                victim = batch.n - 1
                for i, (q, m) in enumerate(scheduled):
                    if q == victim:
                        del scheduled[i]
                        budget += m
                        break
                self._preempt_last()
                preempted += 1
                if victim == p:
                    break
            if p >= batch.n:
                break
            self.free -= need
            a[BLOCKS, p] += need
            scheduled.append([p, n])
            budget -= n
        if not scheduled:
            return _EMPTY, _EMPTY, preempted
        pos, tokens = np.array(scheduled, dtype=np.int64).T
        return pos, tokens, preempted

    def _admit(self, now: float, budget: int) -> tuple[list[int], list[bool]]:
        """Admit waiting requests while the batch has room: the tokens each computes this step,
        and whether they are all it must compute (its first or next token comes at the step's end)."""
        cfg = self.config
        batch = self.batch
        bs = self.bs
        tokens: list[int] = []
        complete: list[bool] = []

        fits = _Fits()
        while batch.n < cfg.max_running and budget > 0:
            fits.max_pending = limit = self._max_pending(budget, self.free)
            if self._nothing_fits(limit):  # spare the policy a search that cannot succeed
                break
            req = self.policy.select(fits)
            if req is None:
                break
            pending = req.pending
            hit = 0
            if self._cache is not None:
                planned = self._plan_cached(req, pending, budget)
                if planned is None:  # its cached blocks and its chunk do not fit together: it waits
                    break
                hit, n, need = planned
            else:
                n = self._chunk(pending, budget)
                need = _ceil_div(n, bs)
            resumed = req.admitted_s is not None
            self.policy.admit(req, now, resumed)
            self.waiting_tokens -= pending
            if self._cache is not None:
                self.free -= self._cache.acquire(req.row, hit)
                pending -= hit * bs
                if not resumed:
                    req.cached_prompt_tokens = hit * bs
                self._step_cached += hit * bs
            self.free -= need
            req.status = "running"
            if not resumed:
                req.admitted_s = now
            slot = -1 if req.slot is None else req.slot
            values = (req.row, req.prompt_tokens, req.output_tokens, hit * bs, req.generated, hit + need, 0, slot)
            batch.append(values, req.weight)
            tokens.append(n)
            complete.append(n == pending)
            budget -= n
        return tokens, complete

    def _plan_cached(self, req: Request, pending: int, budget: int) -> tuple[int, int, int] | None:
        """What ``req`` would take from the prefix cache if admitted now: (blocks hit, tokens it
        computes this step, new blocks for them); None when its cached blocks that nobody holds
        (they count against the free ones) and its new ones do not fit together (vLLM's
        ``allocate_slots`` fails, and the request waits)."""
        cache = self._cache
        bs = self.bs
        row = req.row
        cache.sync(self.free)
        h = cache.lookup(row, (pending - 1) // bs)  # as vLLM: the last token is always computed
        n = self._chunk(pending - h * bs, budget)
        need = _ceil_div(h * bs + n, bs) - h
        if h:
            full = _ceil_div(pending, bs) - h if self.config.reserve_full_prompt else need
            if cache.revived(row, h) + max(need, full) > self.free:
                return None
        return h, n, need

    def _prefix_lookup(self, req: Request) -> int:
        """``Policy.prefix_lookup``: prompt tokens of ``req`` cached right now."""
        cache = self._cache
        if cache is None or req.row is None:
            return 0
        cache.sync(self.free)
        return cache.lookup(req.row, (req.prompt_tokens - 1) // self.bs) * self.bs

    def _release(self, row: int, blocks: int) -> int:
        """Blocks that become free when request ``row`` gives back its ``blocks``."""
        return blocks if self._cache is None else self._cache.release(row, blocks)

    def _preempt_last(self) -> None:
        """Preempt the most recently admitted request: its KV is dropped, it waits again."""
        batch = self.batch
        p = batch.n - 1
        column = batch.a[:, p].tolist()
        row, computed, generated, blocks = column[ROW], column[COMPUTED], column[GENERATED], column[BLOCKS]
        if self._lazy:  # a decoding request with stored values
            self._fold_es(p)
            self._forget_decoding(computed)
            computed += self._g
            generated += self._g
            blocks = _ceil_div(computed, self.bs)
        req = self.reqs[row]
        self.free += self._release(row, blocks)
        batch.n = p
        req.generated = generated
        req.blocks = 0
        req.computed = 0
        req.decoding = False
        req.preemptions += 1
        self._enqueue(req)
        self.policy.requeue(req)

    def _charge_tokens(self, pos, k: int, generated: np.ndarray | None = None) -> None:
        """Tell the policy that the requests at ``pos`` produced ``k`` output tokens each and
        now have ``generated`` (by default their GENERATED column)."""
        if not self._charges_tokens:
            return
        batch = self.batch
        a = batch.a
        if generated is None:
            generated = a[GENERATED, pos]

        def requests() -> list[Request]:  # only if the policy iterates
            reqs = [self.reqs[r] for r in a[ROW, pos].tolist()]
            for req, g in zip(reqs, generated.tolist()):
                req.generated = g
            return reqs

        self.policy.on_tokens(Tokens.from_arrays(a[SLOT, pos], generated, batch.weight[pos], requests), k)

    def _report_step(self, now: float, dt: float, pos, tokens: np.ndarray) -> None:
        """Tell the policy about the step: the requests at ``pos`` computed ``tokens``."""
        a = self.batch.a

        def pairs() -> list:  # only if the policy iterates
            reqs = self.reqs
            return [(reqs[r], n) for r, n in zip(a[ROW, pos].tolist(), tokens.tolist())]

        self.policy.on_step(now, dt, Step.from_arrays(a[SLOT, pos], tokens, pairs))

    def _finish(self, pos: np.ndarray, end: float) -> None:
        """The requests at ``pos`` (decoding ones when decode steps are counted in ``_g``)
        produced their last token."""
        batch = self.batch
        cols = batch.a[:, pos].tolist()
        rows, computed, generated, blocks = cols[ROW], cols[COMPUTED], cols[GENERATED], cols[BLOCKS]
        if self._lazy:  # decoding requests with stored values: out of the aggregates, true values
            self._fold_es(pos)
            g = self._g
            bs = self.bs
            for c in computed:
                self._forget_decoding(c)
            computed = [c + g for c in computed]
            generated = [x + g for x in generated]
            blocks = [(c + bs - 1) // bs for c in computed]
        if self._cache is None:
            self.free += sum(blocks)
        else:
            self.free += sum(self._cache.release(r, b) for r, b in zip(rows, blocks))
        policy = self.policy
        reqs = self.reqs
        for r, c, g in zip(rows, computed, generated):
            req = reqs[r]
            req.computed = c
            req.generated = g
            req.decoding = True
            req.finish_s = end
            req.status = "finished"
            policy.on_finish(req, end)
        batch.remove(pos.tolist())
        self.finished += len(rows)
        if self.progress is not None:
            self.progress(self.finished)

    # -- fast-forward of pure decode stretches ----------------------------------------
    def _fewest_pending(self) -> int | None:
        """The fewest tokens any waiting request must compute to start (None: nobody waits).

        A lazy heap: entries of requests no longer waiting are dropped when they surface; an
        entry of a request preempted since is a lower bound of its pending tokens (it only grew)."""
        heap = self._min_pending
        while heap and heap[0][2].status != "waiting":
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _nothing_fits(self, max_pending: float) -> bool:
        """True when no waiting request has at most ``max_pending`` tokens to compute (see
        ``_max_pending``): the one with the fewest is the easiest to fit."""
        easiest = self._fewest_pending()
        return easiest is None or easiest > max_pending

    def _admission_blocked(self, decode_blocks_first_step: int) -> bool:
        """True when no waiting request can be admitted during a decode-only stretch.

        Free blocks only shrink during the stretch and the budget left is constant,
        so if the easiest waiting request does not fit at the first step, no waiting
        request fits at any step of it.
        """
        cfg = self.config
        running = self.batch.n
        if self.policy.waiting == 0 or running >= cfg.max_running:
            return True
        budget = cfg.max_batch_tokens - running
        return budget <= 0 or self._nothing_fits(self._max_pending(budget, self.free - decode_blocks_first_step))

    def _stretch(self, now: float, next_arrival: float) -> float | None:
        """Advance k >= 1 pure decode steps in one move; None when not possible."""
        batch = self.batch
        cfg = self.config
        r = batch.n
        if not r or r > cfg.max_batch_tokens:
            return None
        # Size the stretch by the time to the next arrival at the last step's pace (steps only
        # lengthen during a stretch).  A shorter stretch is always exact: the loop continues.
        k = MAX_STRETCH
        if next_arrival != float("inf"):
            k = min(k, int((next_arrival - now) / self._last_dt) + 1)
            if k < MIN_STRETCH:  # the cheap test first: under load an arrival comes every few steps
                return None
        if not self._lazy:
            self._rebuild()
        if not self._lazy or self._decoding != r:  # some request is prefilling
            return None
        bs = self.bs
        first = self._residues[-self._g % bs]  # requests whose next token needs a block
        if first > self.free or not self._admission_blocked(first):
            return None
        k = min(k, self._next_finish - self._g)
        if k < MIN_STRETCH:
            return None
        self._materialize()
        a = batch.a
        computed = a[COMPUTED, :r]
        # Request i needs a new block at steps j = f_i, f_i + bs, ... with f_i in 1..bs
        # (the steps where computed + j - 1 is a multiple of bs); count requests per f.
        per_offset = np.bincount((bs - computed % bs) % bs, minlength=bs)  # index f - 1
        offsets = np.arange(1, bs + 1)

        def blocks_needed(j: np.ndarray) -> np.ndarray:
            """Cumulative new blocks after j steps, for each j."""
            new = np.maximum(0, (j[:, None] - offsets[None, :]) // bs + 1)
            return new @ per_offset

        j = np.arange(1, k + 1, dtype=np.int64)
        needs = blocks_needed(j)
        k = int(np.searchsorted(needs, self.free, side="right"))  # needs is non-decreasing
        decode_kv = int(computed.sum()) + r * j[:k]
        dt = np.broadcast_to(self.cost.step_time(0, 0, r, decode_kv, r), (k,)).astype(np.float64)
        starts = np.add.accumulate(np.concatenate(([now], dt)))  # sequential, as the step loop adds
        # Only steps that start before the next arrival: it is ingested at the first start >= it.
        k = min(k, int(np.searchsorted(starts[:k], next_arrival, side="left")))
        if k < 1:
            return None
        end = float(starts[k])
        self._last_dt = float(dt[k - 1])
        j, dt, decode_kv, needs = j[:k], dt[:k], decode_kv[:k], needs[:k]
        used_before = cfg.total_blocks - self.free
        common, kv = decode_split(self.cost, dt, r, decode_kv)  # request i's share of step j: common + kv * (c_i + j)
        kv = np.broadcast_to(kv, (k,))
        self._es[a[ROW, :r]] += float(common.sum()) + float(kv.sum()) * computed + float((kv * j).sum())

        a[COMPUTED, :r] += k
        a[GENERATED, :r] += k
        a[BLOCKS, :r] = (a[COMPUTED, :r] + bs - 1) // bs
        self.free -= int(needs[-1])
        everyone = np.arange(r)
        self._charge_tokens(everyone, k)
        done = a[GENERATED, :r] >= a[OUTPUT, :r]
        finished = int(np.count_nonzero(done))
        if finished:
            self._finish(everyone[done], end)
        kv_used = (used_before + needs) * bs
        kv_used[-1] = (cfg.total_blocks - self.free) * bs  # after the last step's completions

        flops = np.broadcast_to(self.cost.step_flops(0, 0, r, decode_kv), (k,)).astype(np.float64)
        finished_col = np.zeros(k, dtype=np.int64)
        finished_col[-1] = finished
        zeros = np.zeros(k, dtype=np.int64)

        def full(value):
            return np.full(k, value, dtype=np.int64)

        self.log.block(
            {
                "step": self.step + j - 1, "start_s": starts[:k], "duration_s": dt,
                "busy": np.ones(k, dtype=bool), "prefill_tokens": zeros, "decode_tokens": full(r),
                "prefill_requests": zeros, "decode_requests": full(r), "running": full(r),
                "waiting": full(self.policy.waiting), "admitted": zeros, "finished": finished_col,
                "preempted": zeros, "kv_used_tokens": kv_used,
                "kv_capacity_tokens": full(cfg.total_blocks * bs),
                "token_budget": full(cfg.max_batch_tokens), "flops": flops, "cached_tokens": zeros,
            }
        )  # fmt: skip
        self.step += k
        return end

    # -- results ---------------------------------------------------------------------
    def _request_table(self, workload: pa.Table, reqs: list[Request], scheduler: str) -> pa.Table:
        workload_columns = ("request_id", "client_id", "arrival_s", "prompt_tokens", "output_tokens", "weight",
                            "conversation_id", "prompt")  # fmt: skip
        rejected = np.array([r.status == "rejected" for r in reqs], dtype=bool)
        columns = {
            **{name: workload.column(name) for name in workload_columns},
            **outcome_columns(reqs, scheduler),
            "reject_reason": pa.array([r.reject_reason for r in reqs], type=pa.string()),
            "cached_prompt_tokens": pa.array(
                [None if r.status == "rejected" else r.cached_prompt_tokens for r in reqs], type=pa.int64()
            ),
            "prefix_hashes": workload.column("prefix_hashes"),
            "engine_seconds": pa.array(self._es, mask=rejected),
        }
        return pa.Table.from_pydict(columns, schema=REQUEST_SCHEMA)
