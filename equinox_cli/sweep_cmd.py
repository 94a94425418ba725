"""`equinox sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from rich.markup import escape

from equinox_cli.common import WORKLOAD_HELP, console, err_console, split_list, user_errors

if TYPE_CHECKING:
    import pandas as pd


@user_errors
def sweep(
    workload: List[str] = typer.Option(
        ["overload"], "--workload", "-w", help=WORKLOAD_HELP + " Several: comma-separated or repeated."
    ),
    scheduler: List[str] = typer.Option(
        ["equinox"],
        "--scheduler",
        "-s",
        help="Schedulers, comma-separated or repeated. The knob grid applies to equinox and equinox-oracle; "
        "any other scheduler runs once per workload and seed.",
    ),
    grid: List[str] = typer.Option(
        ["alpha=0,0.5,1", "gamma=0,1"],
        "--grid",
        "-g",
        help="KNOB=V1,V2,... (repeat for more knobs): alpha, beta, "
        "gamma, q_min, kappa, kappa_r, residency, quantile, overcommit, ttft_slo_s, tpot_slo_s, budget_min, "
        "budget_max, utilization_target.",
    ),
    seed: List[str] = typer.Option(
        ["42"], "--seed", help="Seeds of the workload and the runs, comma-separated or repeated."
    ),
    out: Path = typer.Option(
        Path("runs/sweep"),
        "--out",
        "-o",
        help="OUT/<workload>/seed-<seed>/<knobs>/<scheduler>/ per cell, plus summary.csv and frontier.png.",
    ),
    preset: str = typer.Option("vtc-a10g-llama2-7b", help="Engine preset."),
    backend: str = typer.Option(
        "local",
        help="local: worker processes on this machine (--jobs); "
        "ray: one Ray task per cell, on a local Ray or a cluster (pip install 'equinox-fair\\[ray]').",
    ),
    jobs: int = typer.Option(2, min=1, help="Cells replayed in parallel by the local backend."),
    ray_address: Optional[str] = typer.Option(
        None,
        "--ray-address",
        help="With --backend ray: 'auto' joins the Ray cluster running here, HOST:PORT or ray://HOST:PORT a remote "
        "one; default: a new local Ray instance (or the cluster $RAY_ADDRESS names).",
    ),
    retries: int = typer.Option(1, min=0, help="Times a failed cell is retried before it is reported."),
    clean: bool = typer.Option(
        False,
        "--clean",
        help="Delete runs under OUT that are not cells of this sweep (an earlier grid's) instead of refusing to run.",
    ),
):
    """Replay every (workload, seed, scheduler, knobs) cell and plot the fairness / TTFT / throughput frontier.

    The knob grid multiplies only the schedulers it changes (equinox, equinox-oracle). With
    --backend ray each cell is a Ray task that returns its run's files, and this machine
    writes them under OUT, so `equinox audit OUT` compares every cell. Exits 1 when a cell
    still fails after its retries (it is listed, never dropped).
    """
    from engine.results import atomic_write_text
    from engine.sweep import check_backend, parse_grid, parse_seeds, plan, plot_frontier, summarise

    check_backend(backend)
    cells = plan(split_list(workload), split_list(scheduler), parse_seeds(seed), parse_grid(grid))
    _clear_foreign_runs(out, cells, clean)
    results = _run(cells, out, backend=backend, jobs=jobs, ray_address=ray_address, retries=retries, preset=preset)
    summary = summarise(results)
    atomic_write_text(summary.to_csv(index=False), out / "summary.csv")
    written = [out / "summary.csv"]
    if summary["error"].isna().any():
        plot_frontier(summary, out / "frontier.png")
        written.append(out / "frontier.png")
    console.print(_table(summary))
    console.print(f"wrote {' and '.join(map(str, written))}")
    failed = [r for r in results if r.error is not None]
    for r in failed:
        attempts = f"{r.attempts} attempt{'s' if r.attempts > 1 else ''}"
        err_console.print(
            f"[bold red]FAILED[/] cell {r.cell.path.as_posix()} after {attempts}: {escape(r.error)}",
            highlight=False,
            soft_wrap=True,
        )
    if failed:
        raise typer.Exit(1)


def _clear_foreign_runs(out: Path, cells, clean: bool) -> None:
    """Refuse an OUT that holds runs of another grid (audit would mix them in), or delete them."""
    import shutil

    from engine.sweep import foreign_runs
    from traces.errors import InputError

    foreign = foreign_runs(out, cells)
    if any(run.resolve() == out.resolve() for run in foreign):
        raise InputError("is a run directory itself; choose another --out for the sweep", source=str(out))
    if foreign and not clean:
        shown = ", ".join(run.relative_to(out).as_posix() for run in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise InputError(
            f"holds {len(foreign)} run(s) that are not cells of this sweep ({shown}{more}); "
            "choose another --out, or pass --clean to delete them",
            source=str(out),
        )
    root = out.resolve()
    for run in foreign:
        run.unlink() if run.is_symlink() else shutil.rmtree(run)
        parent = run.parent
        while parent.resolve() != root and not any(parent.iterdir()):  # and the folders it leaves empty
            parent.rmdir()
            parent = parent.parent


def _run(cells, out: Path, **options):
    """Run the sweep behind a progress bar that advances as cells finish."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from engine.sweep import run_sweep
    from equinox_cli.common import progress_display

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with progress_display(*columns) as progress:
        task = progress.add_task(f"sweep ({options['backend']})", total=len(cells))
        return run_sweep(cells, out, on_done=lambda result: progress.advance(task), **options)


def _table(summary: pd.DataFrame):
    import pandas as pd
    from rich.table import Column, Table

    cell = Column("cell", overflow="fold")  # a cell's path, whole
    view = Table(cell, "Jain", "pair diff / bound", "TTFT p50", "TTFT p99", "tokens/s", title="sweep")
    for _, row in summary.iterrows():
        if pd.isna(row["error"]):
            view.add_row(
                row["cell"], f"{row['jain']:.3f}", f"{row['pair_service_diff'] / row['bound']:.3f}",
                f"{row['ttft_p50_s']:.2f}", f"{row['ttft_p99_s']:.2f}", f"{row['tokens_per_s']:,.0f}",
            )  # fmt: skip
        else:
            view.add_row(row["cell"], "[red]failed[/]", escape(row["error"]), "", "", "")
    return view
