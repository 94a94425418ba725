"""S-LoRA mode: the engine the VTC paper ran its experiments on, as its router schedules.

This reproduces the router loop of the VTC artifact (github.com/Ying1123/VTC-artifact,
``slora/server/router/manager.py`` and ``req_queue.py``), driving the same
``schedulers.base.Policy`` objects as the vLLM-mode simulator through the same verbs:

* **Admission reserves each request's whole remaining output** (``ReqQueue._can_add_new_req``).
  Every running request is a pair ``(has_run, left) = (prompt + generated, max_output -
  generated - 1)``, a candidate ``(prompt + 1, max_output - 1)``.  Sorted by ``left``
  descending, the pool must hold ``max_i(left_i * i + sum_{j <= i} has_run_j)`` (i from 1):
  the peak the batch reaches if nobody finishes early, which is exactly when the request
  that finishes i-th from last still has ``left_i`` tokens to go.  A candidate is admitted
  while that peak is strictly below ``pool - adapter tokens`` (rank 8 x 4 = 32 tokens per
  distinct adapter in the batch and the new batch), the requests number at most
  ``running_max_req_size``, and the new batch's prompt tokens stay within
  ``batch_max_tokens``.  The policy orders the candidates; the first that does not fit ends
  the new batch.  Because the peak is reserved, **nothing is ever preempted**.
* **Prefill-only steps.**  A new batch is prefilled on its own (the running batch waits);
  the prefill produces each new request's first token.  Then it merges into the running batch.
* **Merge interval.**  With a running batch, the router decodes ``max_wait_tokens = 10``
  steps before it looks at the queue again; from then on it tries at every step (a decode
  step when nothing can be added) until a new batch is prefilled, which restarts the count.
  An empty engine polls the queue every 10 ms.

Each request generates exactly its ``output_tokens`` (the artifact's clients send
``max_new_tokens = output_len`` with ``ignore_eos``), so ``max_output`` is the request's output
length.  A request that could not run even alone is rejected at arrival: prompt plus output
above ``max_req_total_len`` or the prompt above ``max_req_input_len`` (``too_long``; the
artifact's HTTP server refuses it), or a reservation that the pool cannot hold with an
otherwise empty batch (``exceeds_kv``; the artifact would wait for it forever).

Results use the same schema as the simulator's (``engine.results``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

import pyarrow as pa

from engine.feedback import Step, Tokens
from engine.results import outcome_columns
from schedulers.base import Policy
from traces.request import Request
from traces.result_schemas import REQUEST_SCHEMA, STEP_SCHEMA
from traces.schema import column_lists

INF = float("inf")


@dataclass(frozen=True)
class SLoRAConfig:
    """The S-LoRA server's limits (VTC artifact: ``fair_bench/launch_server.py`` and
    ``slora/server/api_server.py``, as the paper's experiments launched it)."""

    max_total_tokens: int = 10_000  # --max_total_token_num (launch_server's --num-token)
    batch_max_tokens: int = 3072  # default: max(int(pool / 6), max_req_total_len)
    running_max_req_size: int = 1000
    max_wait_tokens: int = 10  # decode steps between merges
    adapter_tokens: int = 32  # per distinct adapter in the batch: lora rank 8 * 4
    max_req_total_len: int = 2048 + 1024
    max_req_input_len: int = 2048
    poll_s: float = 0.01  # an empty router sleeps 10 ms between looks at the queue

    # What the replay's run summary reads off any engine's config.
    prefix_caching = False  # S-LoRA had no prefix cache

    @property
    def max_model_len(self) -> int:
        return self.max_req_total_len

    def as_dict(self) -> dict:
        """run.json's engine record: these fields, plus the vLLM-mode names readers look up."""
        return {
            "mode": "slora",
            **asdict(self),
            "kv_capacity_tokens": self.max_total_tokens,
            "max_running": self.running_max_req_size,
            "max_batch_tokens": self.batch_max_tokens,
            "admit_every": self.max_wait_tokens,
        }


def default_batch_max_tokens(max_total_tokens: int, max_req_total_len: int = 2048 + 1024) -> int:
    """S-LoRA's default ``batch_max_tokens``: ``max(int(pool / 6), max_req_total_len)``."""
    return max(int(max_total_tokens / 6), max_req_total_len)


