"""What every command shares: the consoles, the bad-input guard, list options."""

from __future__ import annotations

import functools
from typing import List

import typer
from rich.console import Console
from rich.markup import escape

from traces.errors import InputError

console = Console()
err_console = Console(stderr=True)


def user_errors(fn):
    """Bad input: one line on stderr, exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except FileNotFoundError as exc:
            err_console.print(f"[bold red]error:[/] {exc.filename}: no such file", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def split_list(values: List[str]) -> List[str]:
    """Accept both ``--scheduler a,b`` and ``--scheduler a --scheduler b``."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


WORKLOAD_HELP = (
    "A synthetic workload name (see `equinox traces list`), 'lmsys' for the VTC LMSYS trace, "
    "or a file: canonical Parquet/CSV, ShareGPT JSON, LMSYS-Chat-1M Parquet, Mooncake JSONL, BurstGPT CSV, "
    "VTC LMSYS CSV, Azure LLM trace CSV (docs/TRACES.md)."
)


def load(workload, *, clients, client_dist, rate, arrival, time_scale, seed, fmt, tokenizer):
    """Load a workload with the options replay and traces convert share."""
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
