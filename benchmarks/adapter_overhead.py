"""Cost of the vLLM scheduler adapter per engine step, against vLLM's own scheduler.

Builds vLLM 0.32's ``Scheduler`` and our ``serving.vllm_adapter.FairScheduler`` without a model
(``serving.offline``: real scheduler and KV cache manager, made-up model outputs) and keeps
``--waiting`` requests waiting from ``--tenants`` tenants while ``--running`` decode: each step
a few requests finish and as many new ones arrive, so every step admits a few.  Times
``schedule()`` and ``update_from_output()`` (the adapter's policy feedback and logging happen
there) over ``--steps`` steps, after a warm-up.  All the schedulers advance in lockstep, one step
each in turn (the order rotating), so a load that comes and goes on a shared machine hits them
alike; ``--rounds`` repeats the whole run.  The start-up heap is frozen out of the garbage
collector first, as vLLM's engine core does (``--no-freeze``: not).  Prints per-call medians and
means and, per round, the ratio of each scheduler's mean ``schedule()`` and mean step
(``schedule()`` + ``update_from_output()``) to vLLM's FCFS scheduler's: the median over rounds
and, in brackets, the range.  A reference row (``--no-reference``: none) is vLLM's own scheduler
with its priority queue and random priorities: what admitting out of arrival order costs vLLM.

``--breakdown`` also times the policy's own methods (``select``, ``admit``, ``on_step``,
``on_tokens``, ...; each call through a wrapper, which adds a little) and splits what the adapter
adds to each call into the policy's part and the rest (the adapter's own work, and whatever vLLM
does differently when the order changes).  A last table times one
``schedule()`` that admits a full batch out of the waiting requests (a burst).  Needs vLLM
(``pip install -e '.[vllm]'``).  From the repository root:

    python benchmarks/adapter_overhead.py [--waiting 1000] [--running 256] [--steps 400] [--tenants 50]
                                          [--rounds 3] [--breakdown]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The methods an engine calls on a policy (schedulers/base.py).
PRIORITY = "vllm-priority"  # the reference row: vLLM's own scheduler, admitting out of arrival order
POLICY_METHODS = ("on_arrival", "peek", "select", "admit", "requeue", "token_budget", "on_step", "on_tokens",
                  "on_finish")  # fmt: skip


def build(cls, model_dir, args, policy):
    """``policy``: ours (FairScheduler), or ``vllm-priority`` for vLLM's own priority queue, or None (vLLM's FCFS)."""
    from serving.offline import make_scheduler

    extra = {"equinox": {"scheduler": policy}} if policy and policy != PRIORITY else None
    return make_scheduler(cls, model_dir, num_blocks=args.blocks, max_num_seqs=args.running,
                          max_num_batched_tokens=args.budget, additional_config=extra,
                          policy="priority" if policy == PRIORITY else "fcfs")  # fmt: skip


def requests(n: int, args, seed: int, policy):
    """vLLM requests of ``workload``; random priorities (0-49) for vLLM's priority queue."""
    import random

    from serving.offline import make_request

    rng = random.Random(seed)
    for rid, p, o, tenant in workload(n, args.tenants, seed):
        yield make_request(rid, p, o, tenant=tenant, priority=rng.randrange(50) if policy == PRIORITY else 0)


