"""MoPE accuracy on ShareGPT conversations it never saw: every baseline, every metric.

ShareGPT (``ShareGPT_V3_unfiltered_cleaned_split.json`` from Hugging Face
anon8231489123/ShareGPT_Vicuna_unfiltered, here its first 10,000 conversations in two files
under ``../shared/data/sharegpt``), every turn (``turns="all"``: a later turn's prompt counts
its history; the prompt text is the user's message), 8 uniform clients, one conversation start
per second, replayed under VTC on ``a100-llama2-7b``:

* development: conversations 0-7,999.  ``predictors.train`` holds out 20% of them by
  conversation (seed 42): half calibrate the p90, half are the validation figures;
* test: conversations 8,000-9,999, replayed separately, scored once with
  ``predictors.evaluate`` (no model or knob saw them).  An id that occurs on both sides
  (ShareGPT repeats a few) is dropped from both.

Prints Markdown tables (validation, test, the quantile factors, training and prediction
times); docs/PREDICTORS.md quotes them.  ``--ablation`` also measures, on the validation
split only, what each feature group adds to the output-length model.

Run from the repository root: ``python benchmarks/mope_accuracy.py [--ablation]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.replay import replay  # noqa: E402
from predictors import evaluate, load_bundle, train  # noqa: E402
from predictors.bundle import QUANTILES, Bundle  # noqa: E402
from predictors.text import CATEGORIES  # noqa: E402
from traces import load_workload  # noqa: E402

DATA = next(
    (d for d in (ROOT.parent / "shared/data/sharegpt", ROOT.parents[1] / "shared/data/sharegpt") if d.is_dir()),
    ROOT.parent / "shared/data/sharegpt",
)
FILES = ("ShareGPT_V3_unfiltered_cleaned_split.first2000.json", "ShareGPT_V3_unfiltered_cleaned_split.2000-9999.json")
DEV, TEST = range(0, 8000), range(8000, 10000)
PRESET = "a100-llama2-7b"
SEED = 42
UNITS = {
    "output_tokens": ("tokens", 1),
    "ttft_s": ("ms", 1e3),
    "tpot_s": ("ms", 1e3),
    "e2e_s": ("s", 1),
    "step_s": ("ms", 1e3),
    "utilization": ("MFU %", 100),
    "tokens_per_s": ("tokens/s", 1),
}
OUTPUT_MODELS = ("training-mean", "training-median", "moving-average", "single", "mope")


def split_conversations(tmp: Path, limit: int | None) -> tuple[Path, Path, dict]:
    """Write the development and test conversations to two JSON files; ids on both sides are dropped."""
    conversations = [c for name in FILES for c in json.loads((DATA / name).read_text())]
    if limit:
        conversations = conversations[:limit] + conversations[TEST.start : TEST.start + limit // 4]
        dev_ids = {c["id"] for c in conversations[:limit]}
        test_ids = {c["id"] for c in conversations[limit:]}
    else:
        dev_ids = {c["id"] for c in conversations[DEV.start : DEV.stop]}
        test_ids = {c["id"] for c in conversations[TEST.start : TEST.stop]}
    both = dev_ids & test_ids
    cut = limit if limit else DEV.stop
    dev = [c for c in conversations[:cut] if c["id"] not in both]
    test = [c for c in conversations[cut:] if c["id"] not in both]
    paths = tmp / "dev.json", tmp / "test.json"
    for path, part in zip(paths, (dev, test)):
        path.write_text(json.dumps(part))
    return *paths, {"dev": len(dev), "test": len(test), "dropped_ids_on_both_sides": len(both)}


def workload(path: Path):
    return load_workload(str(path), turns="all", clients=8, rate=1.0, seed=SEED)


def cell(value, scale=1.0, digits=4) -> str:
    return "-" if value is None else f"{value * scale:.{digits}g}"


def output_table(metrics: dict, title: str) -> None:
    m = metrics["output_tokens"]
    median = m["training-median"]["mae"]
    print(f"\n### {title}: output length (tokens)\n")
    print("| model | n | MAE | MAE / median's | p50 | p90 | p99 | Kendall tau | p90 coverage |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in OUTPUT_MODELS:
        r = m[model]
        coverage = r.get("p90_coverage")
        print(
            f"| {model} | {r['n']} | {r['mae']:.1f} | {r['mae'] / median:.3f} | {r['p50']:.0f} | {r['p90']:.0f} | "
            f"{r['p99']:.0f} | {cell(r.get('tau'), digits=3)} | "
            f"{'-' if coverage is None else f'{coverage * 100:.1f}%'} |"
        )


def other_table(metrics: dict, title: str) -> None:
    print(f"\n### {title}: latency, step time, throughput, utilization\n")
    print("| target | unit | model | n | MAE | p50 | p90 | p99 |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for target, by_model in metrics.items():
        if target == "output_tokens":
            continue
        unit, scale = UNITS[target]
        for model in ("mope", "single", "moving-average"):
            r = by_model[model]
            cells = " | ".join(cell(r[k], scale) for k in ("mae", "p50", "p90", "p99"))
            print(f"| {target} | {unit} | {model} | {r['n']} | {cells} |")


def ablation(dev_runs, seed: int) -> None:
    """Validation MAE of the output-length model as feature groups are added (single model)."""
    from predictors.features import CONVERSATION_FEATURES, REQUEST_FEATURES
    from predictors.forest import OUTPUT_DEPTH, OUTPUT_LEARNING_RATE, OUTPUT_TREES, median_booster
    from predictors.text import SIGNALS
    from predictors.training import _signal_matrix, kendall, load_logs, request_matrix, split, text_model, text_scores

    logs = load_logs(dev_runs)
    held, _ = split(logs, 0.2, np.random.default_rng(seed))
    tr, va = logs.requests[~held], logs.requests[held]
    prior = float(tr["output_tokens"].mean())
    arrays, oof = text_model(list(tr["ngrams"]), np.log1p(tr["output_tokens"].to_numpy()))
    text = Bundle(Path("."), {}, arrays)  # scores prompts as a bundle's sessions do
    Xt = request_matrix(tr, prior, _signal_matrix(tr), oof)
    Xv = request_matrix(va, prior, _signal_matrix(va), text_scores(text, list(va["ngrams"])))
    yt, yv = tr["output_tokens"].to_numpy(float), va["output_tokens"].to_numpy(float)
    median = np.abs(np.median(yt) - yv).mean()
    index = {name: i for i, name in enumerate(REQUEST_FEATURES)}
    lengths = [s for s in SIGNALS if s.startswith(("text_", "history"))]
    asks = [s for s in SIGNALS if s.startswith(("ask_", "kw_", "code", "question"))]
    language = [s for s in SIGNALS if s.startswith(("non_ascii", "script_"))]
    steps = [
        ("prompt_tokens, arrival state, client history", ["prompt_tokens", *REQUEST_FEATURES[1:7]]),
        ("+ text sizes (chars, lines, words, history tokens)", lengths),
        ("+ explicit asks and keywords", asks),
        ("+ language", language),
        ("+ previous replies of the conversation", list(CONVERSATION_FEATURES)),
        ("+ TF-IDF ridge score", ["text_score"]),
    ]
    print(f"\n### Ablation on the validation split ({len(va)} requests; single model, {OUTPUT_TREES} trees)\n")
    print("| features | MAE | MAE / median's | Kendall tau |")
    print("|---|---:|---:|---:|")
    columns: list[int] = []
    for label, names in steps:
        columns += [index[n] for n in names]
        model = median_booster(seed, OUTPUT_TREES, OUTPUT_DEPTH, OUTPUT_LEARNING_RATE).fit(Xt[:, columns], yt)
        p = model.predict(Xv[:, columns])
        mae = np.abs(p - yv).mean()
        print(f"| {label} | {mae:.1f} | {mae / median:.3f} | {kendall(p, yv):.3f} |")
    text_only = np.expm1(text_scores(text, list(va["ngrams"])))
    mae = np.abs(text_only - yv).mean()
    tau = kendall(text_only, yv)
    print(f"| TF-IDF ridge alone (exp of its log score) | {mae:.1f} | {mae / median:.3f} | {tau:.3f} |")


def prediction_latency(bundle_dir: Path, test_table) -> dict:
    """us per request of ``Session.predict`` on 64-request batches, warm (features cached) and cold."""
    from traces.request import Request

    columns = [test_table.column(c).to_pylist() for c in ("prompt_tokens", "output_tokens", "prompt", "client_id")]
    reqs = [Request(i, c, 0.0, p, o, prompt=t) for i, (p, o, t, c) in enumerate(zip(*columns))][:2048]
    bundle = load_bundle(bundle_dir)
    out = {}
    for model in ("mope", "single"):
        session = bundle.session(model)
        batches = [reqs[i : i + 64] for i in range(0, len(reqs), 64)]
        started = time.perf_counter()
        for batch in batches:
            session.predict(batch)
        cold = (time.perf_counter() - started) / len(reqs) * 1e6
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for batch in batches:
                session.predict(batch)
            best = min(best, (time.perf_counter() - started) / len(reqs) * 1e6)
        out[model] = {"warm_us": best, "cold_us": cold}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablation", action="store_true", help="also measure feature groups on validation")
    parser.add_argument("--limit", type=int, default=None, help="development conversations (a quick check)")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dev_path, test_path, counts = split_conversations(tmp, args.limit)
        dev, test = workload(dev_path), workload(test_path)
        print(f"conversations: {counts}; requests (turns): development {dev.num_rows}, test {test.num_rows}")
        t = time.perf_counter()
        dev_runs = replay(dev, ["vtc"], tmp / "dev", workload_name="sharegpt-dev", preset=PRESET)
        test_runs = replay(test, ["vtc"], tmp / "test", workload_name="sharegpt-test", preset=PRESET)
        print(f"replays: {time.perf_counter() - t:.0f} s")
        t = time.perf_counter()
        report = train(dev_runs, tmp / "bundle", holdout=0.2, seed=SEED)
        train_s = time.perf_counter() - t
        rows = report.rows
        print(
            f"training: {train_s:.1f} s on {rows['train_requests']} requests and {rows['train_steps']} steps "
            f"(calibration {rows['calibration_requests']}, validation {rows['holdout_requests']} requests)"
        )
        output_table(report.metrics, "Validation (held-out development conversations)")
        final = evaluate(tmp / "bundle", test_runs)
        output_table(final.metrics, f"Test (conversations {TEST.start:,}-{TEST.stop - 1:,}, scored once)")
        other_table(final.metrics, "Test")
        bundle = load_bundle(tmp / "bundle")
        manifest = bundle.manifest
        print("\n### Router and calibrated p90 factors (MoPE)\n")
        print("| expert (category) | training rows | own trees | p90 factor |")
        print("|---|---:|:---:|---:|")
        factors = bundle.arrays["request.mope.quantile_factor"]
        for e, name in enumerate(CATEGORIES):
            rows_e = manifest["router"]["request"]["training_rows"][e]
            own = manifest["router"]["request"]["own_model"][e]
            print(f"| {name} | {rows_e} | {'yes' if own else 'no'} | {factors[e, QUANTILES.index(0.9)]:.2f} |")
        latency = prediction_latency(tmp / "bundle", test)
        print("\n### Prediction cost, batches of 64 (us per request)\n")
        print("| model | warm | cold (first sight: text features) |")
        print("|---|---:|---:|")
        for model, r in latency.items():
            print(f"| {model} | {r['warm_us']:.1f} | {r['cold_us']:.0f} |")
        if args.ablation:
            ablation(dev_runs, SEED)
    print(f"\n(wall time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
