"""Replay at scale: N requests with VTC-LMSYS lengths from 100 tenants, under VTC and Equinox.

Lengths are drawn from the VTC LMSYS trace, arrivals are Poisson at 20 req/s (the A100 preset
is then overloaded, the case a fair scheduler is for), steps stream to disk as the replay runs.
Prints wall time, simulated requests per second and peak RSS per scheduler, and for VTC the
ratio of the fast path (decode stretches in one move) to the step-by-step path in the same run.

    python benchmarks/replay_scale.py [--requests 1000000] [--rate 20]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.replay import engine_config  # noqa: E402
from engine.simulator import Simulator  # noqa: E402
from schedulers import make_policy  # noqa: E402
from traces import load_workload  # noqa: E402
from traces.schema import make_table  # noqa: E402


def workload(n: int, rate: float, tenants: int = 100, seed: int = 0):
    lmsys = load_workload("lmsys")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, lmsys.num_rows, n)
    return make_table(
        [f"t{i}" for i in rng.integers(0, tenants, n)],
        np.cumsum(rng.exponential(1 / rate, n)),
        lmsys.column("prompt_tokens").to_numpy()[pick],
        lmsys.column("output_tokens").to_numpy()[pick],
    )


def run(table, spec: str, fast_forward: bool, out: Path) -> float:
    config, preset = engine_config("a100-llama2-7b", fast_forward=fast_forward)
    sim = Simulator(config, preset.cost_model, make_policy(spec), steps_path=out / f"{spec}-{fast_forward}.parquet")
    start = time.perf_counter()
    sim.run(table)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = "fast-forward" if fast_forward else "step-by-step"
    print(f"{spec:>8} {path:>13}: {wall:7.1f} s, {table.num_rows / wall:7,.0f} req/s, {sim.step:,} steps, "
          f"peak RSS so far {rss:,.0f} MB", flush=True)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    table = workload(args.requests, args.rate)
    print(f"{args.requests:,} requests, 100 tenants, Poisson {args.rate:g} req/s, preset a100-llama2-7b")
    with tempfile.TemporaryDirectory() as tmp:
        fast = run(table, "vtc", True, Path(tmp))
        slow = run(table, "vtc", False, Path(tmp))
        run(table, "equinox", True, Path(tmp))
    print(f"VTC fast path / step-by-step: {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