def workload(n: int, tenants: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    for i in range(n):
        yield f"r{i}", int(rng.integers(32, 256)), int(rng.integers(16, 128)), f"t{int(rng.zipf(1.5)) % tenants}"


class PolicyTimer:
    """Time spent in a policy's methods (outermost calls only: ``select`` calling ``peek`` counts once)."""

    def __init__(self, policy):
        from schedulers.base import Policy

        self.spent = 0.0
        self._depth = 0
        for name in POLICY_METHODS:
            method = getattr(policy, name)
            if getattr(method, "__func__", None) is getattr(Policy, name):
                continue  # the base class's: the adapter may skip a no-op, and the rest cost next to nothing
            setattr(policy, name, self._timed(method))

    def _timed(self, method):
        def timed(*args):
            if self._depth:
                return method(*args)
            self._depth = 1
            t0 = time.perf_counter()
            try:
                return method(*args)
            finally:
                self.spent += time.perf_counter() - t0
                self._depth = 0

        return timed


class Steady:
    """One scheduler with ``--running`` requests decoding and ``--waiting`` waiting; ``step()`` times one step."""

    def __init__(self, cls, model_dir, args, policy):
        self.sched = build(cls, model_dir, args, policy)
        self.timer = (
            PolicyTimer(self.sched.equinox.policy) if args.breakdown and policy not in (None, PRIORITY) else None
        )
        self.source = requests(10**9, args, args.seed, policy)
        self.schedule_s: list[float] = []
        self.update_s: list[float] = []
        self.policy_schedule_s: list[float] = []  # of schedule_s, in the policy (with --breakdown)
        self.policy_update_s: list[float] = []
        self.waiting_at_end = 0
        self.arrive(args.waiting + args.running)

    def arrive(self, k: int) -> None:
        for _ in range(k):
            self.sched.add_request(next(self.source))

    def step(self, record: bool) -> None:
        from serving.offline import fake_output

        sched, timer = self.sched, self.timer
        p0 = timer.spent if timer else 0.0
        t0 = time.perf_counter()
        out = sched.schedule()
        t1 = time.perf_counter()
        p1 = timer.spent if timer else 0.0
        model = fake_output(out)
        for j, rid in enumerate(model.req_ids):
            req = sched.requests[rid]
            if req.num_computed_tokens < req.num_tokens:
                model.sampled_token_ids[j] = []
        before = len(sched.requests)
        t2 = time.perf_counter()
        sched.update_from_output(out, model)
        t3 = time.perf_counter()
        p2 = timer.spent if timer else 0.0
        self.arrive(before - len(sched.requests))  # keep the waiting queue full
        if record:
            self.schedule_s.append(t1 - t0)
            self.update_s.append(t3 - t2)
            self.policy_schedule_s.append(p1 - p0)
            self.policy_update_s.append(p2 - p1)


def steady_round(rows, model_dir, args) -> list[Steady]:
    """One lockstep run of every scheduler in ``rows``."""
    runs = [Steady(cls, model_dir, args, policy) for _, cls, policy in rows]
    if not args.no_freeze:
        gc.collect()
        gc.freeze()
    for i in range(args.warmup + args.steps):
        shift = i % len(runs)
        for run in runs[shift:] + runs[:shift]:
            run.step(record=i >= args.warmup)
    for run in runs:
        run.waiting_at_end = len(run.sched.waiting)
        run.sched = run.source = run.timer = None  # keep only the times
    gc.unfreeze()
    return runs


def burst(rows, model_dir, args, repeats: int = 5) -> list[list[float]]:
    """One schedule() admitting a full batch out of ``--waiting`` + ``--running`` waiting requests, per scheduler."""
    times: list[list[float]] = [[] for _ in rows]
    for r in range(repeats):
        for k, (_, cls, policy) in enumerate(rows):
            sched = build(cls, model_dir, args, policy)
            for request in requests(args.waiting + args.running, args, args.seed + r, policy):
                sched.add_request(request)
            t0 = time.perf_counter()
            sched.schedule()
            times[k].append(time.perf_counter() - t0)
    return times


def spread(values: list[float], digits: int = 3, unit: str = "x") -> str:
    """Median and, for more than one value, [min-max]."""
    mid = f"{statistics.median(values):.{digits}f}{unit}"
    return mid if len(values) == 1 else f"{mid} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--running", type=int, default=256, help="max_num_seqs")
    parser.add_argument("--budget", type=int, default=8192, help="max_num_batched_tokens")
    parser.add_argument("--blocks", type=int, default=50_000, help="KV cache blocks of 16 tokens")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="lockstep runs; ratios are given per round")
    parser.add_argument("--policies", default="fcfs,vtc,equinox")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--breakdown", action="store_true", help="split the adapter's extra time: policy / adapter")
    parser.add_argument("--no-burst", action="store_true", help="skip the burst table")
    parser.add_argument("--no-reference", action="store_true", help="leave out vLLM's priority scheduler")
    parser.add_argument("--no-freeze", action="store_true", help="leave the start-up heap to the garbage collector")
    args = parser.parse_args()

    import logging

    logging.disable(logging.WARNING)
    from vllm.v1.core.sched.scheduler import Scheduler

    from serving.offline import write_config
    from serving.vllm_adapter import FairScheduler

    model_dir = write_config(Path(tempfile.mkdtemp(prefix="adapter-overhead-")))
    rows = [("vLLM Scheduler (fcfs)", Scheduler, None)]
    if not args.no_reference:
        rows.append(("vLLM Scheduler (priority, random)", Scheduler, PRIORITY))
    rows += [(f"FairScheduler ({p})", FairScheduler, p) for p in args.policies.split(",")]

    print(f"vLLM scheduler adapter overhead: {args.waiting} waiting, {args.running} running (max_num_seqs), "
          f"{args.tenants} tenants, {args.steps} steps after {args.warmup} warm-up, {args.rounds} lockstep "
          f"round(s){', policy methods timed (--breakdown)' if args.breakdown else ''}")  # fmt: skip
    print()
    rounds = [steady_round(rows, model_dir, args) for _ in range(args.rounds)]
    mean = statistics.mean
    base_sched = [mean(r[0].schedule_s) for r in rounds]
    base_update = [mean(r[0].update_s) for r in rounds]
    print("Per call: median over every round's steps; mean: the median of the rounds' means.  Ratios: the "
          "scheduler's mean over vLLM's in the same round, median over rounds [range].")  # fmt: skip
    print()
    print("| scheduler | schedule() median us | mean us | update_from_output() median us | mean us "
          "| step mean us | schedule() vs vLLM | step vs vLLM | waiting at end |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for k, (label, _, _) in enumerate(rows):
        runs = [r[k] for r in rounds]
        sched_means = [mean(run.schedule_s) for run in runs]
        update_means = [mean(run.update_s) for run in runs]
        step_means = [s + u for s, u in zip(sched_means, update_means)]
        sched_ratio = spread([s / b for s, b in zip(sched_means, base_sched)])
        step_ratio = spread([s / (b + u) for s, b, u in zip(step_means, base_sched, base_update)])
        median_sched = statistics.median(t for run in runs for t in run.schedule_s)
        median_update = statistics.median(t for run in runs for t in run.update_s)
        print(f"| {label} | {median_sched * 1e6:.0f} | {statistics.median(sched_means) * 1e6:.0f} "
              f"| {median_update * 1e6:.0f} | {statistics.median(update_means) * 1e6:.0f} "
              f"| {statistics.median(step_means) * 1e6:.0f} | {sched_ratio} | {step_ratio} "
              f"| {runs[-1].waiting_at_end} |")  # fmt: skip
    if args.breakdown:
        print()
        print("What each adds to vLLM's mean per step, us (median over rounds [range]): the policy's methods and "
              "the rest (the adapter's own work, and whatever vLLM does differently for the changed order), and "
              "the ratios vLLM + the rest would have.")  # fmt: skip
        print()
        print("| scheduler | schedule(): policy | schedule(): rest | update(): policy | update(): rest "
              "| schedule() without policy | step without policy |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for k, (label, _, policy) in enumerate(rows):
            if policy in (None, PRIORITY):
                continue
            runs = [r[k] for r in rounds]
            ps = [mean(run.policy_schedule_s) for run in runs]
            pu = [mean(run.policy_update_s) for run in runs]
            own_s = [mean(run.schedule_s) - b - p for run, b, p in zip(runs, base_sched, ps)]
            own_u = [mean(run.update_s) - b - p for run, b, p in zip(runs, base_update, pu)]
            sched_ratio = [(b + o) / b for b, o in zip(base_sched, own_s)]
            step_ratio = [
                (bs + bu + os + ou) / (bs + bu) for bs, bu, os, ou in zip(base_sched, base_update, own_s, own_u)
            ]
            print(f"| {label} | {spread([p * 1e6 for p in ps], 0, '')} | {spread([o * 1e6 for o in own_s], 0, '')} "
                  f"| {spread([p * 1e6 for p in pu], 0, '')} | {spread([o * 1e6 for o in own_u], 0, '')} "
                  f"| {spread(sched_ratio)} | {spread(step_ratio)} |")  # fmt: skip
    if args.no_burst:
        return
    print()
    print(f"Burst: one schedule() admitting up to {args.running} of {args.waiting + args.running} waiting requests")
    print()
    print("| scheduler | schedule() median ms | ratio to vLLM |")
    print("|---|---|---|")
    times = burst(rows, model_dir, args)
    base = statistics.median(times[0])
    for (label, _, _), t in zip(rows, times):
        t = statistics.median(t)
        print(f"| {label} | {t * 1e3:.2f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
