"""MoPE accuracy on held-out requests: MoPE vs the single model vs the moving average.

1. ShareGPT (``../shared/data/sharegpt``, first 2,000 conversations: real prompt text and
   real reply lengths; 8 uniform clients, Poisson 2 req/s) replayed under VTC on
   ``a100-llama2-7b``; every target, split seed 42, then the output-length MAE over five
   split seeds (mean and standard deviation).
2. Three of VTC's synthetic workloads (``overload``, ``poisson-short-long-2``,
   ``on-off-overload``) replayed under VTC on the VTC paper's engine (``vtc-a10g-llama2-7b``),
   where queues build up, for the latency and step targets.

Run from the repository root (about two minutes): ``python benchmarks/mope_accuracy.py``.
Prints Markdown tables; docs/PREDICTORS.md quotes them.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.replay import replay  # noqa: E402
from predictors import MODELS, train  # noqa: E402
from traces import load_workload, synthesize  # noqa: E402

SHAREGPT = ROOT.parent / "shared/data/sharegpt/ShareGPT_V3_unfiltered_cleaned_split.first2000.json"
SYNTHETIC = ("overload", "poisson-short-long-2", "on-off-overload")
SEEDS = (42, 1, 2, 3, 4)
UNITS = {
    "output_tokens": ("tokens", 1),
    "ttft_s": ("ms", 1e3),
    "tpot_s": ("ms", 1e3),
    "e2e_s": ("s", 1),
    "step_s": ("ms", 1e3),
    "utilization": ("MFU %", 100),
    "tokens_per_s": ("tokens/s", 1),
}


def markdown(report, title: str) -> None:
    rows = report.rows
    print(f"\n### {title}\n")
    print(
        f"held out: {rows['holdout_requests']} requests, {rows['holdout_steps']} steps "
        f"(trained on {rows['train_requests']} requests, {rows['train_steps']} steps)\n"
    )
    print("| target | unit | model | n | MAE | p50 | p90 | p99 |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for target, by_model in report.metrics.items():
        unit, scale = UNITS[target]
        for model, m in by_model.items():
            cells = " | ".join(f"{m[k] * scale:.4g}" for k in ("mae", "p50", "p90", "p99"))
            print(f"| {target} | {unit} | {model} | {m['n']} | {cells} |")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        table = load_workload(str(SHAREGPT), clients=8, rate=2, seed=42)
        runs = replay(table, ["vtc"], tmp / "sharegpt", preset="a100-llama2-7b")
        reports = {seed: train(runs, tmp / f"sharegpt-{seed}", seed=seed) for seed in SEEDS}
        markdown(reports[42], f"ShareGPT, {table.num_rows} requests, a100-llama2-7b, VTC, split seed 42")
        print(f"\n### ShareGPT output-length MAE (tokens) over split seeds {', '.join(map(str, SEEDS))}\n")
        print("| model | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean | sd |")
        print("|---|" + "---:|" * (len(SEEDS) + 2))
        for model in MODELS:
            mae = np.array([reports[s].metrics["output_tokens"][model]["mae"] for s in SEEDS])
            cells = " | ".join(f"{v:.1f}" for v in mae)
            print(f"| {model} | {cells} | {mae.mean():.1f} | {mae.std(ddof=1):.1f} |")

        runs = [
            run
            for name in SYNTHETIC
            for run in replay(synthesize(name), ["vtc"], tmp / name, workload_name=name, preset="vtc-a10g-llama2-7b")
        ]
        markdown(train(runs, tmp / "synthetic"), f"{' + '.join(SYNTHETIC)}, vtc-a10g-llama2-7b, VTC, split seed 42")
        print(f"\n(wall time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
