"""The report's tables as (header, rows) of strings, shared by the terminal, Markdown and HTML."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from reports.audit import AuditResult
from reports.compare import METRICS, get
from reports.policy import Check

SUMMARY_ROWS = (
    ("requests", ("requests", "total"), ","),
    ("throughput (tok/s)", ("throughput", "tokens_per_s"), ",.1f"),
    ("output (tok/s)", ("throughput", "output_tokens_per_s"), ",.1f"),
    ("requests/s", ("throughput", "requests_per_s"), ".3f"),
    ("TTFT mean (s)", ("latency", "ttft", "mean"), ".3f"),
    ("TTFT p50 (s)", ("latency", "ttft", "p50"), ".3f"),
    ("TTFT p90 (s)", ("latency", "ttft", "p90"), ".3f"),
    ("TTFT p99 (s)", ("latency", "ttft", "p99"), ".3f"),
    ("TPOT p50 (s)", ("latency", "tpot", "p50"), ".4f"),
    ("TPOT p99 (s)", ("latency", "tpot", "p99"), ".4f"),
    ("e2e p50 (s)", ("latency", "e2e", "p50"), ".2f"),
    ("e2e p99 (s)", ("latency", "e2e", "p99"), ".2f"),
    ("queueing p50 (s)", ("latency", "queue", "p50"), ".3f"),
    ("queueing p99 (s)", ("latency", "queue", "p99"), ".3f"),
    ("starvation (s)", ("starvation", "max_s"), ".2f"),
    ("utilization (busy)", ("utilization", "busy_fraction"), ".1%"),
    ("MFU", ("utilization", "mfu"), ".1%"),
    ("service received/demanded", ("service", "fraction"), ".1%"),
    ("Jain (backlogged rate)", ("fairness", "jain"), ".4f"),
    ("Jain (mean TTFT)", ("fairness", "jain_ttft"), ".4f"),
    ("Jain (engine-s, backlogged)", ("fairness", "jain_resource"), ".4f"),
    ("max acc. service diff", ("fairness", "acc_service_diff_max"), ",.0f"),
    ("max pair service diff", ("fairness", "pair_service_diff_max"), ",.0f"),
    ("VTC bound", ("bound", "value"), ",.0f"),
    ("bound held?", ("bound", "held"), ""),
    ("Equinox bound held?", ("equinox_bound", "held"), ""),
    ("windowed diff max", ("fairness", "windowed_diff", "max"), ",.1f"),
    ("windowed diff mean", ("fairness", "windowed_diff", "mean"), ",.1f"),
    ("windows' T (s)", ("fairness", "windowed_diff", "horizon_s"), ",.0f"),
    ("rejected", ("requests", "rejected"), ","),
    ("rejected by reason", ("requests", "rejected_by_reason"), ""),
    ("prefix-cache hit rate", ("prefix_cache", "hit_rate"), ".1%"),
    ("preemptions", ("requests", "preemptions"), ","),
)
CLIENT_COLUMNS = (
    ("requests", ("requests",), ","),
    ("rejected", ("rejected",), ","),
    ("preemptions", ("preemptions",), ","),
    ("demanded", ("demanded",), ",.0f"),
    ("service", ("service",), ",.0f"),
    ("served", ("served_fraction",), ".1%"),
    ("backlogged rate", ("backlogged_rate",), ",.1f"),
    ("engine-s rate", ("backlogged_engine_rate",), ".4f"),
    ("cache hits", ("cache_hit_rate",), ".1%"),
    ("TTFT mean", ("latency", "ttft", "mean"), ".3f"),
    ("TTFT p50", ("latency", "ttft", "p50"), ".3f"),
    ("TTFT p99", ("latency", "ttft", "p99"), ".3f"),
    ("TPOT p50", ("latency", "tpot", "p50"), ".4f"),
    ("e2e p50", ("latency", "e2e", "p50"), ".2f"),
    ("e2e p99", ("latency", "e2e", "p99"), ".2f"),
    ("queue p50", ("latency", "queue", "p50"), ".3f"),
    ("queue p99", ("latency", "queue", "p99"), ".3f"),
    ("starvation", ("starvation_s",), ".2f"),
    ("rejected by reason", ("rejected_by_reason",), ""),
)
# The terminal gets the columns an operator scans first; Markdown, HTML and JSON have them all.
TERMINAL_CLIENT_COLUMNS = tuple(
    c
    for c in CLIENT_COLUMNS
    if c[0] in ("requests", "rejected", "service", "served", "TTFT mean", "TTFT p99", "e2e p99", "starvation")
)


def fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):  # counts by reason
        return ", ".join(f"{k} {v:,}" for k, v in value.items()) or "-"
    return format(value, spec)


def summary_table(result: AuditResult) -> tuple[list[str], list[list[str]]]:
    """Metrics as rows, one column per run."""
    header = ["metric"] + [run["name"] for run in result.runs]
    rows = [[label] + [fmt(get(run, keys), spec) for run in result.runs] for label, keys, spec in SUMMARY_ROWS]
    return header, rows


def client_table(runs: list[dict], columns=CLIENT_COLUMNS) -> tuple[list[str], list[list[str]]]:
    """One row per (run, client)."""
    header = ["run", "client"] + [label for label, _, _ in columns]
    rows = [
        [run["name"], client] + [fmt(get(info, keys), spec) for _, keys, spec in columns]
        for run in runs
        for client, info in run["clients"].items()
    ]
    return header, rows


def _delta(entry: dict) -> str:
    old, new, pct = entry["baseline"], entry["value"], entry["change_pct"]
    if old is None or new is None:
        return "-"
    change = f"{pct:+.1f}%" if math.isfinite(pct) else "from 0"
    return f"{_number(old)} → {_number(new)} ({change})"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def delta_table(result: AuditResult) -> tuple[list[str], list[list[str]]] | None:
    """Baseline value → value (change) of each compared metric, one column per run; None without a baseline."""
    if not any("baseline" in run for run in result.runs):
        return None
    bases = [run.get("baseline") or {} for run in result.runs]
    header = ["metric"] + [run["name"] for run in result.runs]
    rows = [["baseline"] + [b.get("name") or b.get("reason", "-") for b in bases]]
    for name in METRICS:
        rows.append([name] + [_delta(b["metrics"][name]) if b.get("metrics") else "-" for b in bases])
    return header, rows


def check_table(checks: list[Check]) -> tuple[list[str], list[list[str]]]:
    return ["run", "check", "result", "reason"], [[c.run, c.name, c.status, c.reason] for c in checks]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[str]], left: int) -> str:
    """A Markdown table, the first ``left`` columns left-aligned and the rest right-aligned."""
    rule = "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"
    lines = ["| " + " | ".join(map(_cell, header)) + " |", rule]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _spread(run: dict, keys, label: str, spec: str, unit: str = "") -> str | None:
    """'label from X (client) to Y (client)' over the run's clients, None when no client has the value."""
    values = {c: get(info, keys) for c, info in run["clients"].items()}
    values = {c: v for c, v in values.items() if v is not None}
    if not values:
        return None
    lo, hi = min(values, key=values.get), max(values, key=values.get)
    return f"{label} from {values[lo]:{spec}}{unit} ({lo}) to {values[hi]:{spec}}{unit} ({hi})"


