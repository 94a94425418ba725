"""Audit speed and memory on a synthetic run directory of a million requests.

Generates ``requests.parquet``, ``steps.parquet`` and ``run.json`` with the schemas of
``engine/results.py`` (plausible columns drawn with numpy, not a simulation: Poisson
arrivals at 100 req/s over about 2.8 hours, 100 clients with Zipf-like shares, log-normal
prompt and output lengths, 2% rejected), then, each in a fresh process so that its peak
RSS is its own:

1. ``audit`` (load + every metric, what ``equinox audit DIR --format json`` computes);
2. ``audit`` + figures + HTML report (``equinox audit DIR --html report.html``).

Baseline, measured in the same run: the service curves A_j(t) (the input of every
fairness metric) computed the obvious way, a Python loop over requests adding each
request's ramp onto the grid with numpy, on a 100,000-request subset, extrapolated
linearly to the full run; against ``reports.metrics.service_curves`` on the full run.
The two are checked to agree on the subset.  Run from the repository root:

    python benchmarks/audit_scale.py [--requests 1000000] [--clients 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.results import atomic_write_json, atomic_write_parquet  # noqa: E402
from reports import metrics as m  # noqa: E402
from reports.audit import fairness_grid, load_runs  # noqa: E402
from traces.result_schemas import REQUEST_SCHEMA, STEP_SCHEMA  # noqa: E402

RATE = 100.0  # requests per second
SUBSET = 100_000  # requests the per-row baseline runs on


def generate(path: Path, n: int, clients: int, seed: int = 42) -> None:
    """Write a plausible run directory of ``n`` requests."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / RATE, n))
    share = 1 / np.arange(1, clients + 1)
    client = rng.choice(clients, n, p=share / share.sum())
    prompt = np.clip(rng.lognormal(5.5, 0.9, n), 4, 4096).astype(np.int64)
    output = np.clip(rng.lognormal(5.0, 0.9, n), 1, 2048).astype(np.int64)
    rejected = rng.random(n) < 0.02
    admitted = arrival + rng.exponential(2.0, n)
    first = admitted + 0.02 + prompt * 1e-4
    finish = first + (output - 1) * rng.uniform(0.03, 0.06, n)
    nan = np.full(n, np.nan)
    ints = lambda high: rng.integers(0, high, n)  # noqa: E731
    requests = {
        "request_id": np.arange(n),
        "client_id": pa.DictionaryArray.from_arrays(client, [f"tenant-{i:03d}" for i in range(clients)]).cast(
            pa.string()
        ),
        "arrival_s": arrival,
        "prompt_tokens": prompt,
        "output_tokens": output,
        "weight": np.ones(n),
        "conversation_id": pa.nulls(n, pa.string()),
        "prompt": pa.nulls(n, pa.string()),
        "scheduler": pa.array(["vtc"] * n, pa.string()),
        "status": pa.array(np.where(rejected, "rejected", "finished"), pa.string()),
        "admitted_s": np.where(rejected, nan, admitted),
        "first_token_s": np.where(rejected, nan, first),
        "finish_s": np.where(rejected, nan, finish),
        "generated_tokens": np.where(rejected, 0, output),
        "preemptions": rng.poisson(0.05, n),
        "waiting_at_arrival": ints(200),
        "waiting_tokens_at_arrival": ints(50_000),
        "running_at_arrival": ints(64),
        "kv_used_at_arrival": rng.random(n),
        "engine_seconds": np.where(rejected, nan, rng.uniform(0.01, 1.0, n)),
    }
    for name in REQUEST_SCHEMA.names:  # the columns appended since (reject_reason, ...): null
        requests.setdefault(name, pa.nulls(n, REQUEST_SCHEMA.field(name).type))
    atomic_write_parquet(pa.table(requests, schema=REQUEST_SCHEMA), path / "requests.parquet")
    end = float(np.nanmax(finish))
    duration = rng.uniform(0.02, 0.06, int(end / 0.04) + 1000)
    duration = duration[: np.searchsorted(np.cumsum(duration), end) + 1]
    k = len(duration)
    busy = rng.random(k) < 0.95
    steps = {c: rng.integers(0, 100, k) for c in STEP_SCHEMA.names} | {
        "step": np.arange(k),
        "start_s": np.r_[0.0, np.cumsum(duration)[:-1]],
        "duration_s": duration,
        "busy": busy,
        "kv_capacity_tokens": np.full(k, 10_000),
        "flops": np.where(busy, rng.uniform(1e12, 5e12, k), 0.0),
    }
    atomic_write_parquet(pa.table(steps, schema=STEP_SCHEMA), path / "steps.parquet")
    engine = {"kv_capacity_tokens": 10_000, "max_batch_tokens": 3072, "peak_flops": 312e12, "preset": "synthetic"}
    config = {"scheduler": "vtc", "workload": {"name": "synthetic", "requests": n}, "seed": seed, "engine": engine}
    atomic_write_json(config | {"service_weights": {"w_p": 1.0, "w_q": 2.0}}, path / "run.json")


CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from reports.audit import audit
result = audit([{run!r}])
t1 = time.perf_counter()
times = {{"audit_s": t1 - t0}}
if {report}:
    from reports.figures import render
    from reports.html import to_html
    page = to_html(result, render(result))
    times["figures_html_s"] = time.perf_counter() - t1
    times["html_bytes"] = len(page)
print(json.dumps(times))
"""


def child(run: Path, report: bool) -> tuple[dict, float]:
    """Run the audit in a fresh process: its timings, and the peak RSS (MB) of the children so far."""
    code = CHILD.format(root=str(ROOT), run=str(run), report=report)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    times = json.loads(done.stdout) | {"process_s": time.perf_counter() - start}
    return times, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def naive_service_curves(requests: pd.DataFrame, grid: np.ndarray) -> pd.DataFrame:
    """A_j(t) with a Python loop over requests (the baseline)."""
    out = {c: np.zeros(len(grid)) for c in sorted(requests["client_id"].unique())}
    for row in requests.itertuples(index=False):
        if row.status != "finished":
            continue
        s = (row.prompt_tokens + 2 * row.generated_tokens) / row.weight
        span = row.finish_s - row.first_token_s
        part = np.clip((grid - row.first_token_s) / span, 0, 1) if span > 0 else (grid >= row.finish_s)
        out[row.client_id] += s * part
    return pd.DataFrame(out, index=grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--keep", type=Path, help="Write the run directory here and keep it.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.keep or Path(tmp) / "run"
        start = time.perf_counter()
        generate(run, args.requests, args.clients)
        size = sum(f.stat().st_size for f in run.iterdir()) / 1e6
        print(
            f"generated {args.requests:,} requests, {args.clients} clients in {time.perf_counter() - start:.1f} s "
            f"({size:.0f} MB of Parquet)"
        )
        audit_only, rss_audit = child(run, report=False)
        print(
            f"audit:                 {audit_only['audit_s']:6.2f} s in-process, {audit_only['process_s']:6.2f} s "
            f"with interpreter start; peak RSS {rss_audit:,.0f} MB"
        )
        full, rss_full = child(run, report=True)
        print(
            f"audit + figures + HTML: {full['audit_s'] + full['figures_html_s']:5.2f} s in-process "
            f"(figures + HTML {full['figures_html_s']:.2f} s, {full['html_bytes'] / 1e6:.2f} MB); "
            f"peak RSS {rss_full:,.0f} MB"
        )

        requests = load_runs([run])[0].requests
        grid = fairness_grid(requests)
        start = time.perf_counter()
        m.service_curves(requests, grid)
        ours_s = time.perf_counter() - start
        subset = requests.iloc[:SUBSET]
        start = time.perf_counter()
        naive = naive_service_curves(subset, grid)
        naive_s = (time.perf_counter() - start) * len(requests) / len(subset)
        error = float(np.abs(naive.to_numpy() - m.service_curves(subset, grid).to_numpy()).max())
        print(
            f"service curves on {len(grid):,} grid points: ours {ours_s:.2f} s on {len(requests):,} requests; "
            f"per-request loop {naive_s:.1f} s (measured on {SUBSET:,}, x{len(requests) / SUBSET:g}); "
            f"ratio {naive_s / ours_s:,.0f}x; max difference on the subset {error:.2g} tokens"
        )


if __name__ == "__main__":
    main()
