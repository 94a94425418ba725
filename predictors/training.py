"""Train MoPE from replay logs and score bundles on logs.

``train(run_dirs, out_dir, holdout, seed)`` reads run directories (or replay output
directories holding them), splits finished requests by conversation (a request without
``conversation_id`` is its own conversation; the same request replayed under several
schedulers stays on one side) and busy steps by row, both seeded, fits on the training
side and writes a bundle whose manifest carries the held-out metrics.
``evaluate(bundle_dir, run_dirs)`` scores a saved bundle on other logs.

Per target the report gives, for MoPE, the single model and the moving average, the
mean absolute error and the 50th/90th/99th percentiles of the absolute error.  The
moving average is VTC-predict's rule (``avg = (avg * 4 + x) / 5``) applied to the target:
per client over its requests finished before the request arrived, per run over the
preceding busy steps; with no history yet it predicts the training mean.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.linear_model import Ridge

from engine.results import REQUESTS_FILE, RUN_FILE, STEPS_FILE
from predictors.bundle import (
    EXPERTS,
    FLOORS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    REQUEST_TARGETS,
    STEP_TARGETS,
    Bundle,
    array_shapes,
    load_bundle,
    route,
    save_bundle,
)
from predictors.features import (
    REQUEST_FEATURES,
    STATE_FEATURES,
    STEP_FEATURES,
    TEXT_BUCKETS,
    bag_of_words,
    cumulative_mean,
    request_matrix,
    running_by_client,
    step_matrix,
    text_buckets,
    text_score,
)
from predictors.forest import DEPTH, LEARNING_RATE, TREES, Forest, fit_trees
from schedulers.vtc_predict import WINDOW
from traces.errors import InputError

TEXT_ALPHA = 2.0  # ridge penalty of the text model
TEXT_FOLDS = 5  # the trees learn from out-of-fold text scores
MIN_EXPERT_ROWS = 30  # an expert with fewer training rows (for any target) is the single model
MAX_STEP_ROWS = 20_000  # steps sampled (seeded) from the training side
MODELS = ("mope", "single", "moving-average")
DERIVED = "tokens_per_s"  # throughput, scored from the step-time predictions

REQUEST_COLUMNS = (
    "request_id",
    "client_id",
    "arrival_s",
    "prompt_tokens",
    "conversation_id",
    "prompt",
    "status",
    "first_token_s",
    "finish_s",
    "generated_tokens",
    *STATE_FEATURES,
)
STEP_COLUMNS = (
    "busy",
    "duration_s",
    "prefill_tokens",
    "decode_tokens",
    "running",
    "kv_used_tokens",
    "kv_capacity_tokens",
    "flops",
)


@dataclass(frozen=True)
class Logs:
    """Finished requests and busy steps of one or more runs, with targets and baselines."""

    requests: pd.DataFrame
    steps: pd.DataFrame
    runs: list[dict]
    engine: dict
    fingerprint: str


@dataclass(frozen=True)
class Report:
    """``metrics[target][model]`` = {n, mae, p50, p90, p99}; ``rows`` counts what was used."""

    bundle: Path
    metrics: dict
    rows: dict


# -- reading logs --------------------------------------------------------------------------


def _run_dirs(path: Path) -> list[Path]:
    if (path / RUN_FILE).is_file():
        return [path]
    subs = sorted(d for d in path.iterdir() if (d / RUN_FILE).is_file()) if path.is_dir() else []
    if not subs:
        raise InputError(
            f"expected a run directory ({RUN_FILE}, {REQUESTS_FILE}, {STEPS_FILE}) or a directory of them",
            source=str(path),
        )
    return subs


def _read(path: Path, columns) -> tuple[pd.DataFrame, bytes]:
    if not path.is_file():
        raise InputError("missing file", source=str(path))
    data = path.read_bytes()
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"expected a Parquet file: {exc}", source=str(path)) from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}; is this a replay log?", source=str(path))
    return table.select(list(columns)).to_pandas(), data


def _config(path: Path) -> dict:
    """run.json, which must name the engine preset and its peak FLOP/s."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"expected a JSON object: {exc}", source=str(path)) from None
    engine = config.get("engine") if isinstance(config, dict) else None
    if not (isinstance(engine, dict) and isinstance(engine.get("preset"), str) and engine.get("peak_flops")):
        raise InputError("expected engine.preset and engine.peak_flops", source=str(path))
    return config


