"""Audit replay results: load run directories, compute every metric, check thresholds, render.

``audit(paths)`` accepts run directories (``requests.parquet``, ``steps.parquet``,
``run.json``) and replay output directories holding one run directory per
scheduler.  The metric definitions are in :mod:`reports.metrics`; per run:

* fairness metrics skip the artifact's 30-s warm-up and are sampled on a grid of
  at most 5,000 times (every 0.25 s for runs up to about 20 minutes);
* ``jain`` is Jain's index over each client's normalised service rate while it was
  backlogged (the artifact has no Jain index); ``jain_total_service`` uses the
  service received over the whole run instead;
* ``pair_service_diff_max`` is the VTC bound's left side and decides ``bound.held``;
  ``acc_service_diff_max`` is the accumulated service difference among backlogged
  clients;
* the windowed difference uses the artifact's 19 window centres over
  ``[30 s, T]``, T the last arrival of a served request floored to a second.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from engine.results import REQUEST_SCHEMA, REQUESTS_FILE, RUN_FILE, STEP_SCHEMA, STEPS_FILE
from reports import metrics as m
from traces.errors import InputError

REQUEST_COLUMNS = (
    "client_id",
    "arrival_s",
    "prompt_tokens",
    "weight",
    "status",
    "admitted_s",
    "first_token_s",
    "finish_s",
    "generated_tokens",
    "preemptions",
)
STEP_COLUMNS = ("duration_s", "busy", "flops")
RUN_FILES = (REQUESTS_FILE, STEPS_FILE, RUN_FILE)
GRID_STEP_S = 0.25  # finest grid spacing for the accumulated-service metrics
GRID_POINTS = 5000  # most grid points per run; the spacing grows for long runs


@dataclass(frozen=True)
class Run:
    """One run directory, loaded."""

    name: str
    path: Path
    requests: pd.DataFrame
    steps: pd.DataFrame
    config: dict


@dataclass(frozen=True)
class AuditResult:
    """One JSON-ready summary per run, in the order the runs were given."""

    runs: list[dict]


# -- loading ------------------------------------------------------------------------------


def load_runs(paths) -> list[Run]:
    """Load every run under ``paths`` (run directories or parents of run directories)."""
    dirs = list(dict.fromkeys(d.resolve() for p in paths for d in _run_dirs(Path(p))))
    return [_load_run(name, d) for name, d in zip(_names(dirs), dirs)]


def _run_dirs(path: Path) -> list[Path]:
    """``path`` itself when it is a run directory, else its subdirectories that are."""
    if not path.is_dir():
        found = "a file" if path.exists() else "nothing"
        raise InputError(f"expected a run directory or a replay output directory, found {found}", source=str(path))
    if _is_run_dir(path):
        return [path]
    subs = sorted(d for d in path.iterdir() if d.is_dir() and _is_run_dir(d))
    if not subs:
        raise InputError(f"expected {', '.join(RUN_FILES)} here or in its subdirectories", source=str(path))
    return subs


def _is_run_dir(path: Path) -> bool:
    return any((path / f).exists() for f in RUN_FILES)


def _names(dirs: list[Path]) -> list[str]:
    """Directory names, qualified by the parent's name (then the full path) where they collide."""
    names = [d.name for d in dirs]
    for qualify in (lambda d: f"{d.parent.name}/{d.name}", str):
        clash = {n for n in names if names.count(n) > 1}
        names = [qualify(d) if n in clash else n for n, d in zip(names, dirs)]
    return names


def _load_run(name: str, path: Path) -> Run:
    config = _read_config(path / RUN_FILE)
    requests = _read_table(path / REQUESTS_FILE, REQUEST_SCHEMA, REQUEST_COLUMNS)
    if requests.empty:
        raise InputError("expected at least one request", source=str(path / REQUESTS_FILE))
    steps = _read_table(path / STEPS_FILE, STEP_SCHEMA, STEP_COLUMNS)
    return Run(name=name, path=path, requests=requests, steps=steps, config=config)


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


def _read_table(path: Path, schema: pa.Schema, columns) -> pd.DataFrame:
    """Read ``columns`` of a Parquet file, checking that each has ``schema``'s type."""
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
    return pq.read_table(path, columns=list(columns)).to_pandas()


# -- auditing -----------------------------------------------------------------------------


def audit(paths) -> AuditResult:
    """Load and audit every run under ``paths``."""
    return AuditResult(runs=[audit_run(run) for run in load_runs(paths)])


def audit_run(run: Run) -> dict:
    """Every metric of one run, JSON-serialisable, with a per-client breakdown."""
    req, config = run.requests, run.config
    engine = config["engine"]
    prices = config.get("service_weights") or {}
    w_p, w_q = float(prices.get("w_p", 1.0)), float(prices.get("w_q", 2.0))
    fairness, backlogged = _fairness(req, w_p, w_q)
    latency = m.latency_stats(req)
    summary = {
        "name": run.name,
        "path": str(run.path),
        "scheduler": config.get("scheduler"),
        "workload": config.get("workload"),
        "seed": config.get("seed"),
        "service_weights": {"w_p": w_p, "w_q": w_q},
        "requests": {
            "total": len(req),
            "finished": int((req["status"] == "finished").sum()),
            "rejected": int((req["status"] == "rejected").sum()),
            "preemptions": int(req["preemptions"].sum()),
        },
        "throughput": m.throughput(req),
        "utilization": m.utilization(run.steps, engine.get("peak_flops")),
        "latency": latency["overall"],
        "fairness": fairness,
        "bound": _bound(req, engine["kv_capacity_tokens"], w_p, w_q, fairness),
        "clients": _clients(req, w_p, w_q, backlogged, latency["per_client"]),
    }
    return _jsonable(summary)


