"""Audit replay results: load run directories and compute every metric of each run.

``audit(paths)`` accepts run directories (``requests.parquet``, ``steps.parquet``,
``run.json``, and ``counters.parquet`` where the scheduler writes its fairness
counters) and replay output directories holding one run directory per scheduler.
The metric definitions are in :mod:`reports.metrics`; per run:

* fairness metrics skip the artifact's 30-s warm-up and are sampled on a grid of
  at most 5,000 times (every 0.25 s for runs up to about 20 minutes);
* ``jain`` is Jain's index over each client's normalised service rate while it was
  backlogged (the artifact has no Jain index); ``jain_total_service`` uses the
  service received over the whole run instead;
* ``pair_service_diff_max`` is the VTC bound's left side and decides ``bound.held``;
  ``acc_service_diff_max`` is the accumulated service difference among backlogged
  clients;
* the windowed difference uses the artifact's 19 window centres over
  ``[30 s, T]``, T the last arrival of a served request floored to a second;
* ``starvation`` is the longest wait of a backlogged client without any of its
  requests being admitted (:func:`reports.metrics.starvation`), over the whole run;
* ``service`` compares what clients received with what they asked for (rejected
  requests included).

Besides the JSON-ready summary, each run yields the series the figures draw
(:mod:`reports.figures`); with a baseline, each summary gets the deltas of
:mod:`reports.compare`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engine.results import COUNTERS_FILE, REQUESTS_FILE, RUN_FILE, STEPS_FILE
from reports import compare
from reports import metrics as m
from traces.errors import InputError
from traces.result_schemas import COUNTER_SCHEMA, REQUEST_SCHEMA, STEP_SCHEMA

REQUEST_COLUMNS = (
    "client_id",
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "weight",
    "status",
    "admitted_s",
    "first_token_s",
    "finish_s",
    "generated_tokens",
    "preemptions",
)
# Columns newer engines write (older runs lack them; the audit reports what it cannot compute as None).
OPTIONAL_REQUEST_COLUMNS = (("reject_reason", "str"), ("cached_prompt_tokens", "int"), ("engine_seconds", "float"))
STEP_COLUMNS = ("duration_s", "busy", "flops")
RUN_FILES = (REQUESTS_FILE, STEPS_FILE, RUN_FILE)
GRID_STEP_S = 0.25  # finest grid spacing for the accumulated-service metrics
GRID_POINTS = 5000  # most grid points per run; the spacing grows for long runs
PLOT_POINTS = 500  # time points of the figures' service and counter curves
CDF_POINTS = 201  # quantiles drawn per latency distribution
BOX_QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)  # whiskers, box and median of the per-client boxes


@dataclass(frozen=True)
class Run:
    """One run directory, loaded."""

    name: str
    path: Path
    requests: pd.DataFrame
    steps: pd.DataFrame
    config: dict
    counters: pd.DataFrame | None = None


@dataclass(frozen=True)
class AuditResult:
    """One JSON-ready summary per run, in the order the runs were given, and the figures' series."""

    runs: list[dict]
    series: list[dict] = field(default_factory=list)


# -- loading ------------------------------------------------------------------------------


def load_runs(paths) -> list[Run]:
    """Load every run under ``paths`` (run directories or parents of run directories)."""
    dirs = list(dict.fromkeys(d.resolve() for p in paths for d in _run_dirs(Path(p))))
    return [_load_run(name, d) for name, d in zip(_names(dirs), dirs)]


def _run_dirs(path: Path) -> list[Path]:
    """``path`` itself when it is a run directory, else the run directories below it, at any depth."""
    if not path.is_dir():
        found = "a file" if path.exists() else "nothing"
        raise InputError(f"expected a run directory or a replay output directory, found {found}", source=str(path))
    runs = find_runs(path)
    if not runs:
        raise InputError(f"expected {', '.join(RUN_FILES)} here or in its subdirectories", source=str(path))
    return runs


