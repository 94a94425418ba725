"""What every command shares: the consoles, the bad-input guard, list options."""

from __future__ import annotations

import functools
import math
from pathlib import Path
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


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is a file (so nothing can be created under it)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_dir(path: Path, option: str) -> None:
    """Refuse an output directory that is a file or lies under one, before anything is written."""
    if path.exists() and not path.is_dir():
        raise InputError("is a file; expected a directory (or a path to create one)", source=f"{option} {path}")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise InputError(f"{blocker} is a file, so no directory can be created under it", source=f"{option} {path}")


def check_output_file(path: Path, option: str) -> None:
    """Refuse an output file that is a directory or lies under a file, before anything is written."""
    if path.is_dir():
        raise InputError("is a directory; expected a file name", source=f"{option} {path}")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise InputError(f"{blocker} is a file, so nothing can be written under it", source=f"{option} {path}")


def check_number(value, option: str, *, low=None, above=None, integer: bool = False) -> None:
    """A finite number (an integer if ``integer``) >= ``low`` or > ``above``; else one-line InputError."""
    if value is None:
        return
    what = "an integer" if integer else "a number"
    if low is not None:
        what += f" >= {low}"
    if above is not None:
        what += f" > {above}"
    ok = math.isfinite(value) and (low is None or value >= low) and (above is None or value > above)
    if not ok:
        raise InputError(f"expected {what}, got {value!r}", source=option)


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