def _grid(req: pd.DataFrame) -> np.ndarray:
    """Evaluation times from the warm-up to the last finish, at most GRID_POINTS of them."""
    start, end = m.WARMUP_S, float(req["finish_s"].max())
    if not end > start:
        return np.array([start])
    step = max(GRID_STEP_S, (end - start) / (GRID_POINTS - 1))
    return np.linspace(start, end, int(np.ceil((end - start) / step)) + 1)


def _horizon(req: pd.DataFrame) -> float:
    """The artifact's T: the last arrival of a served request, floored to a second."""
    arrivals = req.loc[req["status"] == "finished", "arrival_s"]
    return float(math.floor(arrivals.max())) if len(arrivals) else 0.0


def _fairness(req: pd.DataFrame, w_p: float, w_q: float) -> tuple[dict, pd.DataFrame]:
    """Fairness metrics, and each client's backlogged seconds, service and rate."""
    grid = _grid(req)
    curves, backlog = m.service_curves(req, grid, w_p, w_q), m.backlogged(req, grid)
    acc = m.accumulated_service_difference(curves, backlog)
    pair_max, pair = m.pair_service_difference(curves, backlog)
    per_client = m.backlogged_service(curves, backlog)
    ticks = m.artifact_ticks(_horizon(req))
    rates = m.service_rate(req, ticks, w_p=w_p, w_q=w_q), m.demand_rate(req, ticks, w_p=w_p, w_q=w_q)
    window = m.windowed_difference(*rates)
    at = np.r_[m.WARMUP_S, ticks]
    acc_at_ticks = m.accumulated_service_difference(m.service_curves(req, at, w_p, w_q), m.backlogged(req, at))
    fairness = {
        "jain": m.jain_index(per_client["rate"].dropna()),
        "jain_total_service": m.jain_index(m.total_service(req, w_p, w_q)),
        "acc_service_diff_max": float(acc.max()),
        "acc_service_diff_mean": float(acc.mean()),
        "pair_service_diff_max": pair_max,
        "pair_service_diff_clients": pair,
        "windowed_diff": {"max": window.max(), "mean": window.mean(), "var": window.var(ddof=0)},
        "series": {
            "t": ticks,
            "windowed_diff": window.to_numpy(),
            "acc_service_diff": acc_at_ticks.to_numpy()[1:],
        },
    }
    return fairness, per_client


def _bound(req: pd.DataFrame, kv_capacity: float, w_p: float, w_q: float, fairness: dict) -> dict:
    """The VTC bound for this workload and engine, and whether the run stayed within it."""
    max_prompt, min_weight = int(req["prompt_tokens"].max()), float(req["weight"].min())
    value = m.vtc_bound(max_prompt, kv_capacity, w_p, w_q, min_weight)
    return {
        "value": value,
        "max_prompt_tokens": max_prompt,
        "kv_capacity_tokens": kv_capacity,
        "min_weight": min_weight,
        "held": fairness["pair_service_diff_max"] <= value,
        "acc_service_diff_held": fairness["acc_service_diff_max"] <= value,
    }


def _clients(req: pd.DataFrame, w_p: float, w_q: float, backlogged: pd.DataFrame, latency: dict) -> dict:
    """Per client: counts, weight, service (total and while backlogged) and latency stats."""
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
    counts["service"] = m.total_service(req, w_p, w_q)
    counts["backlogged_s"] = backlogged["seconds"]
    counts["backlogged_service"] = backlogged["service"]
    counts["backlogged_rate"] = backlogged["rate"]
    return {str(c): {**row, "latency": latency.get(str(c))} for c, row in counts.to_dict("index").items()}


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


# -- thresholds ---------------------------------------------------------------------------


def check_thresholds(
    result: AuditResult, max_discrepancy: float | None = None, min_jain: float | None = None
) -> list[str]:
    """One line per violation, naming the run and the metric.

    ``max_discrepancy`` bounds ``pair_service_diff_max`` (the VTC bound's left side) in multiples
    of the run's VTC bound (1 = the bound itself); ``min_jain`` bounds ``jain``.  An undefined Jain
    index (no client was ever backlogged) is not a violation.
    """
    lines = []
    for run in result.runs:
        fair = run["fairness"]
        diff, jain, bound = fair["pair_service_diff_max"], fair["jain"], run["bound"]["value"]
        if max_discrepancy is not None and diff > max_discrepancy * bound:
            lines.append(
                f"{run['name']}: pair_service_diff_max {diff:.1f} is {diff / bound:.3g}x the VTC bound "
                f"{bound:g}, over the allowed {max_discrepancy:g}x"
            )
        if min_jain is not None and jain is not None and jain < min_jain:
            lines.append(f"{run['name']}: jain {jain:.4f} is below {min_jain:g}")
    return lines


