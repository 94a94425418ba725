"""Cost of a scheduling decision as the number of tenants grows.

For 10, 1,000 and 100,000 tenants with 100,000 waiting requests spread over them, times one
admission decision (``select`` + ``admit``, plus the arrival that keeps the queue full) and one
engine step's bookkeeping for a 256-request batch, for VTC and Equinox: ``on_tokens`` and
``on_step`` with the batch built from Request objects (``engine.feedback``'s ``Tokens.of`` and
``Step.of``, as the vLLM adapter builds it) and from arrays (``from_arrays``, as the simulator
builds it).  Prints microseconds and the ratio to the 10-tenant case measured in the
same run: flat or logarithmic growth is the goal.  As in ``Simulator.run``, the garbage
collector's view of the heap is frozen once the queue is filled.

``equinox+mope`` is Equinox with a MoPE predictor session (``lengths="predictor"``), its bundle
trained at start (a few seconds) on a short replay of a generated workload, in a temporary
directory.  The session takes each request's features at arrival and predicts output lengths in
batches; inside the timed loop every arriving request is predicted, in batches of
``--mope-batch`` arrivals (default 64: a step that admits 64 requests), so a decision's time
includes one request's share of a batch prediction.  The requests carry no prompt text (as
VTC's synthetic workloads): hashing a prompt's words at arrival is not included.

    python benchmarks/scheduler_cost.py [--decisions 5000] [--mope-batch 64]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.feedback import Step, Tokens  # noqa: E402
from engine.replay import replay  # noqa: E402
from predictors import load_bundle, train  # noqa: E402
from schedulers import EquinoxKnobs, Policy, make_policy  # noqa: E402
from traces.request import Request  # noqa: E402
from traces.schema import make_table  # noqa: E402

WAITING = 100_000
BATCH = 256
PRESET = "a100-llama2-7b"


def mope_bundle(tmp: Path):
    """A MoPE bundle trained on a 600-request replay of a generated workload (three prompt-length
    bands with their own reply lengths, a few words of prompt text) under VTC."""
    rng = np.random.default_rng(0)
    n = 600
    band = rng.integers(0, 3, n)
    prompt = np.choose(band, [rng.integers(10, 40, n), rng.integers(100, 200, n), rng.integers(300, 600, n)])
    listed = rng.random(n) < 0.5
    vocab = np.array([f"w{i}" for i in range(40)])
    texts = [" ".join(rng.choice(vocab, 6)) + (" list" if x else "") for x in listed]
    output = np.where(band == 1, 100, np.where(listed == (band == 0), 300, 30)) * rng.uniform(0.9, 1.1, n)
    clients = rng.choice(["a", "b", "c", "d"], n)
    table = make_table(clients, np.cumsum(rng.exponential(1 / 20, n)), prompt, output.astype(int), prompt=texts)
    (run,) = replay(table, ["vtc"], tmp / "runs", preset=PRESET)
    train([run], tmp / "bundle", holdout=0.2, seed=42)
    return load_bundle(tmp / "bundle", preset=PRESET)


def filled(spec: str, tenants: int, seed: int = 0, predictor=None):
    rnd = random.Random(seed)
    policy = make_policy(spec, equinox=EquinoxKnobs(adaptive_budget=False), predictor=predictor)
    for i in range(WAITING):
        policy.on_arrival(Request(i, f"t{i % tenants}", 0.0, rnd.randint(10, 500), rnd.randint(10, 500)), 0.0)
    return policy, rnd


def time_decisions(spec: str, tenants: int, decisions: int, bundle=None, mope_batch: int = 64):
    session = bundle.session() if bundle is not None else None
    policy, rnd = filled(spec, tenants, predictor=session)
    gc.collect()
    gc.freeze()  # as Simulator.run: full collections skip the objects alive at the start
    fits = lambda r: True  # noqa: E731
    running = []
    next_id = WAITING
    every = mope_batch if session is not None else decisions + 1
    for warm in (True, False):
        start = time.perf_counter()
        for d in range(1, decisions + 1):
            req = policy.select(fits)
            policy.admit(req, 1.0, False)
            running.append(req)
            policy.on_arrival(Request(next_id, req.client, 1.0, rnd.randint(10, 500), rnd.randint(10, 500)), 1.0)
            next_id += 1
            if d % every == 0:
                session.predict_arrived()  # the arrivals' output lengths, in one batch
        if session is not None:
            session.predict_arrived()
        per_decision = (time.perf_counter() - start) / decisions
    batch = running[-BATCH:]
    for r in batch:
        r.decoding = True
    steps = 200
    start = time.perf_counter()
    for step in range(steps):
        for r in batch:
            r.generated += 1
        policy.on_tokens(Tokens.of(batch), 1)
        policy.on_step(2.0 + step * 0.02, 0.02, Step.of([(r, 1) for r in batch]))
    per_step = (time.perf_counter() - start) / steps
    slots = np.array([r.slot for r in batch], dtype=np.int64)
    weights = np.array([r.weight for r in batch])
    ones = np.ones(len(batch), dtype=np.int64)
    generated = np.array([r.generated for r in batch], dtype=np.int64)
    start = time.perf_counter()
    for step in range(steps):
        generated += 1
        policy.on_tokens(Tokens.from_arrays(slots, generated, weights), 1)
        if type(policy).on_step is not Policy.on_step:
            policy.on_step(6.0 + step * 0.02, 0.02, Step.from_arrays(slots, ones))
    per_array_step = (time.perf_counter() - start) / steps
    gc.unfreeze()
    return per_decision * 1e6, per_step * 1e6, per_array_step * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--mope-batch", type=int, default=64, help="arrivals per MoPE batch prediction (default 64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        bundle = mope_bundle(Path(tmp))
        trained = time.perf_counter() - start
    print(f"{WAITING:,} waiting requests; {BATCH}-request batches; {args.decisions:,} decisions each; "
          f"MoPE bundle trained in {trained:.1f} s, predictions in batches of {args.mope_batch}")  # fmt: skip
    print(f"{'scheduler':>12} {'tenants':>8} {'us/decision':>12} {'x 10':>6} {'us/step (requests)':>19} {'x 10':>6} "
          f"{'us/step (arrays)':>17} {'x 10':>6}")  # fmt: skip
    for spec, mope in (("vtc", None), ("equinox", None), ("equinox", bundle)):
        base = None
        for tenants in (10, 1_000, 100_000):
            times = time_decisions(spec, tenants, args.decisions, mope, args.mope_batch)
            base = base or times
            x = [t / b for t, b in zip(times, base)]
            name = spec + ("+mope" if mope else "")
            print(f"{name:>12} {tenants:>8,} {times[0]:>12.1f} {x[0]:>6.2f} {times[1]:>19.0f} {x[1]:>6.2f} "
                  f"{times[2]:>17.0f} {x[2]:>6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
