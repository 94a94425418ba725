"""DLPM on its own ground: FCFS, VTC, DLPM and Equinox on a prefix-heavy workload, one engine, one run.

The workload: ShareGPT conversations 0-1,999 (ShareGPT_V3_unfiltered_cleaned_split.json from
Hugging Face anon8231489123/ShareGPT_Vicuna_unfiltered), every turn (a turn's prompt holds the
whole history), 8 clients, Poisson conversation starts; 4 of the clients share 2 synthetic
1,024-token system prompts (traces/prefix_workloads.py).  Every request carries
``prefix_hashes`` (512-token blocks), so a simulator with a prefix cache serves each turn's
history and each shared system prompt from cache.

Prints, per scheduler: throughput, the prefix hit rate (prompt tokens served from cache, from
``cached_prompt_tokens`` in requests.parquet; "-" when the engine has no prefix cache), the max
pair service difference against the VTC bound ``2 max(w_p L, w_q M)`` and, for DLPM, against
its own ``2 (Q + w_p L + w_q M)`` (docs/DLPM.md); then DLPM/VTC and Equinox/DLPM, Equinox/VTC ratios.

    python benchmarks/dlpm_prefix.py [--data ../shared/data] [--rate 4] [--quantum 2048] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from engine.replay import replay  # noqa: E402
from reports.audit import audit  # noqa: E402
from schedulers import run_name  # noqa: E402
from traces import load_workload  # noqa: E402
from traces.prefix_workloads import parse_system_prompts, prefix_reuse, with_prefix_hashes  # noqa: E402

PRESET = "a100-llama2-7b"
SEED = 42
SHAREGPT = "sharegpt/ShareGPT_V3_unfiltered_cleaned_split.first2000.json"  # conversations 0-1,999


def workload(data: Path, rate: float, clients: int, system_prompts: str, quick: bool):
    table = load_workload(
        data / SHAREGPT, turns="all", clients=clients, rate=rate, seed=SEED, limit=600 if quick else None
    )
    return with_prefix_hashes(table, system_prompts=parse_system_prompts(system_prompts) if system_prompts else None)


def hit_rate(run: Path) -> tuple[float | None, dict]:
    """Prompt tokens served from the prefix cache over prompt tokens, overall and per client (finished requests)."""
    req = pq.read_table(run / "requests.parquet").to_pandas()
    if "cached_prompt_tokens" not in req.columns:
        return None, {}
    done = req[req.status == "finished"]
    per = done.groupby("client_id").apply(lambda g: g.cached_prompt_tokens.sum() / max(1, g.prompt_tokens.sum()))
    return float(done.cached_prompt_tokens.sum() / max(1, done.prompt_tokens.sum())), per.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    parser.add_argument("--preset", default=PRESET)
    parser.add_argument("--rate", type=float, default=4.0, help="conversation starts per second")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--system-prompts", default="4:2:1024", help="CLIENTS:PROMPTS:TOKENS ('' for none)")
    parser.add_argument("--quantum", type=float, default=2048.0, help="DLPM's quantum Q")
    parser.add_argument("--quick", action="store_true", help="the first 600 requests (a smoke test)")
    args = parser.parse_args()
    if not (args.data / SHAREGPT).is_file():
        sys.exit(f"{args.data / SHAREGPT}: not found (ShareGPT_V3_unfiltered_cleaned_split.json, first 2,000)")
    started = time.perf_counter()
    table = workload(args.data, args.rate, args.clients, args.system_prompts, args.quick)
    reuse = prefix_reuse(table)
    schedulers = ["fcfs", "vtc", f"dlpm:{args.quantum:g}", "equinox"]
    dlpm = run_name(schedulers[2])  # the run's name: dlpm-2048
    print(
        f"workload: {table.num_rows:,} requests, {reuse['prompt_tokens']:,} prompt tokens; reusable from an "
        f"unbounded cache: {reuse['reusable_within_client']:.1%} within a client, "
        f"{reuse['reusable_across_clients']:.2%} first used by another client; "
        f"{reuse['in_blocks_shared_by_clients']:.1%} of prompt tokens in blocks several clients use"
    )
    with tempfile.TemporaryDirectory() as tmp:
        runs = replay(table, schedulers, Path(tmp), workload_name="sharegpt-prefix", preset=args.preset, seed=SEED)
        summaries = {s["scheduler"]: s for s in audit(runs).runs}
        hits = {run.name: hit_rate(run) for run in runs}
    rows = {}
    print(f"\npreset {args.preset}, seed {SEED}, {time.perf_counter() - started:.0f} s\n")
    print("| scheduler | tokens/s | finished | hit rate | max pair diff | VTC bound | diff/VTC bound | own bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, summary in summaries.items():
        tput = summary["throughput"]["tokens_per_s"]
        diff = summary["fairness"]["pair_service_diff_max"]
        bound = summary["bound"]["value"]
        hit, _ = hits.get(name, (None, {}))
        own = None if name == "fcfs" else bound  # FCFS has no bound; Equinox's guard: docs/EQUINOX.md
        if name.startswith("dlpm"):
            # 2 (Q + w_p L + w_q M) / w_min = 2 Q + (the VTC bound's two terms added, not maxed)
            w_p, w_q = summary["service_weights"]["w_p"], summary["service_weights"]["w_q"]
            parts = summary["bound"]
            own = 2 * (args.quantum + w_p * parts["max_prompt_tokens"] + w_q * parts["kv_capacity_tokens"])
            own /= parts.get("min_weight", 1.0)
        rows[name] = (tput, hit, diff, bound, own)
        finished = summary["requests"].get("finished")
        print(
            f"| {name} | {tput:,.0f} | {finished} | {'-' if hit is None else f'{hit:.1%}'} | {diff:,.0f} | "
            f"{bound:,.0f} | {diff / bound:.2f} | "
            + ("none |" if own is None else f"{own:,.0f} ({'held' if diff <= own else 'BROKEN'}) |")
        )
    vtc, dl, eq = rows["vtc"], rows[dlpm], rows["equinox"]

    def ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b else "-"

    print(
        f"\nthroughput: DLPM/VTC {ratio(dl[0], vtc[0])}, Equinox/DLPM {ratio(eq[0], dl[0])}, "
        f"Equinox/VTC {ratio(eq[0], vtc[0])}"
    )
    print(f"hit rate: DLPM/VTC {ratio(dl[1], vtc[1])}, Equinox/DLPM {ratio(eq[1], dl[1])}")
    for name, (_, _, diff, _, own) in rows.items():
        if own is not None and diff > own:
            print(f"{name}: pair service difference {diff:,.0f} over its bound {own:,.0f}")
    if all(r[1] is None for r in rows.values()):
        print("(no cached_prompt_tokens column: this engine has no prefix cache, so DLPM cannot use locality)")
    print(f"per-client hit rate (DLPM): {np.round(list(hits[dlpm][1].values()), 3).tolist()}")


if __name__ == "__main__":
    main()