def find_runs(path: Path) -> list[Path]:
    """Run directories at or below ``path`` (a sweep nests them: workload/seed-S/knobs/scheduler).

    Hidden directories are skipped (an interrupted atomic write leaves ``.<name>.*.tmp``), and
    symbolic links are followed only to a run directory, so a link cycle cannot recurse."""
    if _is_run_dir(path):
        return [path]
    subs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [run for d in subs if _is_run_dir(d) or not d.is_symlink() for run in find_runs(d)]


def _is_run_dir(path: Path) -> bool:
    return any((path / f).exists() for f in RUN_FILES)


def _names(dirs: list[Path]) -> list[str]:
    """The shortest trailing part of each directory's path that no other run shares:
    ``vtc``, else ``out/vtc``, else ``seed-1/default/vtc``, ... (the full path at most)."""
    depth = [1] * len(dirs)
    while True:
        names = [str(d) if k >= len(d.parts) else "/".join(d.parts[-k:]) for d, k in zip(dirs, depth)]
        counts = Counter(names)
        if all(n == 1 for n in counts.values()):
            return names
        depth = [k + 1 if counts[n] > 1 else k for n, k in zip(names, depth)]


def _load_run(name: str, path: Path) -> Run:
    config = _read_config(path / RUN_FILE)
    requests = _read_table(path / REQUESTS_FILE, REQUEST_SCHEMA, REQUEST_COLUMNS, OPTIONAL_REQUEST_COLUMNS)
    if requests.empty:
        raise InputError("expected at least one request", source=str(path / REQUESTS_FILE))
    # A writer that does not measure a column fills it with nulls: that is a column it lacks.
    unmeasured = [c for c in ("cached_prompt_tokens", "engine_seconds") if c in requests and requests[c].isna().all()]
    requests = requests.drop(columns=unmeasured)
    steps = _read_table(path / STEPS_FILE, STEP_SCHEMA, STEP_COLUMNS)
    counters = path / COUNTERS_FILE
    counters = _read_table(counters, COUNTER_SCHEMA, COUNTER_SCHEMA.names) if counters.exists() else None
    return Run(name=name, path=path, requests=requests, steps=steps, config=config, counters=counters)


