"""Prefix caching on vs off in the simulator: throughput, mean TTFT, hit rate, preemptions.

Two workloads, each replayed under FCFS and VTC with ``--prefix-caching`` and ``--no-prefix-caching``:

* ShareGPT multi-turn (``turns="all"``: every turn, its prompt the whole history before it) from
  conversations 0-7,999 of ShareGPT_V3_unfiltered_cleaned_split.json (Hugging Face
  anon8231489123/ShareGPT_Vicuna_unfiltered), conversation starts Poisson at ``--sharegpt-rate``,
  5 s think time; the turns of a conversation share its history (keys by conversation).
  Engine ``a100-llama2-7b`` (4,096-token context: longer histories are rejected ``too_long``).
* A Mooncake-format trace synthesised here (``timestamp`` ms, ``input_length``, ``output_length``,
  ``hash_ids`` one per 512 tokens) and read by the Mooncake loader: sessions of 1-6 turns, each
  turn's hash ids extending the previous turn's, over 40 shared system prompts of 1-8 blocks
  (Zipf-popular); sessions of 1-3 turns, each adding 2-19 blocks.  Engine ``h100-llama3.1-8b`` (131,072-token context).

    python benchmarks/prefix_cache.py [--conversations 8000] [--mooncake-requests 4000]

Prints one row per (workload, scheduler, caching) and the on/off ratios measured in this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAREGPT_DIR = next(
    (d / "shared" / "data" / "sharegpt" for d in (ROOT.parent, ROOT.parent.parent) if (d / "shared").is_dir()),
    ROOT.parent / "shared" / "data" / "sharegpt",
)
FIRST = SHAREGPT_DIR / "ShareGPT_V3_unfiltered_cleaned_split.first2000.json"
REST = SHAREGPT_DIR / "ShareGPT_V3_unfiltered_cleaned_split.2000-9999.json"


def sharegpt(conversations: int, rate: float, tmp: Path):
    """Every turn of conversations 0 .. conversations - 1 (at most 8,000: the training range)."""
    from traces import load_workload

    conversations = min(conversations, 8000)
    sources = [FIRST]
    if conversations > 2000:
        rest = json.loads(REST.read_text())[: conversations - 2000]
        sources.append(tmp / "sharegpt-2000.json")
        sources[-1].write_text(json.dumps(rest))
    elif conversations < 2000:
        part = json.loads(FIRST.read_text())[:conversations]
        sources = [tmp / "sharegpt-0.json"]
        sources[0].write_text(json.dumps(part))
    return load_workload(sources, turns="all", rate=rate, clients=20, seed=0)


def mooncake_trace(n: int, rate: float, path: Path, seed: int = 0) -> Path:
    """A Mooncake-format JSONL trace of ``n`` requests (see the module docstring)."""
    rng = np.random.default_rng(seed)
    systems = [list(range(1_000_000 * (s + 1), 1_000_000 * (s + 1) + int(rng.integers(1, 9)))) for s in range(40)]
    next_id = 1
    rows, t = [], 0.0
    while len(rows) < n:
        t += rng.exponential(1.0 / rate) * 2.0  # session starts (a session has 2 turns on average)
        history = list(systems[int(rng.zipf(1.3)) % 40])
        turn_t = t
        for _ in range(int(rng.integers(1, 4))):
            new = int(rng.integers(2, 20))  # new 512-token blocks this turn (the user's message, documents)
            history = history + list(range(next_id, next_id + new))
            next_id += new
            length = len(history) * 512 - int(rng.integers(0, 512))
            output = int(np.clip(rng.lognormal(5.3, 0.8), 4, 2000))
            rows.append({"timestamp": int(turn_t * 1000), "input_length": length, "output_length": output,
                         "hash_ids": list(history)})  # fmt: skip
            turn_t += 20.0 + rng.exponential(30.0)
            history = history + list(range(next_id, next_id + output // 512))  # the answer joins the history
            next_id += output // 512
    rows.sort(key=lambda r: r["timestamp"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return path


def measure(table, preset: str, scheduler: str, caching: bool, out: Path) -> dict:
    import pyarrow.parquet as pq

    from engine.replay import replay

    (run,) = replay(table, [scheduler], out, preset=preset, prefix_caching=caching)
    req = pq.read_table(run / "requests.parquet").to_pandas()
    summary = json.loads((run / "run.json").read_text())["summary"]
    served = req[req.status == "finished"]
    span = served.finish_s.max() - req.arrival_s.min()
    return {
        "served": len(served),
        "rejected": summary["rejected"],
        "req_per_s": len(served) / span,
        "tok_per_s": (served.prompt_tokens.sum() + served.output_tokens.sum()) / span,
        "ttft_s": float((served.first_token_s - served.arrival_s).mean()),
        "hit": float(served.cached_prompt_tokens.sum() / served.prompt_tokens.sum()),
        "preempt_mean": float(served.preemptions.mean()),
        "preempt_max": int(served.preemptions.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=8000)
    parser.add_argument("--sharegpt-rate", type=float, default=1.0, help="conversation starts per second")
    parser.add_argument("--mooncake-requests", type=int, default=4000)
    parser.add_argument("--mooncake-rate", type=float, default=1.0, help="requests per second")
    parser.add_argument("--schedulers", default="fcfs,vtc")
    args = parser.parse_args()

    from traces import load_workload

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        workloads = []
        if FIRST.exists():
            workloads.append(
                ("sharegpt-multiturn", "a100-llama2-7b", sharegpt(args.conversations, args.sharegpt_rate, tmp))
            )
        else:
            print(f"(ShareGPT not found at {FIRST}: skipped)")
        trace = mooncake_trace(args.mooncake_requests, args.mooncake_rate, tmp / "mooncake.jsonl")
        workloads.append(("mooncake-like", "h100-llama3.1-8b", load_workload(str(trace), format="mooncake")))
        print(f"{'workload':>19} {'requests':>8} {'sched':>5} {'cache':>5} {'served':>7} {'req/s':>7} {'tok/s':>8} "
              f"{'TTFT s':>8} {'hit':>6} {'preempt':>8} {'max':>5}")  # fmt: skip
        for name, preset, table in workloads:
            for scheduler in args.schedulers.split(","):
                res = {}
                for caching in (True, False):
                    r = res[caching] = measure(table, preset, scheduler, caching, tmp / f"{name}-{caching}")
                    print(f"{name:>19} {table.num_rows:>8,} {scheduler:>5} {'on' if caching else 'off':>5} "
                          f"{r['served']:>7,} {r['req_per_s']:>7.2f} {r['tok_per_s']:>8,.0f} {r['ttft_s']:>8.3f} "
                          f"{100 * r['hit']:>5.1f}% {r['preempt_mean']:>8.3f} {r['preempt_max']:>5}",
                          flush=True)  # fmt: skip
                on, off = res[True], res[False]
                print(f"{'':>19} on/off: throughput {on['tok_per_s'] / off['tok_per_s']:.2f}x, "
                      f"mean TTFT {on['ttft_s'] / off['ttft_s']:.2f}x; rejected {on['rejected']}")  # fmt: skip


if __name__ == "__main__":
    main()
