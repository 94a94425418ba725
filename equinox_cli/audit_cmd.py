"""`equinox audit`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from equinox_cli.common import (
    console,
    err_console,
    user_errors,
)
from traces.errors import InputError


@user_errors
def audit(
    runs: List[Path] = typer.Argument(..., help="Run directories, or a replay output holding several."),
    fmt: str = typer.Option("table", "--format", "-f", help="table (terminal), markdown or json."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the markdown/json report to this file."),
    max_discrepancy: Optional[float] = typer.Option(
        None,
        help="Fail (exit 1) when a run's max accumulated service difference exceeds this many bounds (1 = the VTC bound).",
    ),
    min_jain: Optional[float] = typer.Option(None, help="Fail (exit 1) when a run's Jain's index is below this."),
):
    """Fairness and latency per run, side by side; exits 1 when a threshold fails."""
    from engine.results import atomic_write_text
    from reports.audit import audit as run_audit
    from reports.audit import check_thresholds, render_rich, to_json, to_markdown

    if fmt not in ("table", "markdown", "json"):
        raise InputError(f"unknown format {fmt!r}; expected table, markdown or json", source="--format")
    result = run_audit(runs)
    if fmt == "table":
        render_rich(result, console)
    else:
        text = to_json(result) if fmt == "json" else to_markdown(result)
        if out is None:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if out is not None:
        text = to_json(result) if fmt == "json" or out.suffix == ".json" else to_markdown(result)
        atomic_write_text(text, out)
        err_console.print(f"wrote {out}")
    failures = check_thresholds(result, max_discrepancy=max_discrepancy, min_jain=min_jain)
    for line in failures:
        err_console.print(f"[bold red]FAIL[/] {line}", highlight=False)
    if failures:
        raise typer.Exit(1)