def verdict(result: AuditResult) -> list[str]:
    """The audit in words, one line per run and a first line on the bound: who got what, and which
    scheduler kept the VTC bound."""
    kept = [run["name"] for run in result.runs if get(run, ("bound", "held")) is True]
    broke = [run["name"] for run in result.runs if get(run, ("bound", "held")) is False]
    lines = []
    if kept or broke:
        head = f"VTC bound kept by {', '.join(kept) or 'none'}"
        lines.append(head + (f"; broken by {', '.join(broke)}." if broke else "."))
    for run in result.runs:
        bound, fair = run.get("bound") or {}, run.get("fairness") or {}
        parts = []
        if bound.get("value"):
            diff = fair.get("pair_service_diff_max") or 0.0
            pair = fair.get("pair_service_diff_clients")
            who = f" ({' vs '.join(pair)})" if pair and diff > 0 else ""
            verb = "kept" if bound.get("held") else "broke"
            parts.append(
                f"{verb} the bound: largest service gap between two backlogged clients {diff:,.0f}{who}, "
                f"{diff / bound['value']:.2f}x the bound {bound['value']:,.0f}"
            )
        else:
            parts.append("served nothing, so no bound applies")
        rates = _spread(run, ("backlogged_rate",), "service rate while backlogged", ",.1f", "/s")
        if rates:
            parts.append(rates + (f", Jain {fair['jain']:.3f}" if fair.get("jain") is not None else ""))
        ttft = _spread(run, ("latency", "ttft", "mean"), "mean TTFT", ".2f", " s")
        if ttft:
            parts.append(ttft + (f", Jain {fair['jain_ttft']:.3f}" if fair.get("jain_ttft") is not None else ""))
        rejected = get(run, ("requests", "rejected"))
        if rejected:
            parts.append(f"{rejected:,} rejected ({fmt(get(run, ('requests', 'rejected_by_reason')), '')})")
        lines.append(f"{run['name']}: " + "; ".join(parts) + ".")
    missing = sorted({note.split(":")[0] for run in result.runs for note in run.get("notes") or ()})
    if missing:
        lines.append(f"Not in these runs' files, so not shown: {', '.join(missing)} (older runs).")
    windows = [get(run, ("fairness", "windowed_diff", "placement")) for run in result.runs]
    if "last-arrival" in windows:
        lines.append(
            "Windowed difference: 19 centres over [30 s, T], T the last served arrival (--vtc-windows: T = 600 s)."
        )
    elif windows and "vtc-artifact" in windows:
        lines.append("Windowed difference: 19 centres over [30 s, 600 s], as the VTC artifact's revision tables.")
    return lines


