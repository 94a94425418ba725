"""Replay at scale: N requests with LMSYS lengths from 100 tenants, under VTC and Equinox.

Lengths are drawn from the VTC LMSYS trace, arrivals are Poisson, tenants uniform.  Two engines,
each overloaded (the case a fair scheduler is for): ``a100-llama2-7b`` (vLLM's server defaults
there: 256 requests, 2,048 tokens a step) at 20 req/s, and ``h100-llama2-7b`` (1,024 requests,
8,192 tokens: the batch is bound by the KV cache and vLLM preempts) at 40 req/s.

Every run goes through ``engine.replay.replay`` (the path ``equinox replay`` takes: requests and
steps Parquet, steps streamed to disk in Arrow batches) in a process of its own, so its peak RSS
is its own; then ``equinox audit`` reads the run directory (column-wise) in another.  For VTC
on the first engine the step-by-step path runs too: the ratio of the fast path to it, and
whether the two wrote identical Parquet, are printed.  Vidur's main loop, the anchor, runs about
350 simulated requests per second on this kind of machine (quoted in issue 8, not measured here).

    python benchmarks/replay_scale.py [--requests 1000000] [--engines a100,h100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIDUR_REQ_PER_S = 350  # anchor quoted in issue 8
ENGINES = {"a100": ("a100-llama2-7b", 20.0), "h100": ("h100-llama2-7b", 40.0)}


def workload(n: int, rate: float, tenants: int = 100, seed: int = 0, prefix_groups: int = 0):
    """``prefix_groups`` > 0: every request gets prefix hashes [one of that many shared, its own]."""
    import numpy as np
    import pyarrow as pa

    from traces import load_workload
    from traces.schema import make_table

    lmsys = load_workload("lmsys")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, lmsys.num_rows, n)
    hashes = None
    if prefix_groups:
        groups = rng.integers(0, prefix_groups, n)
        hashes = pa.array([[int(g), prefix_groups + i] for i, g in enumerate(groups)], type=pa.list_(pa.int64()))
    return make_table(
        [f"t{i}" for i in rng.integers(0, tenants, n)],
        np.cumsum(rng.exponential(1 / rate, n)),
        lmsys.column("prompt_tokens").to_numpy()[pick],
        lmsys.column("output_tokens").to_numpy()[pick],
        prefix_hashes=hashes,
    )


def _child(args) -> None:
    """One measured job in this process: a replay, or an audit; prints a JSON line."""
    import resource

    if args.job == "replay":
        import pyarrow.parquet as pq

        from engine.replay import replay

        table = pq.read_table(args.workload)
        start = time.perf_counter()
        (run_dir,) = replay(table, [args.scheduler], Path(args.out), preset=args.preset,
                            fast_forward=not args.step_by_step)  # fmt: skip
        wall = time.perf_counter() - start
        steps = pq.ParquetFile(run_dir / "steps.parquet").metadata.num_rows
        result = {"wall_s": wall, "steps": steps, "run_dir": str(run_dir)}
    else:
        from reports.audit import audit

        start = time.perf_counter()
        (summary,) = audit([Path(args.out)]).runs
        result = {"wall_s": time.perf_counter() - start, "jain": summary["fairness"]["jain"]}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _measure(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same_tables(a: str, b: str) -> bool:
    """Whether two run directories hold the same requests and steps (run.json differs: wall time)."""
    import pyarrow.parquet as pq

    return all(
        pq.read_table(Path(a) / f).equals(pq.read_table(Path(b) / f)) for f in ("requests.parquet", "steps.parquet")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--engines", default="a100,h100", help="comma-separated: " + ", ".join(ENGINES))
    parser.add_argument("--schedulers", default="vtc,equinox", help="comma-separated")
    parser.add_argument("--no-step-by-step", action="store_true", help="skip the step-by-step VTC run")
    parser.add_argument("--prefix-groups", type=int, default=0,
                        help="give every request prefix hashes: one of N shared prefixes, then its own")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", choices=["replay", "audit"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--scheduler", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--step-by-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    import pyarrow.parquet as pq

    n = args.requests
    print(f"{n:,} requests, LMSYS lengths, 100 tenants, Poisson arrivals; one process per run")
    print(f"{'engine':>15} {'rate':>5} {'scheduler':>9} {'path':>12} {'wall s':>8} {'req/s':>8} {'x Vidur':>8} "
          f"{'steps':>10} {'peak MB':>8} {'audit s':>8} {'audit MB':>9}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            preset, rate = ENGINES[engine]
            source = Path(tmp) / f"{engine}.parquet"
            pq.write_table(workload(n, rate, prefix_groups=args.prefix_groups), source)
            runs = [(scheduler, False) for scheduler in args.schedulers.split(",")]
            if engine == "a100" and "vtc" in args.schedulers.split(",") and not args.no_step_by_step:
                runs.insert(1, ("vtc", True))
            vtc_runs = {}
            for scheduler, step_by_step in runs:
                path = "step-by-step" if step_by_step else "fast-forward"
                out = Path(tmp) / f"{engine}-{scheduler}-{path}"
                job = ["--workload", str(source), "--scheduler", scheduler, "--preset", preset, "--out", str(out)]
                result = _measure("--job", "replay", *job, *(["--step-by-step"] if step_by_step else []))
                audited = _measure("--job", "audit", "--out", result["run_dir"])
                if scheduler == "vtc":
                    vtc_runs[path] = result
                per_s = n / result["wall_s"]
                print(f"{preset:>15} {rate:>5g} {scheduler:>9} {path:>12} {result['wall_s']:>8.1f} {per_s:>8,.0f} "
                      f"{per_s / VIDUR_REQ_PER_S:>8.1f} {result['steps']:>10,} {result['peak_rss_mb']:>8,.0f} "
                      f"{audited['wall_s']:>8.1f} {audited['peak_rss_mb']:>9,.0f}", flush=True)  # fmt: skip
            if len(vtc_runs) == 2:
                fast, slow = vtc_runs["fast-forward"], vtc_runs["step-by-step"]
                same = "identical" if _same_tables(fast["run_dir"], slow["run_dir"]) else "DIFFERENT"
                print(
                    f"  VTC on {preset}: step-by-step wall / fast path wall = {slow['wall_s'] / fast['wall_s']:.2f}x; "
                    f"requests and steps tables {same}"
                )


if __name__ == "__main__":
    main()
