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
import scipy.sparse as sp
from scipy.stats import kendalltau
from sklearn.linear_model import Ridge

from engine.results import REQUESTS_FILE, RUN_FILE, STEPS_FILE
from predictors.bundle import (
    EXPERTS,
    FLOORS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    QUANTILES,
    REQUEST_TARGETS,
    STEP_TARGETS,
    Bundle,
    RequestForest,
    array_shapes,
    load_bundle,
    route,
    save_bundle,
)
from predictors.features import (
    CONVERSATION_FEATURES,
    REQUEST_FEATURES,
    STATE_FEATURES,
    STEP_FEATURES,
    cumulative_mean,
    request_matrix,
    running_by_client,
    running_max,
    step_matrix,
)
from predictors.forest import (
    DEPTH,
    EXPERT_DEPTH,
    EXPERT_LEARNING_RATE,
    EXPERT_TREES,
    LEARNING_RATE,
    OUTPUT_DEPTH,
    OUTPUT_LEARNING_RATE,
    OUTPUT_TREES,
    TREES,
    Forest,
    fit_median_trees,
    fit_trees,
)
from predictors.text import CATEGORIES, NGRAM_BUCKETS, SIGNALS, category, text_features, tfidf_score
from schedulers.vtc_predict import WINDOW
from traces.errors import InputError

TEXT_ALPHA = 1.0  # ridge penalty of the text model
TEXT_FOLDS = 5  # the trees learn from out-of-fold text scores
MIN_EXPERT_ROWS = 30  # an expert with fewer training rows (for any target) is the single model
MAX_STEP_ROWS = 20_000  # steps sampled (seeded) from the training side
MODELS = ("mope", "single", "moving-average")
CONSTANTS = ("training-mean", "training-median")  # output-length baselines in every report
REQUEST_TREES = OUTPUT_TREES + EXPERT_TREES  # request forests: the single model's trees, then an expert's
MIN_CALIBRATION_ROWS = 50  # an expert with fewer held-out rows takes the quantile factors of all rows
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
    conv = out["group"].to_numpy(dtype=str)
    for name, running in zip(CONVERSATION_FEATURES[:3], (lambda v: v, cumulative_mean, running_max)):
        out[name], finished = running_by_client(conv, arrival, finish, generated, running)
    out[CONVERSATION_FEATURES[3]] = finished
    prompts = [t if isinstance(t, str) else None for t in req["prompt"]]
    text = [text_features(t, n) for t, n in zip(prompts, req["prompt_tokens"].tolist())]
    out["signals"] = [v for v, _, _ in text]
    out["ngrams"] = [(b, c) for _, b, c in text]  # sorted bucket and count lists
    out["category"] = [category(v) for v in out["signals"]]
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


def ngram_matrix(ngrams: list) -> sp.csr_matrix:
    """The n-gram counts of prompts given by their (buckets, counts) of ``text.text_features``."""
    lengths = np.array([len(b) for b, _ in ngrams], dtype=np.int64)
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    indices = np.fromiter((i for b, _ in ngrams for i in b), dtype=np.int64, count=int(lengths.sum()))
    values = np.fromiter((v for _, c in ngrams for v in c), dtype=np.float64, count=int(lengths.sum()))
    return sp.csr_matrix((values, indices, indptr), shape=(len(ngrams), NGRAM_BUCKETS))


