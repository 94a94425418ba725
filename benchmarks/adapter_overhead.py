"""Cost of the vLLM scheduler adapter per engine step, against vLLM's own scheduler.

Builds vLLM 0.32's ``Scheduler`` and our ``serving.vllm_adapter.FairScheduler`` without a model
(``serving.offline``: real scheduler and KV cache manager, made-up model outputs) and keeps
``--waiting`` requests waiting from ``--tenants`` tenants while ``--running`` decode: each step
a few requests finish and as many new ones arrive, so every step admits a few.  Times
``schedule()`` and ``update_from_output()`` (the adapter's policy feedback and logging happen
there) over ``--steps`` steps, after a warm-up, and prints per-call medians and means and the
ratio to vLLM's scheduler.  A second table times one ``schedule()`` that admits a full batch out of
the waiting requests (a burst).  Needs vLLM (``pip install -e '.[vllm]'``).  From the repository root:

    python benchmarks/adapter_overhead.py [--waiting 1000] [--running 256] [--steps 400] [--tenants 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(cls, model_dir, args, policy):
    from serving.offline import make_scheduler

    extra = {"equinox": {"scheduler": policy}} if policy else None
    return make_scheduler(cls, model_dir, num_blocks=args.blocks, max_num_seqs=args.running,
                          max_num_batched_tokens=args.budget, additional_config=extra)  # fmt: skip


def workload(n: int, tenants: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    for i in range(n):
        yield f"r{i}", int(rng.integers(32, 256)), int(rng.integers(16, 128)), f"t{int(rng.zipf(1.5)) % tenants}"


def steady(cls, model_dir, args, policy) -> dict:
    """Per-step times with ``--running`` requests decoding and ``--waiting`` waiting."""
    from serving.offline import fake_output, make_request

    sched = build(cls, model_dir, args, policy)
    source = workload(10**9, args.tenants, args.seed)

    def arrive(k):
        for _ in range(k):
            rid, p, o, tenant = next(source)
            sched.add_request(make_request(rid, p, o, tenant=tenant))

    arrive(args.waiting + args.running)
    schedule_s, update_s = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        out = sched.schedule()
        t1 = time.perf_counter()
        model = fake_output(out)
        for j, rid in enumerate(model.req_ids):
            req = sched.requests[rid]
            if req.num_computed_tokens < req.num_tokens:
                model.sampled_token_ids[j] = []
        before = len(sched.requests)
        t2 = time.perf_counter()
        sched.update_from_output(out, model)
        t3 = time.perf_counter()
        arrive(before - len(sched.requests))  # keep the waiting queue full
        if i >= args.warmup:
            schedule_s.append(t1 - t0)
            update_s.append(t3 - t2)
    waiting = len(sched.waiting)
    return {"schedule": schedule_s, "update": update_s, "waiting": waiting, "running": len(sched.running)}


def burst(cls, model_dir, args, policy, repeats: int = 5) -> list[float]:
    """One schedule() admitting a full batch out of ``--waiting`` + ``--running`` waiting requests."""
    from serving.offline import make_request

    times = []
    for r in range(repeats):
        sched = build(cls, model_dir, args, policy)
        for rid, p, o, tenant in workload(args.waiting + args.running, args.tenants, args.seed + r):
            sched.add_request(make_request(rid, p, o, tenant=tenant))
        t0 = time.perf_counter()
        sched.schedule()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--running", type=int, default=256, help="max_num_seqs")
    parser.add_argument("--budget", type=int, default=8192, help="max_num_batched_tokens")
    parser.add_argument("--blocks", type=int, default=50_000, help="KV cache blocks of 16 tokens")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--policies", default="fcfs,vtc,equinox")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import logging

    logging.disable(logging.WARNING)
    from vllm.v1.core.sched.scheduler import Scheduler

    from serving.offline import write_config
    from serving.vllm_adapter import FairScheduler

    model_dir = write_config(Path(tempfile.mkdtemp(prefix="adapter-overhead-")))
    rows = [("vLLM Scheduler (fcfs)", Scheduler, None)]
    rows += [(f"FairScheduler ({p})", FairScheduler, p) for p in args.policies.split(",")]

    print(f"vLLM scheduler adapter overhead: {args.waiting} waiting, {args.running} running (max_num_seqs), "
          f"{args.tenants} tenants, {args.steps} steps after {args.warmup} warm-up")  # fmt: skip
    print()
    print("| scheduler | schedule() median us | mean us | update_from_output() median us | mean us "
          "| step (both) mean us | ratio to vLLM | waiting at end |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    base = None
    results = {}
    for label, cls, policy in rows:
        r = steady(cls, model_dir, args, policy)
        results[label] = r
        step = statistics.mean(r["schedule"]) + statistics.mean(r["update"])
        base = base or step
        print(f"| {label} | {statistics.median(r['schedule']) * 1e6:.0f} | {statistics.mean(r['schedule']) * 1e6:.0f} "
              f"| {statistics.median(r['update']) * 1e6:.0f} | {statistics.mean(r['update']) * 1e6:.0f} "
              f"| {step * 1e6:.0f} | {step / base:.2f}x | {r['waiting']} |")  # fmt: skip
    print()
    print(f"Burst: one schedule() admitting up to {args.running} of {args.waiting + args.running} waiting requests")
    print()
    print("| scheduler | schedule() median ms | ratio to vLLM |")
    print("|---|---|---|")
    base = None
    for label, cls, policy in rows:
        t = statistics.median(burst(cls, model_dir, args, policy))
        base = base or t
        print(f"| {label} | {t * 1e3:.2f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
