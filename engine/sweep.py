"""Knob sweeps: replay one workload over a grid of Equinox knobs, in parallel processes.

Each cell of the grid is one replay written to ``out/<cell>/<scheduler>/``; a cell that
fails is retried, and a cell that still fails is reported, never dropped silently.
``summarise`` audits every cell and ``plot_frontier`` draws fairness against TTFT and
throughput, the trade-off the knobs move along.
"""

from __future__ import annotations

import itertools
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pandas as pd
import pyarrow as pa

from schedulers import EquinoxKnobs
from traces.errors import InputError

KNOBS = {f.name for f in fields(EquinoxKnobs)} - {"lengths"}


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    """``["alpha=0,0.5,1", "delta=0.1"]`` -> ``{"alpha": [0, 0.5, 1], "delta": [0.1]}``."""
    grid: dict[str, list[float]] = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in KNOBS or not values:
            raise InputError(
                f"expected KNOB=V1,V2,... with KNOB one of {', '.join(sorted(KNOBS))}, got {item!r}", source="--grid"
            )
        try:
            grid[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise InputError(f"{item!r}: values must be numbers", source="--grid") from None
    return grid


def cells(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    """Every combination of the grid's values, in a stable order."""
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def cell_name(cell: dict[str, float]) -> str:
    return "_".join(f"{k}-{v:g}" for k, v in sorted(cell.items())) or "default"


@dataclass
class CellResult:
    cell: dict
    path: Path
    error: str | None = None
    attempts: int = 1


def _run_cell(workload: pa.Table, scheduler: str, cell: dict, out: Path, base: EquinoxKnobs, options: dict) -> str:
    from engine.replay import replay

    knobs = replace(base, **{k: (int(v) if k.startswith("budget_") else v) for k, v in cell.items()})
    replay(workload, [scheduler], out, equinox=knobs, **options)
    return str(out)


def run_sweep(
    workload: pa.Table,
    scheduler: str,
    grid: dict[str, list[float]],
    out_dir: Path,
    *,
    jobs: int = 2,
    retries: int = 1,
    base: EquinoxKnobs = EquinoxKnobs(),
    on_done=None,
    **options,
) -> list[CellResult]:
    """Replay every cell; returns one result per cell, in grid order, failures included."""
    out_dir = Path(out_dir)
    todo = [CellResult(cell, out_dir / cell_name(cell)) for cell in cells(grid)]
    pending = list(todo)
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for attempt in range(1 + retries):
            futures = {
                id(r): pool.submit(_run_cell, workload, scheduler, r.cell, r.path, base, options) for r in pending
            }
            failed = []
            for r in pending:
                r.attempts = attempt + 1
                try:
                    futures[id(r)].result()
                    r.error = None
                except Exception as exc:  # noqa: BLE001 - a cell's failure is reported, not raised
                    r.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                    failed.append(r)
                if on_done is not None and (r.error is None or attempt == retries):
                    on_done(r)
            pending = failed
            if not pending:
                break
    return todo


def summarise(results: list[CellResult]) -> pd.DataFrame:
    """One row per cell: its knobs and the audit's headline numbers (failed cells: error)."""
    from reports.audit import audit

    rows = []
    for r in results:
        row = {**r.cell, "cell": r.path.name, "error": r.error}
        if r.error is None:
            (summary,) = audit([r.path]).runs
            row.update(
                jain=summary["fairness"]["jain"],
                pair_service_diff=summary["fairness"]["pair_service_diff_max"],
                bound=summary["bound"]["value"],
                ttft_p50_s=summary["latency"]["ttft"]["p50"],
                ttft_p99_s=summary["latency"]["ttft"]["p99"],
                tokens_per_s=summary["throughput"]["tokens_per_s"],
            )
        rows.append(row)
    return pd.DataFrame(rows)


def plot_frontier(summary: pd.DataFrame, path: Path) -> None:
    """Jain's index against p99 TTFT, coloured by throughput, one labelled point per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = summary[summary["error"].isna()]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = ax.scatter(ok["ttft_p99_s"], ok["jain"], c=ok["tokens_per_s"], cmap="viridis", s=40)
    for _, row in ok.iterrows():
        ax.annotate(
            row["cell"], (row["ttft_p99_s"], row["jain"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    fig.colorbar(points, ax=ax, label="throughput (tokens/s)")
    ax.set_xlabel("p99 TTFT (s)")
    ax.set_ylabel("Jain's index (backlogged service rate)")
    ax.set_title("Equinox knob sweep: fairness vs latency vs throughput")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