def _read_config(path: Path) -> dict:
    """run.json, which must name the engine's KV capacity."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("missing file; expected the run's configuration (run.json)", source=str(path)) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"expected a JSON object: {exc}", source=str(path)) from None
    engine = config.get("engine") if isinstance(config, dict) else None
    capacity = engine.get("kv_capacity_tokens") if isinstance(engine, dict) else None
    if not isinstance(capacity, (int, float)) or isinstance(capacity, bool):
        raise InputError("expected a number at engine.kv_capacity_tokens", source=str(path))
    return config


def _kind(t: pa.DataType) -> str | None:
    """The broad type of a column: int, float, bool or str (None for anything else)."""
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    return None


def _read_table(path: Path, schema: pa.Schema, columns, optional=()) -> pd.DataFrame:
    """Read ``columns`` of a Parquet file, checking that each has ``schema``'s type, and those of
    ``optional`` (name, type kind) that it has (newer runs write them; older ones lack them)."""
    if not path.is_file():
        raise InputError(f"missing file; expected {path.name} with columns {', '.join(columns)}", source=str(path))
    try:
        found = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"expected a Parquet file: {exc}", source=str(path)) from None
    for col in columns:
        want = schema.field(col).type
        if col not in found.names:
            raise InputError(f"missing column {col!r} ({want})", source=str(path))
        if _kind(found.field(col).type) != _kind(want):
            raise InputError(f"column {col!r} is {found.field(col).type}; expected {want}", source=str(path))
    extra = []
    for col, kind in optional:
        if col in found.names:
            if _kind(found.field(col).type) != kind:
                raise InputError(f"column {col!r} is {found.field(col).type}; expected {kind}", source=str(path))
            extra.append(col)
    try:
        return pq.read_table(path, columns=[*columns, *extra]).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        detail = " ".join(str(exc).split())
        raise InputError(f"cannot read its data (damaged Parquet file?): {detail}", source=str(path)) from None


# -- auditing -----------------------------------------------------------------------------


def audit(paths, baseline=None, *, allow_mixed: bool = False, vtc_windows: bool = False) -> AuditResult:
    """Load and audit every run under ``paths``; with ``baseline`` (a run or replay directory),
    each summary gets a ``baseline`` entry with its deltas (:func:`reports.compare.against`).

    Runs of different workloads (their fingerprints differ) are refused unless ``allow_mixed``:
    side by side they would compare schedulers on different demands.  ``vtc_windows`` places the
    windowed difference's centres as the VTC artifact's revision tables do (T = 600 s)."""
    base = audit([baseline], allow_mixed=True, vtc_windows=vtc_windows).runs if baseline is not None else None
    runs = load_runs(paths)
    if not allow_mixed:
        check_one_workload(runs)
    summaries, series = zip(*(audit_run(run, vtc_windows=vtc_windows) for run in runs))
    if base is not None:
        for summary in summaries:
            summary["baseline"] = compare.against(summary, base)
    return AuditResult(runs=list(summaries), series=list(series))


def workload_of(config: dict) -> tuple[str | None, str | None]:
    """(name, fingerprint) of the workload a run replayed, as its run.json records them (None if not)."""
    workload = config.get("workload")
    if isinstance(workload, dict):
        return workload.get("name"), workload.get("fingerprint")
    return (str(workload) if workload is not None else None), None


def check_one_workload(runs: list[Run]) -> None:
    """An InputError naming the runs and their workloads when the runs replayed different workloads
    (by fingerprint where run.json has one, else by name; runs that record neither are not compared).

    A sweep's cells are the exception: there every run's name is a path (``overload/seed-1/default/vtc``)
    that says which cell, and so which workload and seed, it belongs to.  Runs named by their last
    directory alone (``fcfs``, ``vtc``) would show different workloads as if they were one."""
    if len(runs) > 1 and all("/" in run.name for run in runs):
        return
    groups: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    for run in runs:
        name, fp = workload_of(run.config)
        key = fp or name
        if key is None:
            continue
        groups.setdefault(key, []).append(run.name)
        labels[key] = f"{name or 'workload'} (fingerprint {fp})" if fp else f"{name} (no fingerprint)"
    if len(groups) > 1:
        parts = "; ".join(f"{', '.join(names)}: {labels[key]}" for key, names in groups.items())
        raise InputError(
            f"the runs replayed different workloads, {parts}; audit each workload on its own, or pass --allow-mixed",
            source="audit",
        )


def audit_run(run: Run, *, vtc_windows: bool = False) -> tuple[dict, dict]:
    """Every metric of one run, JSON-serialisable, with a per-client breakdown; and the figures' series."""
    req, config = run.requests, run.config
    engine = config["engine"]
    prices = config.get("service_weights") or {}
    w_p, w_q = float(prices.get("w_p", 1.0)), float(prices.get("w_q", 2.0))
    fairness, backlogged, series = _fairness(req, w_p, w_q, vtc_windows)
    lat = m.latencies(req)
    latency = m.latency_stats(lat)
    mean_ttft = lat.groupby("client_id", sort=True)["ttft"].mean().dropna()
    fairness["jain_ttft"] = m.jain_index(mean_ttft) if len(mean_ttft) else None
    demanded, received = m.demanded_service(req, w_p, w_q), m.total_service(req, w_p, w_q)
    starving = m.starvation(req)
    summary = {
        "name": run.name,
        "path": str(run.path),
        "scheduler": config.get("scheduler"),
        "workload": config.get("workload"),
        "seed": config.get("seed"),
        "workload_fingerprint": workload_of(config)[1],
        "service_weights": {"w_p": w_p, "w_q": w_q},
        "requests": {
            "total": len(req),
            "finished": int((req["status"] == "finished").sum()),
            "rejected": int((req["status"] == "rejected").sum()),
            "rejected_by_reason": _reasons(req),
            "preemptions": int(req["preemptions"].sum()),
        },
        "prefix_cache": _prefix_cache(req),
        "throughput": m.throughput(req),
        "utilization": m.utilization(run.steps, engine.get("peak_flops")),
        "latency": latency["overall"],
        "service": {
            "demanded": float(demanded.sum()),
            "received": float(received.sum()),
            "fraction": _ratio(received.sum(), demanded.sum()),
        },
        "starvation": _starvation(starving),
        "fairness": fairness,
        "bound": _bound(req, engine["kv_capacity_tokens"], w_p, w_q, fairness),
        "equinox_bound": _equinox_bound(run),
        "clients": _clients(req, demanded, received, starving, backlogged, latency["per_client"]),
        "notes": _notes(req),
    }
    series |= _plot_series(req, w_p, w_q, lat, run.counters)
    return _jsonable(summary), series


