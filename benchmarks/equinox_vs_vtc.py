"""Default Equinox against VTC and FCFS, one run each, on the VTC LMSYS trace and on ShareGPT.

LMSYS: the VTC artifact's trace on the default engine preset (VTC's A10G, 10,000-token pool).
ShareGPT: conversations 0-999 of ShareGPT_V3_unfiltered_cleaned_split.json (Hugging Face
anon8231489123/ShareGPT_Vicuna_unfiltered), 8 Zipf clients, Poisson 30 req/s on the A100 preset
(as benchmarks/paper_table.py).  Prints, per workload: whether Equinox's bound held
(schedulers/equinox_bound.py), the throughput and mean-TTFT ratios to VTC, and three Jain
indices the audit reports: service rate (``fairness.jain``), per-client mean TTFT
(``jain_ttft``) and per-client engine-seconds per weight (``jain_resource``).

    python benchmarks/equinox_vs_vtc.py [--data DIR] [--knob overcommit=0.25 ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.replay import replay  # noqa: E402
from reports.audit import audit  # noqa: E402
from schedulers.equinox import EquinoxKnobs  # noqa: E402
from schedulers.equinox_bound import check_run  # noqa: E402
from traces import load_workload  # noqa: E402


def figures(summary: dict) -> dict:
    """Throughput, mean TTFT and the three Jain figures of one run, as the audit reports them."""
    fair = summary["fairness"]
    return {
        "throughput": summary["throughput"]["tokens_per_s"],
        "ttft": summary["latency"]["ttft"]["mean"],
        "jain": fair["jain"],
        "jain_ttft": fair["jain_ttft"],
        "jain_resource": fair["jain_resource"],
    }


def knob(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    return name, float(value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--knob",
        type=knob,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an Equinox knob other than its default (repeatable)",
    )
    args = parser.parse_args()
    knobs = EquinoxKnobs(**dict(args.knob))
    sharegpt = args.data / "sharegpt/ShareGPT_V3_unfiltered_cleaned_split.first2000.json"
    cases = {"lmsys": (load_workload("lmsys"), "vtc-a10g-llama2-7b")}
    if sharegpt.exists():
        table = load_workload(sharegpt, limit=1000, clients=8, client_dist="zipf", rate=30.0, seed=42)
        cases["sharegpt"] = (table, "a100-llama2-7b")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (table, preset) in cases.items():
            runs = replay(
                table, ["fcfs", "vtc", "equinox"], Path(tmp) / name, workload_name=name, preset=preset, equinox=knobs
            )
            got = {r["name"]: figures(r) for r in audit(runs).runs}
            bound = check_run(runs[2])
            e, v = got["equinox"], got["vtc"]
            print(f"{name} ({preset}): bound held {bound['held']} {bound['pair_difference']} <= {bound['bound']}")
            print(f"  throughput x{e['throughput'] / v['throughput']:.3f}  mean TTFT x{e['ttft'] / v['ttft']:.3f}")
            for key in ("jain", "jain_ttft", "jain_resource"):
                row = "  ".join(f"{s} {got[s][key]:.4f}" for s in ("fcfs", "vtc", "equinox"))
                print(f"  {key:14s} {row}  (equinox / vtc {e[key] / v[key] - 1:+.1%})")


if __name__ == "__main__":
    main()
