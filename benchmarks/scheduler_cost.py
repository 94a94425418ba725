"""Cost of a scheduling decision as the number of tenants grows.

For 10, 1,000 and 100,000 tenants with 100,000 waiting requests spread over them, times one
admission decision (``select`` + ``admit``, plus the arrival that keeps the queue full) and one
engine step's bookkeeping (``on_tokens`` and ``on_step`` for a 256-request batch), for VTC and
Equinox.  Prints microseconds per decision and the ratio to the 10-tenant case measured in the
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

from engine.request import Request  # noqa: E402
from schedulers import EquinoxKnobs, make_policy  # noqa: E402

WAITING = 100_000
BATCH = 256


def filled(spec: str, tenants: int, seed: int = 0):
    rnd = random.Random(seed)
    policy = make_policy(spec, equinox=EquinoxKnobs(adaptive_budget=False))
    for i in range(WAITING):
        policy.on_arrival(Request(i, f"t{i % tenants}", 0.0, rnd.randint(10, 500), rnd.randint(10, 500)), 0.0)
    return policy, rnd


def time_decisions(spec: str, tenants: int, decisions: int) -> tuple[float, float]:
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
    return per_decision * 1e6, per_step * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=5000)
    args = parser.parse_args()
    print(f"{WAITING:,} waiting requests; {BATCH}-request batches; {args.decisions:,} decisions each")
    print(f"{'scheduler':>9} {'tenants':>8} {'us/decision':>12} {'x 10 tenants':>13} {'us/step':>9} {'x 10 tenants':>13}")
    for spec in ("vtc", "equinox"):
        base = None
        for tenants in (10, 1_000, 100_000):
            decision, step = time_decisions(spec, tenants, args.decisions)
            base = base or (decision, step)
            print(f"{spec:>9} {tenants:>8,} {decision:>12.1f} {decision / base[0]:>13.2f} {step:>9.0f} {step / base[1]:>13.2f}")


if __name__ == "__main__":
    main()
