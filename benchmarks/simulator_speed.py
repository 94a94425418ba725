"""Simulator speed: the Azure LLM conversation trace (19,366 requests, one hour) under VTC.

Prints simulated requests per wall-clock second and the process's peak memory for the
fast path (decode stretches advanced in one move) and the step-by-step path it
accelerates, measured in the same run, their ratio, and whether their results are
identical.  Also VTC's synthetic ``overload`` workload on VTC's engine, where long pure
decode stretches are common.  Run from the repository root:

    python benchmarks/simulator_speed.py [--trace PATH] [--preset a100-llama2-7b] [--scheduler vtc]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.replay import engine_config  # noqa: E402
from engine.simulator import Simulator  # noqa: E402
from schedulers import make_policy  # noqa: E402
from traces import load_workload, synthesize  # noqa: E402

DEFAULT_TRACE = ROOT.parent / "shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv"


def measure(workload, preset: str, scheduler: str, fast_forward: bool) -> dict:
    config, engine = engine_config(preset, fast_forward=fast_forward)
    sim = Simulator(config, engine.cost_model, make_policy(scheduler))
    start = time.perf_counter()
    requests, steps = sim.run(workload)
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "requests_per_s": workload.num_rows / wall,
        "steps": steps.num_rows,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "requests": requests,
        "steps_table": steps,
    }


def compare(label: str, workload, preset: str, scheduler: str) -> None:
    print(f"{label}: {workload.num_rows:,} requests; preset {preset}; scheduler {scheduler}")
    fast = measure(workload, preset, scheduler, fast_forward=True)  # first: its peak RSS is its own
    slow = measure(workload, preset, scheduler, fast_forward=False)
    same = fast["requests"].equals(slow["requests"]) and fast["steps_table"].equals(slow["steps_table"])
    for name, r in (("fast-forward", fast), ("step-by-step", slow)):
        print(
            f"  {name:>13}: {r['wall_s']:6.2f} s wall, {r['requests_per_s']:8,.0f} simulated req/s, "
            f"{r['steps']:,} steps, process peak RSS so far {r['peak_rss_mb']:.0f} MB"
        )
    print(f"  fast path / step-by-step speed: {slow['wall_s'] / fast['wall_s']:.2f}x; identical results: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--preset", default="a100-llama2-7b")
    parser.add_argument("--scheduler", default="vtc")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    workload = load_workload(args.trace, clients=args.clients, seed=42)
    compare(f"{args.trace.name} ({args.clients} clients)", workload, args.preset, args.scheduler)
    compare("overload (VTC synthetic)", synthesize("overload"), "vtc-a10g-llama2-7b", args.scheduler)


if __name__ == "__main__":
    main()
