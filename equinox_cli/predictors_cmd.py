"""`equinox train-predictors`: train MoPE from replay logs, or score a saved bundle on other logs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from equinox_cli.common import console, user_errors
from traces.errors import InputError

UNITS = {  # shown unit, scale from the stored unit
    "output_tokens": ("tokens", 1.0),
    "ttft_s": ("ms", 1e3),
    "tpot_s": ("ms", 1e3),
    "e2e_s": ("s", 1.0),
    "step_s": ("ms", 1e3),
    "utilization": ("MFU, %", 100.0),
    "tokens_per_s": ("tokens/s", 1.0),
}
LABELS = {
    "mope": "MoPE",
    "single": "single",
    "moving-average": "moving avg",
    "training-mean": "training mean",
    "training-median": "training median",
}


@user_errors
def train_predictors(
    runs: List[Path] = typer.Argument(..., help="Run directories, or replay outputs holding several."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bundle directory to write (train)."),
    evaluate: Optional[Path] = typer.Option(
        None, "--evaluate", help="Score this saved bundle on RUNS instead of training."
    ),
    holdout: float = typer.Option(0.2, help="Fraction of conversations (and steps) held out for the metrics."),
    seed: int = typer.Option(42, help="Seed of the split and of the models."),
):
    """Train MoPE predictors (experts by prompt category; by batch size for steps) and print held-out
    errors next to the baselines (output length: also Kendall tau and the calibrated p90's coverage)."""
    import predictors

    if (out is None) == (evaluate is None):
        raise InputError("give --out DIR to train, or --evaluate BUNDLE to score a saved bundle", source="--out")
    if evaluate is not None:
        report = predictors.evaluate(evaluate, runs)
        title = f"{evaluate} on {report.rows['requests']:,} requests, {report.rows['steps']:,} steps"
    else:
        report = predictors.train(runs, out, holdout=holdout, seed=seed)
        rows = report.rows
        title = f"held out: {rows['holdout_requests']:,} requests, {rows['holdout_steps']:,} steps"
    console.print(_table(report.metrics, title))
    if evaluate is None:
        console.print(f"wrote {out}")


def _number(x: float | None) -> str:
    """About three significant digits, without exponents."""
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) >= 0.01 else f"{x:.2g}"


def _table(metrics: dict, title: str):
    from rich.table import Table

    table = Table(title=title, caption="absolute error: mean and percentiles")
    table.add_column("target", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for header in ("n", "MAE", "p50", "p90", "p99", "Kendall tau", "p90 coverage"):
        table.add_column(header, justify="right")
    for target, by_model in metrics.items():
        unit, scale = UNITS[target]
        names = [target, f"[dim]{unit}[/]"]
        for i, (model, m) in enumerate(by_model.items()):
            cells = [_number(None if m[k] is None else m[k] * scale) for k in ("mae", "p50", "p90", "p99")]
            coverage = m.get("p90_coverage")
            cells += [_number(m.get("tau")), "-" if coverage is None else f"{coverage:.1%}"]
            table.add_row(
                names[i] if i < len(names) else "",
                LABELS[model],
                str(m["n"]),
                *cells,
                end_section=i == len(by_model) - 1,
            )
    return table