def reservation_peak(pairs) -> int:
    """``ReqQueue._can_add_new_req``'s need: ``pairs`` are ``(has_run, left)``; sorted by
    ``left`` descending, ``max_i(left_i * i + sum_{j <= i} has_run_j)`` with i from 1."""
    peak = 0
    cum = 0
    for i, (has_run, left) in enumerate(sorted(pairs, key=lambda p: -p[1]), start=1):
        cum += has_run
        need = left * i + cum
        if need > peak:
            peak = need
    return peak


class _Fits:
    """``fits(req)`` for ``Policy.select``: whether ``req`` may join the new batch now."""

    __slots__ = ("engine",)

    def __init__(self, engine: "SLoRAEngine") -> None:
        self.engine = engine

    def __call__(self, req: Request) -> bool:
        return self.engine._can_add(req)


class SLoRAEngine:
    """Replays one workload under one policy on S-LoRA's router.  ``run`` returns
    (requests, steps) tables in ``engine.results``' schemas."""

    def __init__(
        self, config: SLoRAConfig, cost_model, policy: Policy, *, progress: Callable[[int], None] | None = None
    ):
        self.config = config
        self.cost = cost_model
        self.policy = policy
        self.progress = progress
        kind = type(policy)
        self._charges_tokens = kind.on_tokens is not Policy.on_tokens
        self._wants_steps = kind.on_step is not Policy.on_step

    # -- admission: the artifact's rule ------------------------------------------------
    def _start_new_batch(self) -> None:
        """``_init_cache_list``: the running requests' (has_run, left) and their adapters."""
        self._pairs = [(r.prompt_tokens + r.generated, r.output_tokens - r.generated - 1) for r in self.running]
        self._adapters = {r.client for r in self.running}
        self._new_tokens = 0

    def _can_add(self, req: Request) -> bool:
        cfg = self.config
        pairs = self._pairs + [(req.prompt_tokens + 1, req.output_tokens - 1)]
        adapters = len(self._adapters | {req.client})
        return (
            reservation_peak(pairs) < cfg.max_total_tokens - cfg.adapter_tokens * adapters
            and len(pairs) <= cfg.running_max_req_size
            # a policy's smaller token budget (Policy.token_budget) limits a new batch but never
            # keeps a request from forming one alone (S-LoRA's own budget is at least
            # max_req_total_len, so with it the first request always passes this test)
            and (self._new_tokens + req.prompt_tokens <= self._budget or not self._new_tokens)
        )

    def _generate_new_batch(self, now: float) -> list[Request]:
        """``generate_new_batch``: the policy's candidates while each fits."""
        cfg = self.config
        if len(self.running) >= cfg.running_max_req_size or self.policy.waiting == 0:
            return []
        self._start_new_batch()
        self._budget = self.policy.token_budget(cfg.batch_max_tokens)
        fits = self._fits
        new: list[Request] = []
        while True:
            req = self.policy.select(fits)
            if req is None:
                break
            self.policy.admit(req, now, False)
            self._pairs.append((req.prompt_tokens + 1, req.output_tokens - 1))
            self._adapters.add(req.client)
            self._new_tokens += req.prompt_tokens
            self._waiting_tokens -= req.prompt_tokens
            req.status = "running"
            req.admitted_s = now
            new.append(req)
        return new

    # -- the run -------------------------------------------------------------------------
    def run(self, workload: pa.Table, scheduler_name: str | None = None) -> tuple[pa.Table, pa.Table]:
        columns = column_lists(workload)
        self.reqs = reqs = [Request(*row) for row in zip(*columns)]
        for i, req in enumerate(reqs):
            req.row = i
        self.reject_reasons = [None] * len(reqs)
        self.running: list[Request] = []
        self._fits = _Fits(self)
        self._steps: list[tuple] = []
        self.step = 0
        self.finished = 0
        self._waiting_tokens = 0
        self.preemptions = 0  # stays 0: S-LoRA never preempts (tests check it)
        self._loop(reqs, columns[2])
        table = self._request_table(workload, scheduler_name or self.policy.name)
        return table, self._step_table()

    def _reject_reason(self, req: Request) -> str | None:
        cfg = self.config
        p, o = req.prompt_tokens, req.output_tokens
        if p + o > cfg.max_req_total_len or p > cfg.max_req_input_len:
            return "too_long"
        if reservation_peak([(p + 1, o - 1)]) >= cfg.max_total_tokens - cfg.adapter_tokens:
            return "exceeds_kv"
        return None

    def _arrive(self, req: Request, now: float) -> None:
        used = self._kv_used() / self.config.max_total_tokens
        req.arrival_state = (self.policy.waiting, self._waiting_tokens, len(self.running), used)
        reason = self._reject_reason(req)
        if reason is None and not self.policy.on_arrival(req, now):
            reason = "rate_limit"
        if reason is not None:
            self.reject_reasons[req.row] = reason
            req.status = "rejected"
            self.finished += 1
            return
        req.status = "waiting"
        self._waiting_tokens += req.prompt_tokens

    def _kv_used(self) -> int:
        return sum(r.prompt_tokens + r.generated for r in self.running)

    def _loop(self, reqs: list[Request], arrivals: list[float]) -> None:
        cfg = self.config
        policy = self.policy
        n = len(reqs)
        nxt = 0
        now = 0.0
        idle_since = None
        has_wait = 0
        while True:
            while nxt < n and arrivals[nxt] <= now:
                self._arrive(reqs[nxt], now)
                nxt += 1
            if not self.running:
                new = self._generate_new_batch(now) if policy.waiting else []
                if new:
                    idle_since = None
                    now = self._prefill(now, new)
                    self.running = [r for r in new if r.status == "running"]
                    has_wait = 0
                    continue
                if nxt >= n:
                    if policy.waiting:  # cannot happen: every accepted request fits alone
                        raise RuntimeError(f"S-LoRA engine stalled at t={now:.3f}s with requests waiting")
                    break
                # The router sleeps 10 ms at a time: the next look at the queue after the arrival.
                if idle_since is None:
                    idle_since = now
                ticks = max(1, -int(-(arrivals[nxt] - idle_since) // cfg.poll_s))
                wake = idle_since + ticks * cfg.poll_s
                while wake < arrivals[nxt]:  # rounding: the look must come at or after the arrival
                    ticks += 1
                    wake = idle_since + ticks * cfg.poll_s
                self._idle(now, wake)
                now = wake
                continue
            if has_wait < cfg.max_wait_tokens:
                now = self._decode(now)
                has_wait += 1
                continue
            new = self._generate_new_batch(now) if policy.waiting else []
            if new:
                now = self._prefill(now, new)
                self.running.extend(r for r in new if r.status == "running")
                has_wait = 0
            else:
                now = self._decode(now)

    def _idle(self, start: float, end: float) -> None:
        cfg = self.config
        self._steps.append(
            (self.step, start, end - start, False, 0, 0, 0, 0, 0, self.policy.waiting, 0, 0, 0, 0,
             cfg.max_total_tokens, cfg.batch_max_tokens, 0.0)
        )  # fmt: skip
        self.step += 1

    def _prefill(self, now: float, new: list[Request]) -> float:
        """A prefill-only step of the new batch; each request's first token lands at its end."""
        tokens = sum(r.prompt_tokens for r in new)
        pairs = float(sum(r.prompt_tokens * (r.prompt_tokens + 1) / 2.0 for r in new))
        dt = float(self.cost.step_time(tokens, pairs, 0, 0, len(new)))
        flops = float(self.cost.step_flops(tokens, pairs, 0, 0))
        if self._wants_steps:
            self.policy.on_step(now, dt, Step.of([(r, r.prompt_tokens) for r in new]))
        end = now + dt
        for r in new:
            r.computed = r.prompt_tokens
            r.generated = 1
            r.decoding = True
            r.first_token_s = end
        if self._charges_tokens:
            self.policy.on_tokens(Tokens.of(new), 1)
        done = self._finish([r for r in new if r.generated >= r.output_tokens], end)
        kv = self._kv_used() + sum(r.prompt_tokens + r.generated for r in new if r.status == "running")
        self._log(now, dt, tokens, 0, len(new), 0, len(new), len(new), done, flops, kv)
        return end

    def _decode(self, now: float) -> float:
        """One decode step of the running batch."""
        batch = self.running
        n = len(batch)
        kv = 0
        for r in batch:
            kv += r.prompt_tokens + r.generated
        dt = float(self.cost.step_time(0, 0.0, n, kv, n))
        flops = float(self.cost.step_flops(0, 0.0, n, kv))
        if self._wants_steps:
            self.policy.on_step(now, dt, Step.of([(r, 1) for r in batch]))
        end = now + dt
        finished = []
        for r in batch:
            r.computed += 1
            r.generated += 1
            if r.generated >= r.output_tokens:
                finished.append(r)
        if self._charges_tokens:
            self.policy.on_tokens(Tokens.of(batch), 1)
        done = self._finish(finished, end)
        if done:
            self.running = [r for r in batch if r.status == "running"]
        self._log(now, dt, 0, n, 0, n, n, 0, done, flops, self._kv_used())
        return end

    def _finish(self, reqs: list[Request], end: float) -> int:
        for r in reqs:
            r.finish_s = end
            r.status = "finished"
            self.policy.on_finish(r, end)
        self.finished += len(reqs)
        if reqs and self.progress is not None:
            self.progress(self.finished)
        return len(reqs)

    def _log(self, now, dt, prefill, decode, prefill_reqs, decode_reqs, batch, admitted, finished, flops, kv):
        cfg = self.config
        self._steps.append(
            (self.step, now, dt, True, prefill, decode, prefill_reqs, decode_reqs, batch, self.policy.waiting,
             admitted, finished, 0, kv, cfg.max_total_tokens, cfg.batch_max_tokens, flops)
        )  # fmt: skip
        self.step += 1

    # -- results ---------------------------------------------------------------------
    def _step_table(self) -> pa.Table:
        names = [f.name for f in STEP_SCHEMA][: len(self._steps[0])] if self._steps else []
        cols = list(zip(*self._steps)) if self._steps else [[] for _ in names]
        data = dict(zip(names, cols))
        n = len(self._steps)
        arrays = [
            pa.array(data[f.name], type=f.type) if f.name in data else _default(f, n)
            for f in STEP_SCHEMA
        ]  # fmt: skip
        return pa.Table.from_arrays(arrays, schema=STEP_SCHEMA)

    def _request_table(self, workload: pa.Table, scheduler: str) -> pa.Table:
        reqs = self.reqs
        n = len(reqs)
        known = {
            **outcome_columns(reqs, scheduler),
            "reject_reason": pa.array(self.reject_reasons, type=pa.string()),
            "cached_prompt_tokens": pa.array([0] * n, type=pa.int64()),  # S-LoRA has no prefix cache
        }
        arrays = []
        for f in REQUEST_SCHEMA:
            if f.name in known:
                arrays.append(known[f.name].cast(f.type))
            elif f.name in workload.column_names:
                arrays.append(workload.column(f.name).cast(f.type))
            else:
                arrays.append(_default(f, n))
        return pa.Table.from_arrays(arrays, schema=REQUEST_SCHEMA)


def _default(field: pa.Field, n: int) -> pa.Array:
    """A column this engine does not compute: zeros for counts, nulls otherwise."""
    if pa.types.is_integer(field.type):
        return pa.array([0] * n, type=field.type)
    return pa.nulls(n, type=field.type)


def slora_config(preset, **overrides) -> SLoRAConfig:
    """The S-LoRA server for an engine preset.  An S-LoRA preset (``mode == "slora"``) gives its
    own limits; any other preset keeps its KV pool and gets S-LoRA's defaults for the rest
    (``batch_max_tokens = max(pool / 6, 3072)``, 1,000 running requests, merge every 10 steps).
    ``overrides`` (non-None) replace fields."""
    pool = preset.kv_capacity_tokens
    if getattr(preset, "mode", "vllm") == "slora":
        config = SLoRAConfig(
            max_total_tokens=pool,
            batch_max_tokens=preset.max_batch_tokens,
            running_max_req_size=preset.max_running,
            max_wait_tokens=preset.merge_interval_steps,
        )
    else:
        config = SLoRAConfig(max_total_tokens=pool, batch_max_tokens=default_batch_max_tokens(pool))
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
