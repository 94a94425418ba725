"""``equinox``: a thin typer layer over the library.  Every command calls one
library function that tests call directly; this module parses options, shows
progress and turns bad input into a one-line error with exit code 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from traces.errors import InputError

app = typer.Typer(
    name="equinox",
    help="Replay multi-tenant LLM workloads under fair schedulers and audit who got served.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
traces_app = typer.Typer(help="Load, convert and synthesise workloads (the canonical request table).", no_args_is_help=True)
app.add_typer(traces_app, name="traces")

console = Console()
err_console = Console(stderr=True)


def user_errors(fn):
    """Bad input: one line on stderr, exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except FileNotFoundError as exc:
            err_console.print(f"[bold red]error:[/] {exc.filename}: no such file", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _split(values: List[str]) -> List[str]:
    """Accept both ``--scheduler a,b`` and ``--scheduler a --scheduler b``."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


# --------------------------------------------------------------------------- workload options
WORKLOAD_HELP = (
    "A synthetic workload name (see `equinox traces list`), 'lmsys' for the VTC LMSYS trace, "
    "or a file: canonical Parquet/CSV, ShareGPT JSON, VTC LMSYS CSV, Azure LLM trace CSV."
)


def _load(workload, *, clients, client_dist, rate, arrival, time_scale, seed, fmt, tokenizer):
    from traces import load_workload

    return load_workload(
        workload,
        clients=clients,
        client_dist=client_dist,
        rate=rate,
        arrival=arrival,
        time_scale=time_scale,
        seed=seed,
        format=fmt,
        tokenizer=tokenizer,
    )


# --------------------------------------------------------------------------- replay
@app.command()
@user_errors
def replay(
    workload: str = typer.Option("overload", "--workload", "-w", help=WORKLOAD_HELP),
    scheduler: List[str] = typer.Option(
        ["fcfs,vtc"], "--scheduler", "-s", help="Comma-separated schedulers: fcfs, vtc, lcf, vtc-predict, vtc-oracle[:P], rpm[:N]."
    ),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="Results directory; one sub-directory per scheduler."),
    preset: str = typer.Option(
        "vtc-a10g-llama2-7b", help="Engine preset (hardware + model); see `equinox presets`. The default is the VTC paper's engine."
    ),
    seed: int = typer.Option(42, help="Seed for synthetic arrivals, client assignment and oracle noise."),
    clients: Optional[int] = typer.Option(None, help="Assign N clients (seeded; replaces any clients the trace has)."),
    client_dist: str = typer.Option("uniform", help="How --clients are assigned: uniform or zipf."),
    rate: Optional[float] = typer.Option(None, help="Requests/s for a trace without timestamps."),
    arrival: str = typer.Option("poisson", help="Arrival process with --rate: poisson or gamma."),
    time_scale: float = typer.Option(1.0, help="Stretch real timestamps (2 = half the rate)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Force the input format instead of detecting it."),
    tokenizer: str = typer.Option("cl100k_base", help="Tokenizer for traces with text (ShareGPT)."),
    kv_capacity: Optional[int] = typer.Option(None, help="KV cache capacity in tokens (default: the preset's)."),
    max_running: Optional[int] = typer.Option(None, help="Cap on running requests (default: the preset's)."),
    max_batch_tokens: Optional[int] = typer.Option(None, help="Token budget per step (default: the preset's)."),
    chunked_prefill: bool = typer.Option(True, help="Split long prompts across steps to fit the token budget."),
    admit_every: Optional[int] = typer.Option(
        None, min=1, help="Admit new requests every N steps (default: the preset's; VTC's engine merges every 10)."
    ),
    w_p: float = typer.Option(1.0, help="Service price of a prompt token."),
    w_q: float = typer.Option(2.0, help="Service price of an output token."),
):
    """Replay a workload on the simulated engine under one or more schedulers.

    Writes OUT/<scheduler>/requests.parquet, steps.parquet and run.json.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.replay import replay as run_replay
    from schedulers import ServiceWeights, run_name

    specs = _split(scheduler)
    for spec in specs:
        run_name(spec)  # fail on a bad name before loading anything
    table = _load(
        workload, clients=clients, client_dist=client_dist, rate=rate, arrival=arrival,
        time_scale=time_scale, seed=seed, fmt=fmt, tokenizer=tokenizer,
    )  # fmt: skip
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:
        runs = run_replay(
            table, specs, out, workload_name=workload, preset=preset, seed=seed,
            service=ServiceWeights(w_p, w_q), progress=progress,
            kv_capacity_tokens=kv_capacity, max_running=max_running,
            max_batch_tokens=max_batch_tokens, chunked_prefill=chunked_prefill, admit_every=admit_every,
        )  # fmt: skip
    for run in runs:
        console.print(f"wrote {run}")
    console.print(f"next: equinox audit {out}")


# --------------------------------------------------------------------------- audit
@app.command()
@user_errors
def audit(
    runs: List[Path] = typer.Argument(..., help="Run directories, or a replay output holding several."),
    fmt: str = typer.Option("table", "--format", "-f", help="table (terminal), markdown or json."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the markdown/json report to this file."),
    max_discrepancy: Optional[float] = typer.Option(
        None, help="Fail (exit 1) when a run's max accumulated service difference exceeds this many bounds (1 = the VTC bound)."
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


# --------------------------------------------------------------------------- traces
@traces_app.command("list")
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


@traces_app.command("synth")
@user_errors
def traces_synth(
    name: str = typer.Argument(..., help="A workload of ALGORITHMS.md section 6, e.g. overload."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .parquet file."),
    seed: int = typer.Option(42, help="Seed for arrival phases and Poisson gaps."),
):
    """Generate one of VTC's synthetic workloads as a canonical Parquet file."""
    from traces import synthesize

    _write_workload(synthesize(name, seed=seed), out)


@traces_app.command("convert")
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
    table = _load(
        path, clients=clients, client_dist=client_dist, rate=rate, arrival=arrival,
        time_scale=time_scale, seed=seed, fmt=fmt, tokenizer=tokenizer,
    )  # fmt: skip
    _write_workload(table, out)


# --------------------------------------------------------------------------- listings
@app.command("presets")
def list_presets():
    """Engine presets: hardware, model, KV capacity and batch limits."""
    from rich.table import Table

    from engine.presets import PRESETS

    table = Table()
    table.add_column("preset", no_wrap=True)
    for header in ("GPU x TP", "KV tokens", "max running", "token budget"):
        table.add_column(header, justify="right")
    for name, p in PRESETS.items():
        gpu = f"{p.hardware.name} x{p.tensor_parallel}"
        table.add_row(name, gpu, f"{p.kv_capacity_tokens:,}", str(p.max_running), str(p.max_batch_tokens))
    console.print(table)


@app.command("schedulers")
def list_schedulers():
    """The scheduling policies replay accepts."""
    from rich.table import Table

    from schedulers import POLICIES

    table = Table("scheduler", "what it does")
    for name, (_, text) in POLICIES.items():
        table.add_row(name, text)
    console.print(table)


def main() -> None:  # pragma: no cover
    app()
