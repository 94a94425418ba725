"""`equinox audit`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from equinox_cli.common import (
    check_output_file,
    console,
    err_console,
    user_errors,
)
from traces.errors import InputError


@user_errors
def audit(
    runs: List[Path] = typer.Argument(..., help="Run directories, or a replay output holding several."),
    fmt: str = typer.Option("table", "--format", "-f", help="What to print: table (terminal), markdown or json."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the markdown/json report to this file."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report (figures embedded)."),
    markdown: Optional[Path] = typer.Option(
        None, "--markdown", help="Write a Markdown report, its PNG figures next to it (<stem>-<figure>.png)."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full audit as JSON."),
    baseline: Optional[Path] = typer.Option(
        None,
        "--baseline",
        help="A run or replay directory to compare with (runs matched by their trailing directories).",
    ),
    policy: Optional[Path] = typer.Option(None, "--policy", help="A TOML file of thresholds (see docs/AUDIT.md)."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write the checks as JUnit XML."),
    max_discrepancy: Optional[float] = typer.Option(
        None,
        help="Fail (exit 1) when a run's max pair service difference exceeds this many bounds (1 = the VTC bound); "
        "overrides the policy's max_service_diff.",
    ),
    min_jain: Optional[float] = typer.Option(
        None, help="Fail (exit 1) when a run's Jain's index is below this; overrides the policy's min_jain."
    ),
    allow_mixed: bool = typer.Option(
        False, "--allow-mixed", help="Audit runs of different workloads side by side (refused by default)."
    ),
    vtc_windows: bool = typer.Option(
        False,
        "--vtc-windows",
        help="Place the windowed difference's 19 centres as the VTC artifact's revision tables do "
        "(over [30 s, 600 s]) instead of over [30 s, last served arrival].",
    ),
):
    """Fairness and latency per run, side by side; exits 1 when a check fails, 2 on bad input."""
    from engine.results import atomic_write_text
    from reports.audit import audit as run_audit
    from reports.audit import to_json
    from reports.policy import Policy, evaluate, load_policy
    from reports.tables import render_rich

    if fmt not in ("table", "markdown", "json"):
        raise InputError(f"unknown format {fmt!r}; expected table, markdown or json", source="--format")
    for option, path in (("--out", out), ("--html", html), ("--markdown", markdown), ("--json", json_out),
                         ("--junit", junit)):  # fmt: skip
        if path is not None:
            check_output_file(path, option)
    rules = (load_policy(policy) if policy else Policy()).override(max_service_diff=max_discrepancy, min_jain=min_jain)
    if rules.max_regression_pct is not None and baseline is None:
        raise InputError("max_regression_pct needs --baseline DIR", source=str(policy))
    result = run_audit(runs, baseline=baseline, allow_mixed=allow_mixed, vtc_windows=vtc_windows)
    checks = evaluate(result.runs, rules)

    if fmt == "table":
        render_rich(result, console, checks)
    elif out is None:
        text = to_json(result, checks) if fmt == "json" else _markdown(result, checks)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if out is not None:
        text = to_json(result, checks) if fmt == "json" or out.suffix == ".json" else _markdown(result, checks)
        atomic_write_text(text, out)
        err_console.print(f"wrote {out}")
    if json_out is not None:
        atomic_write_text(to_json(result, checks) + "\n", json_out)
        err_console.print(f"wrote {json_out}")
    if html is not None or markdown is not None:
        _write_reports(result, checks, html, markdown)
    if junit is not None:
        from reports.junit import to_junit

        atomic_write_text(to_junit(checks), junit)
        err_console.print(f"wrote {junit}")
    failures = [c for c in checks if c.status == "fail"]
    for check in failures:
        err_console.print(f"[bold red]FAIL[/] {check.line}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)


def _markdown(result, checks) -> str:
    from reports.markdown import to_markdown

    return to_markdown(result, checks)


def _write_reports(result, checks, html: Optional[Path], markdown: Optional[Path]) -> None:
    """Render the figures once and write the HTML and Markdown reports that were asked for."""
    from engine.results import atomic_write_text
    from reports.figures import render
    from reports.html import to_html
    from reports.markdown import write_markdown

    plots = render(result)
    if html is not None:
        atomic_write_text(to_html(result, plots, checks), html)
        err_console.print(f"wrote {html}")
    if markdown is not None:
        write_markdown(result, plots, markdown, checks)
        err_console.print(f"wrote {markdown} and {len(plots)} figures next to it")