def tfidf_matrix(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """TF-IDF rows, (1 + log count) * idf scaled to unit length (``text.tfidf_score``'s), all at once."""
    out = counts.copy()
    out.data = (1.0 + np.log(out.data)) * idf[out.indices]
    norms = np.sqrt(np.asarray(out.multiply(out).sum(axis=1)).ravel())
    return sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ out


def text_model(ngrams: list, y_log: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The TF-IDF ridge model (``text.idf``, ``text.weights``, ``text.bias``) of log(1 + output
    tokens), and out-of-fold scores of the training rows (the trees learn from those, so they
    do not trust memorised training prompts)."""
    counts = ngram_matrix(ngrams)
    frequency = np.bincount(counts.indices, minlength=NGRAM_BUCKETS)
    idf = np.log((1.0 + counts.shape[0]) / (1.0 + frequency)) + 1.0
    X = tfidf_matrix(counts, idf)
    folds = np.arange(X.shape[0]) % TEXT_FOLDS
    oof = np.empty(X.shape[0])
    for fold in range(TEXT_FOLDS):
        ridge = Ridge(alpha=TEXT_ALPHA).fit(X[folds != fold], y_log[folds != fold])
        oof[folds == fold] = ridge.predict(X[folds == fold])
    ridge = Ridge(alpha=TEXT_ALPHA).fit(X, y_log)
    # rounded to float32: the solver's last bits vary with the number of BLAS threads
    arrays = {
        "text.idf": idf,
        "text.weights": ridge.coef_.astype(np.float32).astype(np.float64),
        "text.bias": np.array([ridge.intercept_], dtype=np.float32).astype(np.float64),
    }
    return arrays, oof


def text_scores(bundle: Bundle, ngrams: list) -> np.ndarray:
    """The text model's scores of logged prompts, as ``Session`` scores a Request (``text.tfidf_score``)."""
    idf, weights, bias = bundle.text_model()
    return np.array([tfidf_score(b, c, idf, weights, bias) for b, c in ngrams], dtype=np.float64)


def _signal_matrix(req: pd.DataFrame) -> np.ndarray:
    return np.array(list(req["signals"]), dtype=np.float64).reshape(len(req), len(SIGNALS))


def _fit_request_group(req: pd.DataFrame, prior: float, seed: int) -> tuple[dict, dict, dict, list[int], list[bool]]:
    """The text model, the single model and MoPE for the request targets.

    Output length: the single model is ``OUTPUT_TREES`` absolute-error trees; each expert is
    those trees plus ``EXPERT_TREES`` of its own fitted to the single model's residuals on
    its category's rows (an expert without enough rows adds nothing).  Latency targets: the
    Huber trees of ``fit_trees``, the single model's in every expert (experts by category, as
    by prompt length before, predicted TTFT and TPOT worse than the single model)."""
    if not _enough(req, REQUEST_TARGETS):
        raise InputError(
            f"too few finished requests to train on ({len(req)} in the training split); "
            f"need {MIN_EXPERT_ROWS} per target",
            source="runs",
        )
    text, oof = text_model(list(req["ngrams"]), np.log1p(req["output_tokens"].to_numpy()))
    X = request_matrix(req, prior, _signal_matrix(req), oof)
    y = req["output_tokens"].to_numpy(np.float64)
    single_out, fitted = fit_median_trees(X, y, seed, OUTPUT_TREES, OUTPUT_DEPTH, OUTPUT_LEARNING_RATE, REQUEST_TREES)
    latency = REQUEST_TARGETS[1:]

    def latency_trees() -> list[dict]:
        fits = []
        for target in latency:
            t = req[target].to_numpy(np.float64)
            ok = np.isfinite(t)
            fits.append(fit_trees(X[ok], t[ok], seed, REQUEST_TREES, OUTPUT_DEPTH))
        return fits

    def stack(fits: list[dict]) -> dict:
        return {name: np.stack([f[name] for f in fits])[None] for name in fits[0]}

    single_latency = latency_trees()
    single = stack([single_out, *single_latency])
    experts, rows, own = [], [], []
    cats = req["category"].to_numpy()
    for e in range(EXPERTS["request"]):
        part = cats == e
        rows.append(int(part.sum()))
        own.append(_enough(req[part], REQUEST_TARGETS))
        if not own[-1]:
            experts.append(single)
            continue
        extra, _ = fit_median_trees(
            X[part],
            y[part] - fitted[part],
            seed,
            EXPERT_TREES,
            EXPERT_DEPTH,
            EXPERT_LEARNING_RATE,
            REQUEST_TREES,
            first=OUTPUT_TREES,
        )
        out = {k: v.copy() for k, v in single_out.items()}
        for k in ("feature", "threshold", "value"):
            out[k][OUTPUT_TREES:] = extra[k][OUTPUT_TREES:]
        out["init"] = np.float64(single_out["init"] + extra["init"])
        experts.append(stack([out, *single_latency]))
    mope = {name: np.concatenate([x[name] for x in experts]) for name in single}
    return text, single, mope, rows, own


def _fit_targets(X: np.ndarray, frame: pd.DataFrame, targets, seed: int) -> dict[str, np.ndarray]:
    fits = []
    for target in targets:
        y = frame[target].to_numpy(np.float64)
        ok = np.isfinite(y)
        fits.append(fit_trees(X[ok], y[ok], seed))  # TREES x DEPTH
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
    for e in range(EXPERTS["step"]):
        part = frame[bucket == e]
        rows.append(len(part))
        own.append(_enough(part, targets))
        experts.append(fit(part) if own[-1] else single)
    mope = {name: np.concatenate([x[name] for x in experts]) for name in single}
    return single, mope, rows, own


# -- scoring -------------------------------------------------------------------------------


def request_features(bundle: Bundle, model: str, req: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The feature matrix of logged requests and their experts, as ``Session`` builds them."""
    expert = req["category"].to_numpy(np.intp) if model == "mope" else np.zeros(len(req), dtype=np.intp)
    score = text_scores(bundle, list(req["ngrams"]))
    X = request_matrix(req, bundle.manifest["priors"]["output_tokens"], _signal_matrix(req), score)
    return X, expert


def predict_requests(bundle: Bundle, model: str, req: pd.DataFrame) -> np.ndarray:
    """(n, 4) predictions for logged requests, as ``Session.predict`` makes them."""
    X, expert = request_features(bundle, model, req)
    floors = np.array([FLOORS.get(t, 0.0) for t in REQUEST_TARGETS])
    return np.maximum(RequestForest(bundle.model_arrays("request", model), bundle.manifest).predict(X, expert), floors)


def quantile_factors(central: np.ndarray, actual: np.ndarray, expert: np.ndarray, experts: int) -> np.ndarray:
    """(experts, len(QUANTILES)) calibration: per expert, the QUANTILES of actual / central
    on held-out rows (split conformal, multiplicative); all rows' where an expert has fewer
    than ``MIN_CALIBRATION_ROWS``."""
    ratio = actual / np.maximum(central, 1.0)
    pooled = np.quantile(ratio, QUANTILES) if len(ratio) else np.ones(len(QUANTILES))
    out = np.tile(pooled, (experts, 1))
    for e in range(experts):
        mine = ratio[expert == e]
        if len(mine) >= MIN_CALIBRATION_ROWS:
            out[e] = np.quantile(mine, QUANTILES)
    return np.maximum.accumulate(out, axis=1)


def calibrate(bundle: Bundle, req: pd.DataFrame) -> None:
    """Set each model's ``quantile_factor`` from held-out requests ``req`` (in place)."""
    actual = req["output_tokens"].to_numpy(np.float64)
    for model in ("mope", "single"):
        _, expert = request_features(bundle, model, req)
        central = predict_requests(bundle, model, req)[:, 0]
        factors = quantile_factors(central, actual, expert, EXPERTS["request"] if model == "mope" else 1)
        bundle.arrays[f"request.{model}.quantile_factor"] = factors


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


def kendall(predicted: np.ndarray, actual: np.ndarray) -> float | None:
    """Kendall's tau-b between predicted and actual lengths (None when either is constant)."""
    if len(actual) < 2 or np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return None
    return float(kendalltau(predicted, actual).statistic)


def score(bundle: Bundle, requests: pd.DataFrame, steps: pd.DataFrame) -> dict:
    """The metrics table of ``bundle`` on logged requests and steps.

    Output length also gets the training mean and median as constant predictions, Kendall's
    tau per model (``tau``), and for MoPE and the single model the calibrated p90 and its
    coverage (``p90_coverage``: the fraction of rows whose length is at most their p90)."""
    priors = bundle.manifest["priors"]
    metrics = {t: {} for t in (*REQUEST_TARGETS, *STEP_TARGETS, DERIVED)}
    tokens = (steps["prefill_tokens"] + steps["decode_tokens"]).to_numpy(np.float64)
    actual_out = requests["output_tokens"].to_numpy(np.float64)
    q90 = QUANTILES.index(0.9)
    with np.errstate(divide="ignore", invalid="ignore"):
        for model in MODELS:
            if model == "moving-average":
                req_pred = np.column_stack([requests[f"ma_{t}"].fillna(priors[t]) for t in REQUEST_TARGETS])
                step_pred = np.column_stack([steps[f"ma_{t}"].fillna(priors[t]) for t in STEP_TARGETS])
            else:
                req_pred, step_pred = predict_requests(bundle, model, requests), predict_steps(bundle, model, steps)
            for k, t in enumerate(REQUEST_TARGETS):
                metrics[t][model] = _errors(req_pred[:, k], requests[t].to_numpy(np.float64))
            metrics["output_tokens"][model]["tau"] = kendall(req_pred[:, 0], actual_out)
            if model != "moving-average":
                _, expert = request_features(bundle, model, requests)
                p90 = req_pred[:, 0] * bundle.arrays[f"request.{model}.quantile_factor"][expert, q90]
                metrics["output_tokens"][model]["p90_coverage"] = (
                    float((actual_out <= p90).mean()) if len(actual_out) else None
                )
            for k, t in enumerate(STEP_TARGETS):
                metrics[t][model] = _errors(step_pred[:, k], steps[t].to_numpy(np.float64))
            actual_tps = tokens / steps["step_s"].to_numpy()
            metrics[DERIVED][model] = _errors(np.where(step_pred[:, 0] > 0, tokens / step_pred[:, 0], 0.0), actual_tps)
    for name in CONSTANTS:
        value = bundle.manifest["priors"]["output_tokens" if name == "training-mean" else "output_tokens_median"]
        metrics["output_tokens"][name] = {**_errors(np.full(len(actual_out), value), actual_out), "tau": None}
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
    # the held-out conversations: half calibrate the quantiles, half are scored
    held_groups = np.unique(test_req["group"].to_numpy(dtype=str))
    calibration_groups = held_groups[rng.random(len(held_groups)) < 0.5]
    in_calibration = test_req["group"].isin(calibration_groups).to_numpy()
    calib_req, test_req = test_req[in_calibration], test_req[~in_calibration]
    if calib_req.empty or test_req.empty:
        raise InputError("the held-out split is too small to calibrate and score; give more requests", source="runs")

    priors = {t: float(np.nanmean(train_req[t])) for t in REQUEST_TARGETS}
    priors.update({t: float(np.nanmean(train_steps[t])) for t in STEP_TARGETS})
    priors["output_tokens_median"] = float(np.median(train_req["output_tokens"]))
    prefills = train_steps["prefill_tokens"].to_numpy()
    step_cut = [0.0, float(np.median(prefills[prefills > 0])) if (prefills > 0).any() else 0.0]

    text, single_r, mope_r, rows_r, own_r = _fit_request_group(train_req, priors["output_tokens"], seed)
    single_s, mope_s, rows_s, own_s = _fit_group(
        train_steps,
        lambda f: route(step_cut, f["prefill_tokens"].to_numpy()),
        lambda f: _fit_targets(step_matrix(f), f, STEP_TARGETS, seed),
        STEP_TARGETS,
        "busy steps",
    )
    shapes = {"request": (REQUEST_TREES, OUTPUT_DEPTH), "step": (TREES, DEPTH)}
    arrays = dict(text)
    for group, parts in (("request", (mope_r, single_r)), ("step", (mope_s, single_s))):
        for model, part in zip(("mope", "single"), parts):
            for key, (shape, dtype) in array_shapes(group, model, *shapes[group]).items():
                name = key.rsplit(".", 1)[1]
                arrays[key] = (
                    np.ones(shape, dtype=dtype) if name == "quantile_factor" else np.asarray(part[name], dtype)
                )

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "targets": {"request": list(REQUEST_TARGETS), "step": list(STEP_TARGETS)},
        "features": {"request": list(REQUEST_FEATURES), "step": list(STEP_FEATURES)},
        "router": {
            "request": {
                "feature": "category",
                "categories": list(CATEGORIES),
                "rule": "predictors.text.category: the first category whose rule the prompt's signals meet",
                "training_rows": rows_r,
                "own_model": own_r,
            },
            "step": {
                "feature": "prefill_tokens",
                "rule": "expert i takes x <= thresholds[i], the first such i; the last expert takes the rest",
                "thresholds": step_cut,
                "chosen_by": "0 (pure decode), then the median of the training split's non-zero prefills",
                "training_rows": rows_s,
                "own_model": own_s,
            },
        },
        "model": {
            "request": {"trees": REQUEST_TREES, "depth": OUTPUT_DEPTH},
            "step": {"trees": TREES, "depth": DEPTH},
            "output_tokens": {
                "family": "HistGradientBoostingRegressor, absolute error (scikit-learn), exported to arrays",
                "trees": OUTPUT_TREES,
                "depth": OUTPUT_DEPTH,
                "learning_rate": OUTPUT_LEARNING_RATE,
                "expert_trees": EXPERT_TREES,
                "expert_depth": EXPERT_DEPTH,
                "expert_learning_rate": EXPERT_LEARNING_RATE,
                "experts": "the single model's trees plus trees fitted to its residuals on the category's rows",
            },
            "latency_and_steps": {
                "family": "GradientBoostingRegressor, Huber loss (scikit-learn), exported to arrays",
                "trees": TREES,
                "depth": DEPTH,
                "learning_rate": LEARNING_RATE,
            },
            "text": {"ngram_buckets": NGRAM_BUCKETS, "ridge_alpha": TEXT_ALPHA, "folds": TEXT_FOLDS},
            "min_expert_rows": MIN_EXPERT_ROWS,
        },
        "quantiles": list(QUANTILES),
        "quantile_calibration": {
            "rule": "per expert, the quantiles of actual / predicted output length on held-out conversations",
            "rows": len(calib_req),
            "min_rows": MIN_CALIBRATION_ROWS,
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
                "calibration_requests": len(calib_req),
                "holdout_requests": len(test_req),
                "train_steps": len(train_steps),
                "holdout_steps": len(test_steps),
            },
            "versions": {d: metadata.version(d) for d in ("numpy", "scikit-learn")},
        },
    }
    bundle = Bundle(out_dir, manifest, arrays)
    calibrate(bundle, calib_req)
    metrics = score(bundle, test_req, test_steps)
    save_bundle(out_dir, {**manifest, "metrics": metrics}, arrays)
    return Report(out_dir, metrics, manifest["training"]["rows"])


def evaluate(bundle_dir, run_dirs) -> Report:
    """Score a saved bundle on the finished requests and busy steps of other runs."""
    logs = load_logs(run_dirs)
    bundle = load_bundle(bundle_dir, preset=logs.engine["preset"])
    metrics = score(bundle, logs.requests, logs.steps)
    return Report(Path(bundle_dir), metrics, {"requests": len(logs.requests), "steps": len(logs.steps)})
