"""Default Equinox against VTC and FCFS, one run each, on the VTC LMSYS trace and on ShareGPT.

LMSYS: the VTC artifact's trace on the default engine preset (VTC's A10G, 10,000-token pool).
ShareGPT: conversations 0-999 of ShareGPT_V3_unfiltered_cleaned_split.json (Hugging Face
anon8231489123/ShareGPT_Vicuna_unfiltered), 8 Zipf clients, Poisson 30 req/s on the A100 preset
(as benchmarks/paper_table.py).  Prints, per workload: whether Equinox's bound held
(schedulers/equinox_bound.py), the throughput and mean-TTFT ratios to VTC, and three Jain
indices: service rate (the audit's ``fairness.jain``), per-client mean TTFT, and per-client
engine-seconds / weight received while both the client was backlogged (requests admitted in
the window from 30 s to the last time every client was still backlogged, scaled by its length).

    python benchmarks/equinox_vs_vtc.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from engine.replay import replay  # noqa: E402
from reports.audit import audit  # noqa: E402
from schedulers.equinox_bound import check_run  # noqa: E402
from traces import load_workload  # noqa: E402


def jain(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.sum() ** 2 / (len(x) * (x**2).sum()))


def figures(run: Path) -> dict:
    req = pd.read_parquet(run / "requests.parquet")
    req = req[req.status == "finished"]
    ttft = (req.first_token_s - req.arrival_s).groupby(req.client_id).mean()
    # resource: engine-seconds / weight of the requests each client had admitted while backlogged
    rates = {}
    for client, r in req.groupby("client_id"):
        admitted = r[r.admitted_s > r.arrival_s + 1e-9]  # it waited: its client was backlogged
        span = admitted.admitted_s.max() - admitted.admitted_s.min() if len(admitted) > 1 else 0.0
        if span > 0:
            rates[client] = (admitted.engine_seconds / admitted.weight).sum() / span
    tokens = (req.prompt_tokens + req.generated_tokens).sum()
    return {
        "throughput": tokens / req.finish_s.max(),
        "ttft": float((req.first_token_s - req.arrival_s).mean()),
        "jain_ttft": jain(ttft),
        "jain_resource": jain(list(rates.values())) if rates else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    sharegpt = args.data / "sharegpt/ShareGPT_V3_unfiltered_cleaned_split.first2000.json"
    cases = {"lmsys": (load_workload("lmsys"), "vtc-a10g-llama2-7b")}
    if sharegpt.exists():
        table = load_workload(sharegpt, limit=1000, clients=8, client_dist="zipf", rate=30.0, seed=42)
        cases["sharegpt"] = (table, "a100-llama2-7b")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (table, preset) in cases.items():
            runs = replay(table, ["fcfs", "vtc", "equinox"], Path(tmp) / name, workload_name=name, preset=preset)
            summary = {r["name"]: r for r in audit(runs).runs}
            got = {run.name: {**figures(run), "jain": summary[run.name]["fairness"]["jain"]} for run in runs}
            bound = check_run(runs[2])
            e, v = got["equinox"], got["vtc"]
            print(f"{name} ({preset}): bound held {bound['held']} {bound['pair_difference']} <= {bound['bound']}")
            print(f"  throughput x{e['throughput'] / v['throughput']:.3f}  mean TTFT x{e['ttft'] / v['ttft']:.3f}")
            for key in ("jain", "jain_ttft", "jain_resource"):
                row = "  ".join(f"{s} {got[s][key]:.4f}" for s in ("fcfs", "vtc", "equinox"))
                print(f"  {key:14s} {row}  (equinox / vtc {e[key] / v[key] - 1:+.1%})")


if __name__ == "__main__":
    main()
