"""`equinox sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from equinox_cli.common import WORKLOAD_HELP, console, err_console, user_errors


@user_errors
def sweep(
    workload: str = typer.Option("overload", "--workload", "-w", help=WORKLOAD_HELP),
    scheduler: str = typer.Option("equinox", "--scheduler", "-s", help="The scheduler whose knobs are swept."),
    grid: List[str] = typer.Option(
        ["alpha=0,0.5,1", "gamma=0,1"],
        "--grid",
        "-g",
        help="KNOB=V1,V2,... (repeat for more knobs): alpha, beta, "
        "gamma, delta, ttft_slo_s, tpot_slo_s, budget_min, budget_max, utilization_target.",
    ),
    out: Path = typer.Option(
        Path("runs/sweep"), "--out", "-o", help="One sub-directory per cell, plus summary.csv and frontier.png."
    ),
    preset: str = typer.Option("vtc-a10g-llama2-7b", help="Engine preset."),
    seed: int = typer.Option(42, help="Seed of the workload and the runs."),
    jobs: int = typer.Option(2, min=1, help="Cells replayed in parallel (local processes)."),
    retries: int = typer.Option(1, min=0, help="Times a failed cell is retried before it is reported."),
):
    """Replay a workload over a grid of Equinox knobs and plot the fairness / TTFT / throughput frontier.

    Exits 1 when a cell still fails after its retries (it is listed, never dropped).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from engine.results import atomic_write_text
    from engine.sweep import cells, parse_grid, plot_frontier, run_sweep, summarise
    from schedulers import run_name
    from traces import load_workload

    run_name(scheduler)
    parsed = parse_grid(grid)
    table = load_workload(workload, seed=seed)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err_console) as progress:
        task = progress.add_task(f"sweep {workload} / {scheduler}", total=len(cells(parsed)))
        results = run_sweep(
            table, scheduler, parsed, out, jobs=jobs, retries=retries, preset=preset, seed=seed,
            workload_name=workload, on_done=lambda r: progress.advance(task),
        )  # fmt: skip
    summary = summarise(results)
    atomic_write_text(summary.to_csv(index=False), out / "summary.csv")
    if summary["error"].isna().any():
        plot_frontier(summary, out / "frontier.png")
    view = Table("cell", "Jain", "pair diff / bound", "TTFT p50", "TTFT p99", "tokens/s", title=f"sweep {workload}")
    for _, row in summary.iterrows():
        if row["error"] is None or row["error"] != row["error"]:
            view.add_row(
                row["cell"], f"{row['jain']:.3f}", f"{row['pair_service_diff'] / row['bound']:.3f}",
                f"{row['ttft_p50_s']:.2f}", f"{row['ttft_p99_s']:.2f}", f"{row['tokens_per_s']:,.0f}",
            )  # fmt: skip
        else:
            view.add_row(row["cell"], "[red]failed[/]", row["error"], "", "", "")
    console.print(view)
    console.print(f"wrote {out / 'summary.csv'} and {out / 'frontier.png'}")
    failed = [r for r in results if r.error is not None]
    for r in failed:
        err_console.print(f"[bold red]FAILED[/] cell {r.path.name} after {r.attempts} attempts: {r.error}")
    if failed:
        raise typer.Exit(1)
