"""The built-in engine: iteration-level continuous batching as vLLM v1 does it.

Each step the engine (1) schedules the running requests in admission order, one
token for a decode and up to the remaining token budget for a prefill (chunked
prefill), preempting the most recently admitted request by recompute when the
paged KV cache has no free block; then (2), if nothing was preempted, asks the
policy for waiting requests while the batch has room (request cap, token budget,
KV blocks for the scheduled tokens).  The step's time comes from the cost model;
tokens, first tokens and completions land at the end of the step.

Stretches of pure decode steps in which nothing can change but token counts (no
arrival, admission, completion or preemption is possible) are advanced in one
vectorised move; ``fast_forward=False`` runs them step by step, with identical
results (a test proves it).
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.request import Request
from engine.results import REQUEST_SCHEMA, STEP_SCHEMA
from schedulers.base import Policy
from traces.schema import column_lists

MAX_STRETCH = 4096


@dataclass(frozen=True)
class EngineConfig:
    kv_capacity_tokens: int
    max_running: int = 256  # vLLM's max_num_seqs
    max_batch_tokens: int = 2048  # per-step token budget (max_num_batched_tokens)
    block_size: int = 16
    chunked_prefill: bool = True
    stall_free: bool = False  # decodes first, then partial prefills, then new prefills (Sarathi-Serve)
    admit_every: int = 1  # admit new requests every N steps (S-LoRA/VTC merges every 10)
    fast_forward: bool = True

    @property
    def total_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    def as_dict(self) -> dict:
        return asdict(self)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _StepLog:
    """Column buffers for steps.parquet, appended a row or a stretch at a time.

    With a ``path`` the rows go to disk in fixed batches of ``FLUSH_ROWS`` as the run goes
    (memory stays bounded however long the run); the batches are cut at the same rows
    whichever path produced them, so the file is identical either way.
    """

    FLUSH_ROWS = 1 << 16

    def __init__(self, path=None) -> None:
        self.cols: dict[str, list] = {f.name: [] for f in STEP_SCHEMA}
        self.chunks: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.rows = 0
        self.writer = None if path is None else pq.ParquetWriter(path, STEP_SCHEMA, compression="zstd")

    def row(self, **values) -> None:
        for name, col in self.cols.items():
            col.append(values[name])
        self.buffered += 1
        if self.writer is not None and self.buffered >= self.FLUSH_ROWS:
            self._write()

    def block(self, values: dict[str, np.ndarray]) -> None:
        self._flush_rows()
        self.chunks.append(values)
        self.buffered += len(values["step"])
        if self.writer is not None and self.buffered >= self.FLUSH_ROWS:
            self._write()

    def _flush_rows(self) -> None:
        if self.cols["step"]:
            self.chunks.append({k: np.asarray(v) for k, v in self.cols.items()})
            self.cols = {f.name: [] for f in STEP_SCHEMA}

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

    # -- set-up --------------------------------------------------------------------
    def run(self, workload: pa.Table, scheduler_name: str | None = None) -> tuple[pa.Table, pa.Table | None]:
        """Replay ``workload``: the requests table, and the steps table (None when streamed to disk)."""
        cfg = self.config
        self.bs = cfg.block_size
        self.free = cfg.total_blocks
        self.running: list[Request] = []
        self.waiting_tokens = 0
        self._min_pending: list = []  # lazy heap of (pending, id, req) over waiting requests
        self.log = _StepLog(self.steps_path)
        self.step = 0
        self.finished = 0
        self._last_dt = float("inf")

        columns = column_lists(workload)  # Request's positional arguments, in order
        arrivals = columns[2]
        reqs = [Request(*row) for row in zip(*columns)]
        self._loop(reqs, arrivals)
        return self._request_table(workload, reqs, scheduler_name or self.policy.name), self.log.close()

    # -- main loop -----------------------------------------------------------------
    def _loop(self, reqs: list[Request], arrivals: list[float]) -> None:
        n = len(reqs)
        nxt = 0
        now = 0.0
        policy = self.policy
        while True:
            while nxt < n and arrivals[nxt] <= now:
                self._arrive(reqs[nxt], now)
                nxt += 1
            if not self.running and policy.waiting == 0:
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
        req.arrival_state = (self.policy.waiting, self.waiting_tokens, len(self.running), kv_used)
        if not self._can_ever_run(req) or not self.policy.on_arrival(req, now):
            req.status = "rejected"
            self.finished += 1
            return
        self._enqueue(req)

    def _can_ever_run(self, req: Request) -> bool:
        cfg = self.config
        if _ceil_div(req.prompt_tokens + req.output_tokens, self.bs) > cfg.total_blocks:
            return False
        return cfg.chunked_prefill or req.prompt_tokens + req.output_tokens <= cfg.max_batch_tokens

    def _enqueue(self, req: Request) -> None:
        req.status = "waiting"
        pending = req.pending
        self.waiting_tokens += pending
        heapq.heappush(self._min_pending, (pending, req.request_id, req))

    def _idle(self, start: float, end: float) -> None:
        cfg = self.config
        self.log.row(
            step=self.step, start_s=start, duration_s=end - start, busy=False,
            prefill_tokens=0, decode_tokens=0, prefill_requests=0, decode_requests=0,
            running=0, waiting=0, admitted=0, finished=0, preempted=0,
            kv_used_tokens=0, kv_capacity_tokens=cfg.total_blocks * self.bs,
            token_budget=cfg.max_batch_tokens, flops=0.0,
        )  # fmt: skip
        self.step += 1

    # -- one step --------------------------------------------------------------------
    def _chunk(self, pending: int, budget: int) -> int:
        """Tokens a request with ``pending`` tokens would compute within ``budget`` (0: it cannot run)."""
        if pending <= budget:
            return pending
        return budget if self.config.chunked_prefill else 0

    def _step(self, now: float) -> float:
        cfg = self.config
        bs = self.bs
        budget = step_budget = self.policy.token_budget(cfg.max_batch_tokens)
        scheduled: list[tuple[Request, int]] = []  # (request, tokens this step)
        preempted = 0
        running = self.running
        # vLLM schedules running requests in admission order; stall-free (Sarathi-Serve) takes
        # every decode first, then partial prefills.  Either way the victim of a preemption is
        # the most recently admitted request.
        order = running
        if cfg.stall_free:
            order = [r for r in running if r.decoding] + [r for r in running if not r.decoding]
        for req in order:
            if budget <= 0:
                break
            if req.status != "running":  # preempted earlier in this step
                continue
            if req.decoding:  # one token; a new block when the computed ones fill theirs
                n = 1
                need = 1 if req.computed % bs == 0 else 0
            else:
                n = self._chunk(req.pending, budget)
                if n == 0:
                    continue
                need = _ceil_div(req.computed + n, bs) - req.blocks
            if need > self.free:
                budget, victims = self._make_room(req, need, scheduled, budget)
                preempted += victims
                if req.status != "running":
                    break
            self.free -= need
            req.blocks += need
            scheduled.append((req, n))
            budget -= n

        admitted = 0
        if not preempted and (self.step % cfg.admit_every == 0 or not running):
            admitted, budget = self._admit(now, budget, scheduled)
        if not scheduled:
            raise RuntimeError(f"engine stalled at t={now:.3f}s: nothing could be scheduled")

        # cost of the step
        prefill_tokens = prefill_pairs = decode_tokens = decode_kv = prefill_reqs = 0
        for req, n in scheduled:
            if req.decoding:
                decode_tokens += 1
                decode_kv += req.computed + 1
            else:
                prefill_reqs += 1
                prefill_tokens += n
                prefill_pairs += n * (req.computed + (n + 1) / 2)
        dt = float(self.cost.step_time(prefill_tokens, prefill_pairs, decode_tokens, decode_kv, len(scheduled)))
        self._last_dt = dt
        self.policy.on_step(now, dt, scheduled)
        flops = self.cost.step_flops(prefill_tokens, prefill_pairs, decode_tokens, decode_kv)
        end = now + dt

        produced = []
        done = []
        for req, n in scheduled:
            if req.decoding:
                req.computed += 1
                req.generated += 1
            else:
                req.computed += n
                if req.computed < req.prompt_tokens + req.generated:
                    continue  # a prefill chunk that produced no token
                req.generated += 1
                req.decoding = True
                if req.first_token_s is None:
                    req.first_token_s = end
            produced.append(req)
            if req.generated >= req.output_tokens:
                done.append(req)
        if produced:
            self.policy.on_tokens(produced, 1)
        if done:
            self._finish(done, end)

        self.log.row(
            step=self.step, start_s=now, duration_s=dt, busy=True,
            prefill_tokens=prefill_tokens, decode_tokens=decode_tokens,
            prefill_requests=prefill_reqs, decode_requests=decode_tokens,
            running=len(scheduled), waiting=self.policy.waiting, admitted=admitted,
            finished=len(done), preempted=preempted,
            kv_used_tokens=(cfg.total_blocks - self.free) * bs,
            kv_capacity_tokens=cfg.total_blocks * bs, token_budget=step_budget,
            flops=float(flops),
        )  # fmt: skip
        self.step += 1
        return end

    def _make_room(self, req: Request, need: int, scheduled: list, budget: int) -> tuple[int, int]:
        """Preempt the most recently admitted requests until ``need`` blocks are free.

        Stops when ``req`` itself is the victim.  A victim already scheduled this step (only
        possible in stall-free order) gives its tokens back.  Returns (budget, victims).
        """
        victims = 0
        while need > self.free:
            victim = self.running.pop()
            for i, (r, n) in enumerate(scheduled):
                if r is victim:
                    del scheduled[i]
                    budget += n
                    break
            self._preempt(victim)
            victims += 1
            if victim is req:
                break
        return budget, victims

    def _admit(self, now: float, budget: int, scheduled: list) -> tuple[int, int]:
        cfg = self.config
        running = self.running
        admitted = 0

        def fits(req: Request) -> bool:
            n = self._chunk(req.pending, budget)
            return n > 0 and _ceil_div(n, self.bs) <= self.free

        while len(running) < cfg.max_running and budget > 0:
            req = self.policy.select(fits)
            if req is None:
                break
            resumed = req.admitted_s is not None
            self.policy.admit(req, now, resumed)
            self.waiting_tokens -= req.pending
            n = self._chunk(req.pending, budget)
            need = _ceil_div(n, self.bs)
            self.free -= need
            req.blocks = need
            req.status = "running"
            if not resumed:
                req.admitted_s = now
            running.append(req)
            scheduled.append((req, n))
            budget -= n
            admitted += 1
        return admitted, budget

    def _preempt(self, req: Request) -> None:
        self.free += req.blocks
        req.blocks = 0
        req.computed = 0
        req.decoding = False
        req.preemptions += 1
        self._enqueue(req)
        self.policy.requeue(req)

    def _finish(self, done: list[Request], end: float) -> None:
        for req in done:
            req.finish_s = end
            req.status = "finished"
            self.free += req.blocks
            req.blocks = 0
            self.policy.on_finish(req, end)
        finished = set(map(id, done))
        self.running = [r for r in self.running if id(r) not in finished]
        self.finished += len(done)
        if self.progress is not None:
            self.progress(self.finished)

    # -- fast-forward of pure decode stretches ----------------------------------------
    def _admission_blocked(self, decode_blocks_first_step: int) -> bool:
        """True when no waiting request can be admitted during a decode-only stretch.

        Free blocks only shrink during the stretch and the budget left is constant,
        so if the easiest waiting request (fewest pending tokens) does not fit at
        the first step, no waiting request fits at any step of it.
        """
        cfg = self.config
        if self.policy.waiting == 0 or len(self.running) >= cfg.max_running:
            return True
        budget = cfg.max_batch_tokens - len(self.running)
        if budget <= 0:
            return True
        heap = self._min_pending
        while heap and heap[0][2].status != "waiting":
            heapq.heappop(heap)
        if not heap:
            return True
        easiest = heap[0][0]
        n = self._chunk(easiest, budget)
        return n == 0 or _ceil_div(n, self.bs) > self.free - decode_blocks_first_step

    def _stretch(self, now: float, next_arrival: float) -> float | None:
        """Advance k >= 1 pure decode steps in one move; None when not possible."""
        running = self.running
        cfg = self.config
        r = len(running)
        if r > cfg.max_batch_tokens:
            return None
        bs = self.bs
        k = MAX_STRETCH
        first = 0  # blocks the first step needs: requests whose computed tokens fill their blocks
        for req in running:
            if not req.decoding:
                return None
            left = req.output_tokens - req.generated
            if left < k:
                k = left
            if req.computed % bs == 0:
                first += 1
        if first > self.free or not self._admission_blocked(first):
            return None
        # Size the stretch by the time to the next arrival at the last step's pace (steps only
        # lengthen during a stretch).  A shorter stretch is always exact: the loop continues.
        if next_arrival != float("inf"):
            k = min(k, int((next_arrival - now) / self._last_dt) + 1)
        if k < 2:
            return None
        computed = np.fromiter((req.computed for req in running), dtype=np.int64, count=r)
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

        for req in running:
            req.computed += k
            req.generated += k
            req.blocks = _ceil_div(req.computed, bs)
        self.free -= int(needs[-1])
        self.policy.on_tokens(running, k)
        done = [req for req in running if req.generated >= req.output_tokens]
        if done:
            self._finish(done, end)
        kv_used = (used_before + needs) * bs
        kv_used[-1] = (cfg.total_blocks - self.free) * bs  # after the last step's completions

        flops = np.broadcast_to(self.cost.step_flops(0, 0, r, decode_kv), (k,)).astype(np.float64)
        finished = np.zeros(k, dtype=np.int64)
        finished[-1] = len(done)
        zeros = np.zeros(k, dtype=np.int64)

        def full(value):
            return np.full(k, value, dtype=np.int64)

        self.log.block(
            {
                "step": self.step + j - 1, "start_s": starts[:k], "duration_s": dt,
                "busy": np.ones(k, dtype=bool), "prefill_tokens": zeros, "decode_tokens": full(r),
                "prefill_requests": zeros, "decode_requests": full(r), "running": full(r),
                "waiting": full(self.policy.waiting), "admitted": zeros, "finished": finished,
                "preempted": zeros, "kv_used_tokens": kv_used,
                "kv_capacity_tokens": full(cfg.total_blocks * bs),
                "token_budget": full(cfg.max_batch_tokens), "flops": flops,
            }
        )  # fmt: skip
        self.step += k
        return end

    # -- results ---------------------------------------------------------------------
    def _request_table(self, workload: pa.Table, reqs: list[Request], scheduler: str) -> pa.Table:
        def col(getter, dtype):
            return pa.array([getter(r) for r in reqs], type=dtype)

        n = len(reqs)
        state = list(zip(*(r.arrival_state for r in reqs))) if n else [[], [], [], []]
        columns = {
            "request_id": workload.column("request_id"),
            "client_id": workload.column("client_id"),
            "arrival_s": workload.column("arrival_s"),
            "prompt_tokens": workload.column("prompt_tokens"),
            "output_tokens": workload.column("output_tokens"),
            "weight": workload.column("weight"),
            "conversation_id": workload.column("conversation_id"),
            "prompt": workload.column("prompt"),
            "scheduler": pa.array([scheduler] * n, type=pa.string()),
            "status": col(lambda r: r.status, pa.string()),
            "admitted_s": col(lambda r: r.admitted_s, pa.float64()),
            "first_token_s": col(lambda r: r.first_token_s, pa.float64()),
            "finish_s": col(lambda r: r.finish_s, pa.float64()),
            "generated_tokens": col(lambda r: r.generated, pa.int64()),
            "preemptions": col(lambda r: r.preemptions, pa.int64()),
            "waiting_at_arrival": pa.array(state[0], type=pa.int64()),
            "waiting_tokens_at_arrival": pa.array(state[1], type=pa.int64()),
            "running_at_arrival": pa.array(state[2], type=pa.int64()),
            "kv_used_at_arrival": pa.array(state[3], type=pa.float64()),
        }
        return pa.Table.from_pydict(columns, schema=REQUEST_SCHEMA)