def ema(values: np.ndarray) -> np.ndarray:
    """VTC-predict's moving average after each value (NaN values are skipped)."""
    out = np.empty(len(values))
    average = np.nan
    for i, x in enumerate(values.tolist()):
        if x == x:
            average = x if average != average else (average * (WINDOW - 1) + x) / WINDOW
        out[i] = average
    return out


def _run_requests(frame: pd.DataFrame, run: int, workload: str) -> pd.DataFrame:
    req = frame[frame["status"] == "finished"].reset_index(drop=True)
    generated = req["generated_tokens"].to_numpy(np.float64)
    arrival, first, finish = (req[c].to_numpy(np.float64) for c in ("arrival_s", "first_token_s", "finish_s"))
    out = pd.DataFrame({c: req[c] for c in ("client_id", "prompt_tokens", *STATE_FEATURES)})
    out["output_tokens"] = generated
    out["ttft_s"] = first - arrival
    with np.errstate(divide="ignore", invalid="ignore"):
        out["tpot_s"] = np.where(generated > 1, (finish - first) / (generated - 1), np.nan)
    out["e2e_s"] = finish - arrival
    client = req["client_id"].to_numpy()
    out["client_mean"], out["client_finished"] = running_by_client(client, arrival, finish, generated, cumulative_mean)
    for target in REQUEST_TARGETS:
        out[f"ma_{target}"] = running_by_client(client, arrival, finish, out[target].to_numpy(), ema)[0]
    own = f"{workload}:" + req["request_id"].astype(str)
    out["group"] = req["conversation_id"].where(req["conversation_id"].notna(), own)
    out["buckets"] = [text_buckets(t if isinstance(t, str) else None) for t in req["prompt"]]
    out["run"] = run
    return out


def _run_steps(frame: pd.DataFrame, peak_flops: float, run: int) -> pd.DataFrame:
    steps = frame[frame["busy"]].reset_index(drop=True)
    out = steps[["prefill_tokens", "decode_tokens", "running", "kv_used_tokens", "kv_capacity_tokens"]].copy()
    out["step_s"] = steps["duration_s"].to_numpy(np.float64)
    out["utilization"] = steps["flops"].to_numpy(np.float64) / (out["step_s"] * peak_flops)
    for target in STEP_TARGETS:
        out[f"ma_{target}"] = np.concatenate(([np.nan], ema(out[target].to_numpy())[:-1]))
    out["run"] = run
    return out


def load_logs(paths) -> Logs:
    """Read every run under ``paths``; all must come from one engine preset."""
    dirs = list(dict.fromkeys(d.resolve() for p in paths for d in _run_dirs(Path(p))))
    if not dirs:
        raise InputError("no run directories given", source="runs")
    requests, steps, runs, engines = [], [], [], []
    digest = hashlib.sha256()
    for i, d in enumerate(dirs):
        config = _config(d / RUN_FILE)
        workload = config.get("workload") if isinstance(config.get("workload"), dict) else {}
        req_frame, req_bytes = _read(d / REQUESTS_FILE, REQUEST_COLUMNS)
        step_frame, step_bytes = _read(d / STEPS_FILE, STEP_COLUMNS)
        digest.update(hashlib.sha256(req_bytes).digest() + hashlib.sha256(step_bytes).digest())
        requests.append(_run_requests(req_frame, i, str(workload.get("fingerprint", d.name))))
        steps.append(_run_steps(step_frame, float(config["engine"]["peak_flops"]), i))
        engines.append(config["engine"])
        runs.append(
            {
                "name": d.name,
                "scheduler": config.get("scheduler"),
                "workload": workload.get("name"),
                "requests": len(requests[-1]),
                "steps": len(steps[-1]),
            }
        )
    presets = sorted({e["preset"] for e in engines})
    if len(presets) > 1:
        raise InputError(
            f"runs come from several engine presets ({', '.join(presets)}); train one bundle per preset", source="runs"
        )
    engine = {k: engines[0].get(k) for k in ("preset", "peak_flops", "kv_capacity_tokens")}
    return Logs(
        pd.concat(requests, ignore_index=True),
        pd.concat(steps, ignore_index=True),
        runs,
        engine,
        digest.hexdigest()[:16],
    )