# -- rendering ----------------------------------------------------------------------------

SUMMARY_ROWS = (
    ("throughput (tok/s)", ("throughput", "tokens_per_s"), ",.1f"),
    ("output (tok/s)", ("throughput", "output_tokens_per_s"), ",.1f"),
    ("requests/s", ("throughput", "requests_per_s"), ".3f"),
    ("TTFT p50 (s)", ("latency", "ttft", "p50"), ".3f"),
    ("TTFT p90 (s)", ("latency", "ttft", "p90"), ".3f"),
    ("TTFT p99 (s)", ("latency", "ttft", "p99"), ".3f"),
    ("TPOT p50 (s)", ("latency", "tpot", "p50"), ".4f"),
    ("TPOT p99 (s)", ("latency", "tpot", "p99"), ".4f"),
    ("e2e p50 (s)", ("latency", "e2e", "p50"), ".2f"),
    ("e2e p99 (s)", ("latency", "e2e", "p99"), ".2f"),
    ("utilization (busy)", ("utilization", "busy_fraction"), ".1%"),
    ("MFU", ("utilization", "mfu"), ".1%"),
    ("Jain (backlogged rate)", ("fairness", "jain"), ".4f"),
    ("max acc. service diff", ("fairness", "acc_service_diff_max"), ",.0f"),
    ("max pair service diff", ("fairness", "pair_service_diff_max"), ",.0f"),
    ("VTC bound", ("bound", "value"), ",.0f"),
    ("bound held?", ("bound", "held"), ""),
    ("windowed diff max", ("fairness", "windowed_diff", "max"), ",.1f"),
    ("windowed diff mean", ("fairness", "windowed_diff", "mean"), ",.1f"),
    ("rejected", ("requests", "rejected"), ","),
    ("preemptions", ("requests", "preemptions"), ","),
)
CLIENT_COLUMNS = (
    ("requests", ("requests",), ","),
    ("rejected", ("rejected",), ","),
    ("service", ("service",), ",.0f"),
    ("backlogged rate", ("backlogged_rate",), ",.1f"),
    ("TTFT p50", ("latency", "ttft", "p50"), ".3f"),
    ("TTFT p99", ("latency", "ttft", "p99"), ".3f"),
    ("TPOT p50", ("latency", "tpot", "p50"), ".4f"),
    ("e2e p50", ("latency", "e2e", "p50"), ".2f"),
    ("e2e p99", ("latency", "e2e", "p99"), ".2f"),
    ("queue p50", ("latency", "queue", "p50"), ".3f"),
)


def _get(record: dict, keys) -> object:
    for key in keys:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def _summary_table(result: AuditResult) -> tuple[list[str], list[list[str]]]:
    """Metrics as rows, one column per run."""
    header = ["metric"] + [run["name"] for run in result.runs]
    rows = [[label] + [_fmt(_get(run, keys), spec) for run in result.runs] for label, keys, spec in SUMMARY_ROWS]
    return header, rows


# The terminal gets the columns an operator scans first; Markdown and JSON have them all.
TERMINAL_CLIENT_COLUMNS = tuple(c for c in CLIENT_COLUMNS if c[0] in ("requests", "rejected", "service", "TTFT p50", "TTFT p99", "e2e p99"))


def _client_table(result: AuditResult, columns=CLIENT_COLUMNS) -> tuple[list[str], list[list[str]]]:
    """One row per (run, client)."""
    header = ["run", "client"] + [label for label, _, _ in columns]
    rows = [
        [run["name"], client] + [_fmt(_get(info, keys), spec) for _, keys, spec in columns]
        for run in result.runs
        for client, info in run["clients"].items()
    ]
    return header, rows


def to_json(result: AuditResult) -> str:
    """The full audit as indented JSON."""
    return json.dumps({"runs": result.runs}, indent=2, allow_nan=False)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _markdown(header: list[str], rows: list[list[str]], left: int) -> str:
    """A Markdown table, the first ``left`` columns left-aligned and the rest right-aligned."""
    rule = "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"
    lines = ["| " + " | ".join(map(_cell, header)) + " |", rule]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(result: AuditResult) -> str:
    """A side-by-side table of the runs, then a per-client table."""
    parts = ["## Schedulers", "", _markdown(*_summary_table(result), left=1), "", "## Per client", ""]
    parts += [_markdown(*_client_table(result), left=2), ""]
    return "\n".join(parts)


def render_rich(result: AuditResult, console: Console) -> None:
    """Print the two tables of :func:`to_markdown` as rich tables."""
    for title, (header, rows), left in (
        ("Schedulers", _summary_table(result), 1),
        ("Per client", _client_table(result, TERMINAL_CLIENT_COLUMNS), 2),
    ):
        table = Table(title=title)
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i < left else "right", no_wrap=i < left)
        for row in rows:
            table.add_row(*row)
        console.print(table)
