"""Prediction latency of MoPE sessions: microseconds per request at batch 1, 64 and 1,024.

Usage: ``python benchmarks/predictor_latency.py [--bundle DIR]``.  Without a bundle it
replays ShareGPT (real prompt text; ``../shared/data/sharegpt``) under VTC and trains one in
a temporary directory.  The requests are that workload's, with their logged engine state.

Two paths per batch size, for MoPE and for the single model of the same family:

* ``warm``: the scheduler's steady state, predicting requests it has seen before (prompt
  features cached; the client history is read afresh every call);
* ``cold``: first sight of every request, hashing its prompt text.

Each number is the best of 5 repeats of the mean over enough calls for ~0.2 s.  The
target is under 20 us per request at batch 64 (warm).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from engine.replay import replay  # noqa: E402
from predictors import load_bundle, train  # noqa: E402
from traces import load_workload  # noqa: E402
from traces.request import Request  # noqa: E402

SHAREGPT = next(
    (
        d / "shared/data/sharegpt/ShareGPT_V3_unfiltered_cleaned_split.first2000.json"
        for d in (ROOT.parent, ROOT.parents[1])
        if (d / "shared/data/sharegpt").is_dir()
    ),
    ROOT.parent / "shared/data/sharegpt/ShareGPT_V3_unfiltered_cleaned_split.first2000.json",
)
PRESET = "a100-llama2-7b"
BATCHES = (1, 64, 1024)
REPEATS = 5


def logged_requests(run_dir: Path) -> list[Request]:
    """The run's requests as the scheduler sees them, engine state at arrival included."""
    reqs = []
    for r in pd.read_parquet(run_dir / "requests.parquet").itertuples():
        req = Request(r.request_id, r.client_id, r.arrival_s, r.prompt_tokens, r.output_tokens, r.weight, r.prompt)
        req.arrival_state = (
            r.waiting_at_arrival,
            r.waiting_tokens_at_arrival,
            r.running_at_arrival,
            r.kv_used_at_arrival,
        )
        reqs.append(req)
    return reqs


def per_request_us(bundle, model: str, reqs: list[Request], batch: int, cold: bool) -> float:
    batches = [reqs[i : i + batch] for i in range(0, len(reqs) - batch + 1, batch)]
    calls = max(1, min(len(batches), int(2e5 / batch)))
    best = float("inf")
    for _ in range(REPEATS):
        sessions = [bundle.session(model) for _ in range(calls)] if cold else [bundle.session(model)] * calls
        if not cold:
            for b in batches[:calls]:
                sessions[0].predict(b)  # first sight, outside the clock
        start = time.perf_counter()
        for session, b in zip(sessions, batches):
            session.predict(b)
        best = min(best, (time.perf_counter() - start) / (calls * batch))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a trained bundle (default: train one on ShareGPT)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = load_workload(str(SHAREGPT), clients=8, rate=2, seed=42)
        (run,) = replay(table, ["vtc"], Path(tmp) / "runs", preset=PRESET)
        bundle_dir = args.bundle or Path(tmp) / "bundle"
        if args.bundle is None:
            train([run], bundle_dir)
        bundle = load_bundle(bundle_dir, preset=PRESET)
        reqs = logged_requests(run)
    print(f"{len(reqs)} ShareGPT requests, bundle {bundle_dir if args.bundle else '(trained on them)'}")
    print(f"{'path':<5} {'batch':>5} {'MoPE us/req':>12} {'single us/req':>14} {'MoPE/single':>12}")
    for cold in (False, True):
        for batch in BATCHES:
            mope = per_request_us(bundle, "mope", reqs, batch, cold)
            single = per_request_us(bundle, "single", reqs, batch, cold)
            path = "cold" if cold else "warm"
            print(f"{path:<5} {batch:>5} {mope:>12.2f} {single:>14.2f} {mope / single:>12.2f}")
    session = bundle.session()
    calls = 20_000
    start = time.perf_counter()
    for i in range(calls):
        session.step_time(i % 512, 32, 32, 0.25)
    print(f"step_time (one candidate batch): {(time.perf_counter() - start) / calls * 1e6:.2f} us")


if __name__ == "__main__":
    main()
