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
    ("preemptions", ("preemptions",), ","),
    ("demanded", ("demanded",), ",.0f"),
    ("service", ("service",), ",.0f"),
    ("served", ("served_fraction",), ".1%"),
    ("backlogged rate", ("backlogged_rate",), ",.1f"),
    ("TTFT p50", ("latency", "ttft", "p50"), ".3f"),
    ("TTFT p99", ("latency", "ttft", "p99"), ".3f"),
    ("TPOT p50", ("latency", "tpot", "p50"), ".4f"),
    ("e2e p50", ("latency", "e2e", "p50"), ".2f"),
    ("e2e p99", ("latency", "e2e", "p99"), ".2f"),
    ("queue p50", ("latency", "queue", "p50"), ".3f"),
    ("queue p99", ("latency", "queue", "p99"), ".3f"),
    ("starvation", ("starvation_s",), ".2f"),
)
# The terminal gets the columns an operator scans first; Markdown, HTML and JSON have them all.
TERMINAL_CLIENT_COLUMNS = tuple(
    c
    for c in CLIENT_COLUMNS
    if c[0] in ("requests", "rejected", "service", "TTFT p50", "TTFT p99", "e2e p99", "starvation")
)


def fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
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


def render_rich(result: AuditResult, console: Console, checks: list[Check] = ()) -> None:
    """The summary, per-client, baseline and check tables, for the terminal."""
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
        out = Table(title=title)
        for i, name in enumerate(header):
            out.add_column(name, justify="left" if i < left else "right", no_wrap=i < min(left, 2))
        for row in rows:
            out.add_row(*row)
        console.print(out)