def _equinox_bound(run: Run) -> dict | None:
    """An Equinox run's own bound (its guard's, docs/EQUINOX.md) and whether its counters kept it;
    None for other schedulers."""
    policy = run.config.get("policy") or {}
    if "guard" not in policy or run.counters is None:
        return None
    from schedulers.equinox_bound import check_run

    return check_run(run.path)


def fairness_grid(req: pd.DataFrame) -> np.ndarray:
    """Evaluation times from the warm-up to the last finish, at most GRID_POINTS of them."""
    start, end = m.WARMUP_S, float(req["finish_s"].max())
    if not end > start:
        return np.array([start])
    step = max(GRID_STEP_S, (end - start) / (GRID_POINTS - 1))
    return np.linspace(start, end, int(np.ceil((end - start) / step)) + 1)


ARTIFACT_HORIZON_S = 600.0  # the VTC artifact's revision tables: window centres over [30 s, 600 s]


def _horizon(req: pd.DataFrame) -> float:
    """The artifact's T: the last arrival of a served request, floored to a second."""
    arrivals = req.loc[req["status"] == "finished", "arrival_s"]
    return float(math.floor(arrivals.max())) if len(arrivals) else 0.0


def _fairness(req: pd.DataFrame, w_p: float, w_q: float, vtc_windows: bool = False) -> tuple[dict, pd.DataFrame, dict]:
    """Fairness metrics; each client's backlogged seconds, service and rate; the difference series."""
    grid = fairness_grid(req)
    curves, backlog = m.service_curves(req, grid, w_p, w_q), m.backlogged(req, grid)
    acc = m.accumulated_service_difference(curves, backlog)
    pair_max, pair = m.pair_service_difference(curves, backlog)
    per_client = m.backlogged_service(curves, backlog)
    seconds = m.request_engine_seconds(req)
    if seconds is not None:
        resource = m.backlogged_service(m.service_curves(req, grid, values=seconds), backlog)
        per_client["engine_rate"] = resource["rate"]
    horizon = ARTIFACT_HORIZON_S if vtc_windows else _horizon(req)
    ticks = m.artifact_ticks(horizon)
    rates = m.service_rate(req, ticks, w_p=w_p, w_q=w_q), m.demand_rate(req, ticks, w_p=w_p, w_q=w_q)
    window = m.windowed_difference(*rates)
    at = np.r_[m.WARMUP_S, ticks]
    acc_at_ticks = m.accumulated_service_difference(m.service_curves(req, at, w_p, w_q), m.backlogged(req, at))
    fairness = {
        "jain": m.jain_index(per_client["rate"].dropna()),
        "jain_ttft": None,  # filled in by audit_run from the latencies
        "jain_resource": m.jain_index(per_client["engine_rate"].dropna()) if seconds is not None else None,
        "jain_total_service": m.jain_index(m.total_service(req, w_p, w_q)),
        "acc_service_diff_max": float(acc.max()),
        "acc_service_diff_mean": float(acc.mean()),
        "pair_service_diff_max": pair_max,
        "pair_service_diff_clients": pair,
        "windowed_diff": {
            "max": window.max(),
            "mean": window.mean(),
            "var": window.var(ddof=0),
            "placement": "vtc-artifact" if vtc_windows else "last-arrival",
            "horizon_s": horizon,
        },
        "series": {
            "t": ticks,
            "windowed_diff": window.to_numpy(),
            "acc_service_diff": acc_at_ticks.to_numpy()[1:],
        },
    }
    series = {"pair_diff": m.pair_service_difference_series(curves, backlog), "acc_diff": acc, "windowed": window}
    return fairness, per_client, series


