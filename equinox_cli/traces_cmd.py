"""`equinox traces ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from equinox_cli.common import (
    console,
    load,
    user_errors,
)
from traces.errors import InputError

app = typer.Typer(help="Load, convert and synthesise workloads (the canonical request table).", no_args_is_help=True)


@app.command("list")
def traces_list():
    """The synthetic workloads (ALGORITHMS.md section 6) and bundled traces."""
    from rich.table import Table

    from traces import SYNTHETIC_WORKLOADS

    table = Table("name", "description")
    for name, text in SYNTHETIC_WORKLOADS.items():
        table.add_row(name, text)
    table.add_row("lmsys", "VTC's LMSYS-derived trace: 27 clients, 1,500 requests over 600 s (bundled)")
    console.print(table)


def _write_workload(table, out: Path) -> None:
    from engine.results import atomic_write_parquet

    if out.suffix != ".parquet":
        raise InputError("the output must be a .parquet file", source=str(out))
    atomic_write_parquet(table, out)
    clients = len(set(table.column("client_id").to_pylist()))
    console.print(f"wrote {out}: {table.num_rows} requests, {clients} clients")


@app.command("synth")
@user_errors
def traces_synth(
    name: str = typer.Argument(..., help="A workload of ALGORITHMS.md section 6, e.g. overload."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .parquet file."),
    seed: int = typer.Option(42, help="Seed for arrival phases and Poisson gaps."),
):
    """Generate one of VTC's synthetic workloads as a canonical Parquet file."""
    from traces import synthesize

    _write_workload(synthesize(name, seed=seed), out)


@app.command("convert")
@user_errors
def traces_convert(
    path: str = typer.Argument(..., help="Input trace file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .parquet file."),
    clients: Optional[int] = typer.Option(None, help="Assign N clients (seeded; replaces any clients the trace has)."),
    client_dist: str = typer.Option("uniform", help="uniform or zipf."),
    rate: Optional[float] = typer.Option(None, help="Requests/s for a trace without timestamps."),
    arrival: str = typer.Option("poisson", help="poisson or gamma (with --rate)."),
    time_scale: float = typer.Option(1.0, help="Stretch real timestamps."),
    seed: int = typer.Option(42, help="Seed for client assignment and arrivals."),
    fmt: Optional[str] = typer.Option(None, "--format", help="sharegpt, vtc-lmsys, azure or canonical."),
    tokenizer: str = typer.Option("cl100k_base", help="Tokenizer for traces with text."),
):
    """Convert a ShareGPT / VTC LMSYS / Azure trace into the canonical Parquet workload."""
    table = load(
        path, clients=clients, client_dist=client_dist, rate=rate, arrival=arrival,
        time_scale=time_scale, seed=seed, fmt=fmt, tokenizer=tokenizer,
    )  # fmt: skip
    _write_workload(table, out)