def _width(text: str) -> int:
    return max((len(word) for word in str(text).split()), default=0)


def fitting_groups(header: list[str], rows: list[list[str]], keys: int, width: int) -> list[list[int]]:
    """Column indices of each table to print so that none is wider than ``width``: the first ``keys``
    columns in every table, the others in order, as many per table as fit (one at least). A header may
    wrap at its spaces; a cell never does."""
    need = [max([_width(header[i])] + [len(str(r[i])) for r in rows]) + 3 for i in range(len(header))]
    base = sum(need[:keys]) + 1
    groups, current, used = [], [], base
    for i in range(keys, len(header)):
        if current and used + need[i] > width:
            groups.append(current)
            current, used = [], base
        current.append(i)
        used += need[i]
    if current or not groups:
        groups.append(current)
    return [list(range(keys)) + group for group in groups]


def print_table(console: Console, title: str, header, rows, left: int, keys: int | None = None) -> None:
    """A rich table that is never truncated: split into several, each repeating the first ``keys``
    columns, when the console is too narrow (an 80-column terminal, or a pipe)."""
    keys = left if keys is None else keys
    groups = fitting_groups(header, rows, keys, console.width)
    for n, columns in enumerate(groups):
        name = title if len(groups) == 1 else f"{title} ({n + 1}/{len(groups)})"
        out = Table(title=name)
        for i in columns:
            longest = max([_width(header[i])] + [len(str(r[i])) for r in rows])
            out.add_column(header[i], justify="left" if i < left else "right", no_wrap=i < keys, min_width=longest)
        for row in rows:
            out.add_row(*(row[i] for i in columns))
        console.print(out)


def render_rich(result: AuditResult, console: Console, checks: list[Check] = ()) -> None:
    """The verdict in words, then the summary, per-client, baseline and check tables, for the terminal."""
    for line in verdict(result):
        console.print(line, highlight=False)
    tables = [
        ("Schedulers", summary_table(result), 1),
        ("Per client", client_table(result.runs, TERMINAL_CLIENT_COLUMNS), 2),
        ("Against the baseline", delta_table(result), 1),
        ("Checks", check_table(checks) if checks else None, 4),
    ]
    for title, table, left in tables:
        if table is None:
            continue
        header, rows = table
        print_table(console, title, header, rows, left, keys=min(left, 2) if title != "Checks" else 2)