def _plot_series(req: pd.DataFrame, w_p: float, w_q: float, lat: pd.DataFrame, counters) -> dict:
    """What the figures draw besides the difference series, at a resolution that does not grow with the run."""
    grid = np.linspace(0.0, np.nanmax([req["finish_s"].max(), req["arrival_s"].max(), 0.0]), PLOT_POINTS)
    cdf = lat[list(m.LATENCIES)].quantile(np.linspace(0.0, 1.0, CDF_POINTS))
    ttft = lat.groupby("client_id", sort=True)["ttft"].quantile(list(BOX_QUANTILES)).unstack()
    return {
        "received": m.service_curves(req, grid, w_p, w_q),
        "demanded": m.demand_curves(req, grid, w_p, w_q),
        "latency_cdf": cdf,
        "ttft_by_client": ttft,
        "counters": None if counters is None else _thin(counters),
    }


def _thin(counters: pd.DataFrame, points: int = PLOT_POINTS) -> pd.DataFrame:
    """Each client's last counter row in each of ``points`` equal time bins, in time order."""
    ordered = counters.sort_values("time_s", kind="stable")
    t = ordered["time_s"].to_numpy()
    bins = np.searchsorted(np.linspace(t[0], t[-1], points + 1)[1:-1], t, side="right") if t.size else t
    return ordered.groupby([ordered["client_id"], bins], sort=False).tail(1).reset_index(drop=True)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _starvation(per_client: pd.DataFrame) -> dict:
    """The longest wait of any backlogged client: how long, whose, and when it began and ended."""
    if per_client.empty or not per_client["starvation_s"].max() > 0:
        return {"max_s": 0.0, "client": None, "from_s": None, "to_s": None}
    client = per_client["starvation_s"].idxmax()
    wait, began = per_client.loc[client, ["starvation_s", "from_s"]]
    return {"max_s": float(wait), "client": str(client), "from_s": float(began), "to_s": float(began + wait)}


def _bound(req: pd.DataFrame, kv_capacity: float, w_p: float, w_q: float, fairness: dict) -> dict:
    """The VTC bound for this workload and engine over the requests that were served (a rejected
    prompt never occupied the engine, so it cannot widen the bound), and whether the run stayed within it.
    No request served: no bound (None), and nothing held or failed."""
    served = req[req["status"] == "finished"]
    excluded = len(req) - len(served)
    if served.empty:
        return {"value": None, "max_prompt_tokens": None, "kv_capacity_tokens": kv_capacity, "min_weight": None,
                "held": None, "acc_service_diff_held": None, "excluded_requests": excluded}  # fmt: skip
    max_prompt, min_weight = int(served["prompt_tokens"].max()), float(served["weight"].min())
    value = m.vtc_bound(max_prompt, kv_capacity, w_p, w_q, min_weight)
    return {
        "value": value,
        "max_prompt_tokens": max_prompt,
        "kv_capacity_tokens": kv_capacity,
        "min_weight": min_weight,
        "held": fairness["pair_service_diff_max"] <= value,
        "acc_service_diff_held": fairness["acc_service_diff_max"] <= value,
        "excluded_requests": excluded,
    }