# -- fitting -------------------------------------------------------------------------------


def _text_model(bag, y_log: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Ridge weights and bias on the bag of words, and out-of-fold scores of the training rows."""
    folds = np.arange(bag.shape[0]) % TEXT_FOLDS
    oof = np.empty(bag.shape[0])
    for fold in range(TEXT_FOLDS):
        ridge = Ridge(alpha=TEXT_ALPHA).fit(bag[folds != fold], y_log[folds != fold])
        oof[folds == fold] = ridge.predict(bag[folds == fold])
    ridge = Ridge(alpha=TEXT_ALPHA).fit(bag, y_log)
    return ridge.coef_.astype(np.float64), float(ridge.intercept_), oof


def _fit_requests(req: pd.DataFrame, prior: float, seed: int) -> dict[str, np.ndarray]:
    buckets = list(req["buckets"])
    weights, bias, oof = _text_model(bag_of_words(buckets), np.log1p(req["output_tokens"].to_numpy()))
    X = request_matrix(req, prior, np.array([len(b) for b in buckets]), oof)
    out = _fit_targets(X, req, REQUEST_TARGETS, seed)
    return {**out, "text_weights": weights[None], "text_bias": np.array([bias])}


def _fit_targets(X: np.ndarray, frame: pd.DataFrame, targets, seed: int) -> dict[str, np.ndarray]:
    fits = []
    for target in targets:
        y = frame[target].to_numpy(np.float64)
        ok = np.isfinite(y)
        fits.append(fit_trees(X[ok], y[ok], seed))
    return {name: np.stack([f[name] for f in fits])[None] for name in fits[0]}


def _enough(frame: pd.DataFrame, targets) -> bool:
    return all(np.isfinite(frame[t].to_numpy(np.float64)).sum() >= MIN_EXPERT_ROWS for t in targets)


def _fit_group(frame, bucket_of, fit, targets, what: str) -> tuple[dict, dict, list[int], list[bool]]:
    """The single model, and one model per router bucket (the single one where a bucket is too small)."""
    if not _enough(frame, targets):
        raise InputError(
            f"too few {what} to train on ({len(frame)} in the training split); need {MIN_EXPERT_ROWS} per target",
            source="runs",
        )
    single = fit(frame)
    bucket = bucket_of(frame)
    experts, rows, own = [], [], []
    for e in range(EXPERTS):
        part = frame[bucket == e]
        rows.append(len(part))
        own.append(_enough(part, targets))
        experts.append(fit(part) if own[-1] else single)
    mope = {name: np.concatenate([x[name] for x in experts]) for name in single}
    return single, mope, rows, own


# -- scoring -------------------------------------------------------------------------------


def predict_requests(bundle: Bundle, model: str, req: pd.DataFrame) -> np.ndarray:
    """(n, 4) predictions for logged requests, as ``Session.predict`` makes them."""
    arrays = bundle.model_arrays("request", model)
    expert = np.zeros(len(req), dtype=np.intp)
    if model == "mope":
        expert = route(bundle.manifest["router"]["request"]["thresholds"], req["prompt_tokens"].to_numpy())
    weights, bias = arrays["text_weights"], arrays["text_bias"]
    buckets = list(req["buckets"])
    score = np.array([text_score(b, weights[e], float(bias[e])) for b, e in zip(buckets, expert)])
    X = request_matrix(req, bundle.manifest["priors"]["output_tokens"], np.array([len(b) for b in buckets]), score)
    floors = np.array([FLOORS.get(t, 0.0) for t in REQUEST_TARGETS])
    return np.maximum(Forest(arrays).predict(X, expert), floors)


def predict_steps(bundle: Bundle, model: str, steps: pd.DataFrame) -> np.ndarray:
    """(n, 2) predictions for logged steps, as ``Session.step`` makes them."""
    arrays = bundle.model_arrays("step", model)
    X = step_matrix(steps)
    expert = np.zeros(len(X), dtype=np.intp)
    if model == "mope":
        expert = route(bundle.manifest["router"]["step"]["thresholds"], X[:, 0])
    return np.maximum(Forest(arrays).predict(X, expert), 0.0)


def _errors(predicted: np.ndarray, actual: np.ndarray) -> dict:
    ok = np.isfinite(actual)
    error = np.abs(predicted[ok] - actual[ok])
    if not len(error):
        return {"n": 0, "mae": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(error, [50, 90, 99])
    return {"n": int(len(error)), "mae": float(error.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def score(bundle: Bundle, requests: pd.DataFrame, steps: pd.DataFrame) -> dict:
    """The metrics table of ``bundle`` on logged requests and steps."""
    priors = bundle.manifest["priors"]
    metrics = {t: {} for t in (*REQUEST_TARGETS, *STEP_TARGETS, DERIVED)}
    tokens = (steps["prefill_tokens"] + steps["decode_tokens"]).to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        actual_tps = tokens / steps["step_s"].to_numpy()
        for model in MODELS:
            if model == "moving-average":
                req_pred = np.column_stack([requests[f"ma_{t}"].fillna(priors[t]) for t in REQUEST_TARGETS])
                step_pred = np.column_stack([steps[f"ma_{t}"].fillna(priors[t]) for t in STEP_TARGETS])
            else:
                req_pred, step_pred = predict_requests(bundle, model, requests), predict_steps(bundle, model, steps)
            for k, t in enumerate(REQUEST_TARGETS):
                metrics[t][model] = _errors(req_pred[:, k], requests[t].to_numpy(np.float64))
            for k, t in enumerate(STEP_TARGETS):
                metrics[t][model] = _errors(step_pred[:, k], steps[t].to_numpy(np.float64))
            metrics[DERIVED][model] = _errors(np.where(step_pred[:, 0] > 0, tokens / step_pred[:, 0], 0.0), actual_tps)
    return metrics


# -- the two entry points ------------------------------------------------------------------


def split(logs: Logs, holdout: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Held-out masks: requests by conversation (``group``), steps by row."""
    groups = np.unique(logs.requests["group"].to_numpy(dtype=str))
    held_groups = groups[rng.random(len(groups)) < holdout]
    return logs.requests["group"].isin(held_groups).to_numpy(), rng.random(len(logs.steps)) < holdout


def train(run_dirs, out_dir, holdout: float = 0.2, seed: int = 42) -> Report:
    """Train MoPE and the single baseline on replay logs, score them on a held-out split, save a bundle."""
    if not 0 < holdout < 1:
        raise InputError(f"must be a fraction between 0 and 1 (exclusive), got {holdout}", source="--holdout")
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        raise InputError("exists and is not a predictor bundle; refusing to replace it", source=str(out_dir))
    logs = load_logs(run_dirs)
    rng = np.random.default_rng(seed)
    held, step_held = split(logs, holdout, rng)
    train_req, test_req = logs.requests[~held], logs.requests[held]
    train_steps, test_steps = logs.steps[~step_held], logs.steps[step_held]
    if len(train_steps) > MAX_STEP_ROWS:
        train_steps = train_steps.iloc[np.sort(rng.choice(len(train_steps), MAX_STEP_ROWS, replace=False))]
    if test_req.empty or test_steps.empty:
        raise InputError("the held-out split is empty; give more requests or a larger --holdout", source="runs")

    priors = {t: float(np.nanmean(train_req[t])) for t in REQUEST_TARGETS}
    priors.update({t: float(np.nanmean(train_steps[t])) for t in STEP_TARGETS})
    request_cut = np.quantile(train_req["prompt_tokens"], [1 / 3, 2 / 3]).tolist()
    prefills = train_steps["prefill_tokens"].to_numpy()
    step_cut = [0.0, float(np.median(prefills[prefills > 0])) if (prefills > 0).any() else 0.0]

    single_r, mope_r, rows_r, own_r = _fit_group(
        train_req,
        lambda f: route(request_cut, f["prompt_tokens"].to_numpy()),
        lambda f: _fit_requests(f, priors["output_tokens"], seed),
        REQUEST_TARGETS,
        "finished requests",
    )
    single_s, mope_s, rows_s, own_s = _fit_group(
        train_steps,
        lambda f: route(step_cut, f["prefill_tokens"].to_numpy()),
        lambda f: _fit_targets(step_matrix(f), f, STEP_TARGETS, seed),
        STEP_TARGETS,
        "busy steps",
    )
    arrays = {}
    for group, parts in (("request", (mope_r, single_r)), ("step", (mope_s, single_s))):
        for model, part in zip(("mope", "single"), parts):
            for key, (_, dtype) in array_shapes(group, model, TREES, DEPTH).items():
                arrays[key] = np.asarray(part[key.rsplit(".", 1)[1]], dtype=dtype)

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "targets": {"request": list(REQUEST_TARGETS), "step": list(STEP_TARGETS)},
        "features": {"request": list(REQUEST_FEATURES), "step": list(STEP_FEATURES)},
        "router": {
            "rule": "expert i takes x <= thresholds[i], the first such i; the last expert takes the rest",
            "request": {
                "feature": "prompt_tokens",
                "thresholds": request_cut,
                "chosen_by": "terciles of the training split's prompt_tokens",
                "training_rows": rows_r,
                "own_model": own_r,
            },
            "step": {
                "feature": "prefill_tokens",
                "thresholds": step_cut,
                "chosen_by": "0 (pure decode), then the median of the training split's non-zero prefills",
                "training_rows": rows_s,
                "own_model": own_s,
            },
        },
        "model": {
            "family": "gradient-boosted regression trees, Huber loss (scikit-learn), exported to arrays",
            "trees": TREES,
            "depth": DEPTH,
            "learning_rate": LEARNING_RATE,
            "text": {"buckets": TEXT_BUCKETS, "ridge_alpha": TEXT_ALPHA, "folds": TEXT_FOLDS},
            "min_expert_rows": MIN_EXPERT_ROWS,
        },
        "priors": priors,
        "engine": logs.engine,
        "training": {
            "runs": logs.runs,
            "fingerprint": logs.fingerprint,
            "holdout": holdout,
            "seed": seed,
            "rows": {
                "train_requests": len(train_req),
                "holdout_requests": len(test_req),
                "train_steps": len(train_steps),
                "holdout_steps": len(test_steps),
            },
            "versions": {d: metadata.version(d) for d in ("numpy", "scikit-learn")},
        },
    }
    metrics = score(Bundle(out_dir, manifest, arrays), test_req, test_steps)
    save_bundle(out_dir, {**manifest, "metrics": metrics}, arrays)
    return Report(out_dir, metrics, manifest["training"]["rows"])


def evaluate(bundle_dir, run_dirs) -> Report:
    """Score a saved bundle on the finished requests and busy steps of other runs."""
    logs = load_logs(run_dirs)
    bundle = load_bundle(bundle_dir, preset=logs.engine["preset"])
    metrics = score(bundle, logs.requests, logs.steps)
    return Report(Path(bundle_dir), metrics, {"requests": len(logs.requests), "steps": len(logs.steps)})
