"""What every command shares: the consoles, the bad-input guard, list options."""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import time
from pathlib import Path
from typing import List

import typer
from rich.console import Console
from rich.markup import escape

from traces.errors import InputError

console = Console()
err_console = Console(stderr=True)


class Terminated(BaseException):
    """SIGTERM arrived: raised where the program is, so that every ``except BaseException`` cleanup
    (the atomic writes' temporary directories) runs on the way out."""


@contextlib.contextmanager
def sigterm_unwinds():
    """Within the block, SIGTERM raises :class:`Terminated` instead of killing the process outright."""

    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_errors(fn):
    """Bad input: one line on stderr, exit code 2, no traceback.  SIGTERM under :func:`sigterm_unwinds`:
    one line, exit 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Terminated:  # a command that runs under sigterm_unwinds()
            err_console.print("[bold red]terminated[/] (SIGTERM): the run being written was discarded", highlight=False)
            raise typer.Exit(143) from None
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


class LineProgress:
    """Progress for a log file or a pipe, where a live bar would show only at the end: a line when a
    task starts, one every ``every_s`` seconds while it advances, and one when it completes.
    Implements the part of ``rich.progress.Progress`` the commands use."""

    def __init__(self, console: Console, every_s: float = 5.0, clock=time.monotonic):
        self.console, self.every_s, self.clock = console, every_s, clock
        self.tasks: list[dict] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def _say(self, task: dict, text: str) -> None:
        self.console.print(f"{task['description']}: {text}", highlight=False, soft_wrap=True)

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        now = self.clock()
        self.tasks.append({"description": description, "total": total, "done": 0, "start": now, "last": now})
        task = self.tasks[-1]
        self._say(task, f"started ({total:,.0f} to do)" if total else "started")
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, completed=self.tasks[task_id]["done"] + advance)

    def update(self, task_id: int, completed: float | None = None, total: float | None = None, **_) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task["total"] = total
        if completed is None or task.get("finished"):
            return
        task["done"] = completed
        now, total = self.clock(), task["total"]
        if total and completed >= total:
            task["finished"] = True
            self._say(task, f"done, {completed:,.0f}/{total:,.0f} in {now - task['start']:.1f} s")
        elif now - task["last"] >= self.every_s:
            task["last"] = now
            share = f" ({completed / total:.0%})" if total else ""
            self._say(task, f"{completed:,.0f}/{total:,.0f}{share}, {now - task['start']:.1f} s")


def progress_display(*columns, transient: bool = False):
    """A live rich progress bar on a terminal; periodic lines (:class:`LineProgress`) otherwise."""
    if err_console.is_terminal:
        from rich.progress import Progress

        return Progress(*columns, console=err_console, transient=transient)
    return LineProgress(err_console)


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