def _reasons(req: pd.DataFrame, rejected=None) -> dict:
    """Rejected requests per reason (``reject_reason``; "unrecorded" where a run does not say why)."""
    rejected = req["status"] == "rejected" if rejected is None else rejected
    if "reject_reason" not in req:
        return {"unrecorded": int(rejected.sum())} if rejected.any() else {}
    reasons = req.loc[rejected, "reject_reason"].fillna("unrecorded")
    return {str(k): int(v) for k, v in reasons.value_counts().sort_index().items()}


def _prefix_cache(req: pd.DataFrame) -> dict | None:
    """Prompt tokens served from the prefix cache over the prompt tokens of the served requests;
    None when the run has no ``cached_prompt_tokens`` column."""
    if "cached_prompt_tokens" not in req:
        return None
    served = req[req["status"] == "finished"]
    cached = float(served["cached_prompt_tokens"].fillna(0).sum())
    prompt = float(served["prompt_tokens"].sum())
    return {"cached_tokens": cached, "prompt_tokens": prompt, "hit_rate": _ratio(cached, prompt)}


def _notes(req: pd.DataFrame) -> list[str]:
    """What this run's files do not let the audit compute."""
    notes = []
    if m.request_engine_seconds(req) is None:
        notes.append("jain_resource: requests.parquet has no engine_seconds (an older run, or an engine without it)")
    if "cached_prompt_tokens" not in req:
        notes.append("prefix_cache: requests.parquet has no cached_prompt_tokens (an older run)")
    if "reject_reason" not in req and (req["status"] == "rejected").any():
        notes.append("rejected_by_reason: requests.parquet has no reject_reason (an older run)")
    return notes


def _clients(req, demanded, received, starving, backlogged: pd.DataFrame, latency: dict) -> dict:
    """Per client: counts, weight, service (demanded, received, while backlogged), starvation, latency stats."""
    table = pd.DataFrame(
        {
            "client_id": req["client_id"],
            "finished": req["status"] == "finished",
            "rejected": req["status"] == "rejected",
            "preemptions": req["preemptions"],
            "weight": req["weight"],
        }
    ).groupby("client_id", sort=True)
    counts = table.agg(
        requests=("finished", "size"),
        finished=("finished", "sum"),
        rejected=("rejected", "sum"),
        preemptions=("preemptions", "sum"),
        weight=("weight", "mean"),
    )
    counts["demanded"] = demanded
    counts["service"] = received
    counts["served_fraction"] = received / demanded.where(demanded > 0)
    counts["starvation_s"] = starving["starvation_s"]
    counts["starvation_from_s"] = starving["from_s"]
    counts["backlogged_s"] = backlogged["seconds"]
    counts["backlogged_service"] = backlogged["service"]
    counts["backlogged_rate"] = backlogged["rate"]
    counts["backlogged_engine_rate"] = backlogged["engine_rate"] if "engine_rate" in backlogged else np.nan
    if "cached_prompt_tokens" in req:
        served = req[req["status"] == "finished"]
        by = served.groupby("client_id", sort=True)
        counts["cache_hit_rate"] = by["cached_prompt_tokens"].sum() / by["prompt_tokens"].sum()
    else:
        counts["cache_hit_rate"] = np.nan
    rows = counts.to_dict("index")
    rejected = req[req["status"] == "rejected"]
    reasons = rejected["reject_reason"].fillna("unrecorded") if "reject_reason" in req else "unrecorded"
    by_reason = rejected.assign(reason=reasons).groupby(["client_id", "reason"], sort=True).size()
    for client, row in rows.items():
        row["rejected_by_reason"] = {}
    for (client, reason), n in by_reason.items():
        rows[client]["rejected_by_reason"][str(reason)] = int(n)
    return {str(c): {**row, "latency": latency.get(str(c))} for c, row in rows.items()}


def _jsonable(obj):
    """Plain JSON values: numpy scalars and arrays unwrapped, tuples as lists, NaN and inf as None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(result: AuditResult, checks=()) -> str:
    """The full audit as indented JSON: every run's summary and the policy checks."""
    report = _jsonable({"runs": result.runs, "checks": [asdict(c) for c in checks]})
    return json.dumps(report, indent=2, allow_nan=False)
