"""Cost of a scheduling decision as the number of tenants grows.

For 10, 1,000 and 100,000 tenants with 100,000 waiting requests spread over them, times one
admission decision (``select`` + ``admit``, plus the arrival that keeps the queue full) and one
engine step's bookkeeping for a 256-request batch, for VTC and Equinox: through the
per-request calls (``on_tokens`` with Request objects and ``on_step`` with pairs, as the vLLM
adapter makes them) and through the array calls the simulator makes (``on_tokens_slots``,
``on_step_slots``).  Prints microseconds and the ratio to the 10-tenant case measured in the
same run: flat or logarithmic growth is the goal.

    python benchmarks/scheduler_cost.py [--decisions 5000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.request import Request  # noqa: E402
from schedulers import EquinoxKnobs, Policy, make_policy  # noqa: E402

WAITING = 100_000
BATCH = 256


def filled(spec: str, tenants: int, seed: int = 0):
    rnd = random.Random(seed)
    policy = make_policy(spec, equinox=EquinoxKnobs(adaptive_budget=False))
    for i in range(WAITING):
        policy.on_arrival(Request(i, f"t{i % tenants}", 0.0, rnd.randint(10, 500), rnd.randint(10, 500)), 0.0)
    return policy, rnd


def time_decisions(spec: str, tenants: int, decisions: int) -> tuple[float, float, float]:
    policy, rnd = filled(spec, tenants)
    fits = lambda r: True  # noqa: E731
    running = []
    next_id = WAITING
    for warm in (True, False):
        start = time.perf_counter()
        for _ in range(decisions):
            req = policy.select(fits)
            policy.admit(req, 1.0, False)
            running.append(req)
            policy.on_arrival(Request(next_id, req.client, 1.0, rnd.randint(10, 500), rnd.randint(10, 500)), 1.0)
            next_id += 1
        per_decision = (time.perf_counter() - start) / decisions
    batch = running[-BATCH:]
    for r in batch:
        r.decoding = True
    steps = 200
    start = time.perf_counter()
    for step in range(steps):
        for r in batch:
            r.generated += 1
        policy.on_tokens(batch, 1)
        policy.on_step(2.0 + step * 0.02, 0.02, [(r, 1) for r in batch])
    per_step = (time.perf_counter() - start) / steps
    slots = np.array([r.slot for r in batch], dtype=np.int64)
    weights = np.array([r.weight for r in batch])
    ones = np.ones(len(batch), dtype=np.int64)
    generated = np.array([r.generated for r in batch], dtype=np.int64)
    start = time.perf_counter()
    for step in range(steps):
        generated += 1
        policy.on_tokens_slots(slots, generated, weights, 1)
        if type(policy).on_step_slots is not Policy.on_step_slots:
            policy.on_step_slots(6.0 + step * 0.02, 0.02, slots, ones)
    per_array_step = (time.perf_counter() - start) / steps
    return per_decision * 1e6, per_step * 1e6, per_array_step * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=5000)
    args = parser.parse_args()
    print(f"{WAITING:,} waiting requests; {BATCH}-request batches; {args.decisions:,} decisions each")
    print(f"{'scheduler':>9} {'tenants':>8} {'us/decision':>12} {'x 10':>6} {'us/step (requests)':>19} {'x 10':>6} "
          f"{'us/step (arrays)':>17} {'x 10':>6}")  # fmt: skip
    for spec in ("vtc", "equinox"):
        base = None
        for tenants in (10, 1_000, 100_000):
            times = time_decisions(spec, tenants, args.decisions)
            base = base or times
            x = [t / b for t, b in zip(times, base)]
            print(f"{spec:>9} {tenants:>8,} {times[0]:>12.1f} {x[0]:>6.2f} {times[1]:>19.0f} {x[1]:>6.2f} "
                  f"{times[2]:>17.0f} {x[2]:>6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
