"""Sweeps: replay a grid of (workload, seed, scheduler, knobs) cells in parallel.

The grid is every workload x seed x scheduler.  The knob grid applies to the schedulers
that take Equinox knobs (``equinox``, ``equinox-oracle``): each is replayed once per
combination of knob values; any other scheduler is replayed once per workload and seed,
since the knobs would not change it.  Each cell is one run directory::

    out/<workload>/seed-<seed>/<knobs>/<scheduler>/

``<knobs>`` is ``alpha-0.5_gamma-1`` for an Equinox cell and ``default`` otherwise; a file
workload is named by its file name.  ``equinox audit out`` finds every run, at any depth.

Backends (``backend=``):

* ``local``: ``jobs`` worker processes on this machine, writing their runs in place.
* ``ray``: one Ray task per cell (the optional extra ``ray``), on a new local Ray instance
  or a cluster (``ray_address``).  A task replays into a temporary directory on its worker
  and returns the run's files as bytes; the driver writes them under ``out``.  Workers need
  ``equinox-fair`` installed but no shared filesystem, and every result lands in one
  directory.  A run's files travel through Ray's object store, so each must fit in it.

Either backend ships each workload to its workers once (pool initializer, ``ray.put``).
A cell that fails is resubmitted by the driver, up to ``retries`` times, as soon as it
fails; a cell that still fails is reported with its error, never dropped.  ``summarise``
audits every cell and ``plot_frontier`` draws fairness against TTFT and throughput.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pandas as pd
import pyarrow as pa

from engine.replay import replay
from engine.results import atomic_directory
from schedulers import POLICIES, Equinox, EquinoxKnobs, make_policy, parse_spec, run_name
from traces.errors import InputError

KNOBS = {f.name for f in fields(EquinoxKnobs)} - {"lengths"}
BACKENDS = ("local", "ray")
METRICS = ("jain", "pair_service_diff", "bound", "ttft_p50_s", "ttft_p99_s", "tokens_per_s")


# -- the grid -----------------------------------------------------------------------------


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
            grid[name] = list(dict.fromkeys(float(v) for v in values.split(",")))
        except ValueError:
            raise InputError(f"{item!r}: values must be numbers", source="--grid") from None
    return grid


def parse_seeds(items: list[str]) -> list[int]:
    """``["1,2", "3"]`` -> ``[1, 2, 3]``."""
    try:
        return list(dict.fromkeys(int(v) for item in items for v in item.split(",")))
    except ValueError:
        raise InputError(f"expected whole numbers, got {', '.join(items)!r}", source="--seed") from None


def combinations(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    """Every combination of the knob grid's values, in a stable order."""
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def knobs_dir(knobs: dict[str, float]) -> str:
    """The directory of a knob combination: ``alpha-0.5_gamma-1`` (``default`` for none)."""
    return "_".join(f"{k}-{_number(v)}" for k, v in sorted(knobs.items())) or "default"


def _number(value: float) -> str:
    """The shortest text that reads back as ``value`` (so distinct values get distinct names)."""
    return repr(float(value)).removesuffix(".0")


def workload_dir(workload: str) -> str:
    """A workload's directory: a built-in name as is, a file by its file name, made filesystem-safe."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(workload).name).lstrip(".-") or "workload"


def takes_knobs(scheduler: str) -> bool:
    """Whether the Equinox knobs change this scheduler (``equinox``, ``equinox-oracle``)."""
    return POLICIES[parse_spec(scheduler)[0]][0] is Equinox


@dataclass(frozen=True)
class Cell:
    """One replay of a sweep: its knobs are empty for a scheduler that takes none."""

    workload: str
    seed: int
    scheduler: str
    knobs: tuple[tuple[str, float], ...] = ()

    @property
    def path(self) -> Path:
        """The run directory, relative to the sweep's output directory."""
        knobs = knobs_dir(dict(self.knobs))
        return Path(workload_dir(self.workload), f"seed-{self.seed}", knobs, run_name(self.scheduler))

    def equinox(self, base: EquinoxKnobs) -> EquinoxKnobs:
        return replace(base, **{k: (int(v) if k.startswith("budget_") else v) for k, v in self.knobs})


def plan(workloads: list[str], schedulers: list[str], seeds: list[int], grid: dict[str, list[float]]) -> list[Cell]:
    """Every cell of the sweep, in a stable order: by workload, seed, scheduler, then knobs.

    Repeats are dropped (``rpm:5`` and ``rpm(5)`` are one scheduler).  Raises ``InputError``
    for a bad scheduler spec, or for two workloads that would share a directory (files of
    one name in different folders), before any work."""
    workloads, seeds = _unique(workloads), _unique(seeds)
    clash = [name for name, n in Counter(map(workload_dir, workloads)).items() if n > 1]
    if clash:
        same = [w for w in workloads if workload_dir(w) == clash[0]]
        message = f"{' and '.join(same)} would share the directory {clash[0]!r}; rename one"
        raise InputError(message, source="--workload")
    for spec in schedulers:
        make_policy(spec)
    schedulers = _unique(schedulers, key=run_name)
    knob_cells = [tuple(sorted(c.items())) for c in combinations(grid)]
    return [
        Cell(workload, seed, scheduler, knobs)
        for workload in workloads
        for seed in seeds
        for scheduler in schedulers
        for knobs in (knob_cells if takes_knobs(scheduler) else [()])
    ]


def _unique(items, key=lambda item: item) -> list:
    """``items`` without repeats (by ``key``), in order."""
    first: dict = {}
    for item in items:
        first.setdefault(key(item), item)
    return list(first.values())


# -- running cells ------------------------------------------------------------------------


@dataclass
class CellResult:
    cell: Cell
    path: Path
    error: str | None = None
    attempts: int = 1


def run_sweep(
    cells: list[Cell],
    out_dir: Path,
    *,
    load: Callable[[str, int], pa.Table] | None = None,
    backend: str = "local",
    jobs: int = 2,
    retries: int = 1,
    ray_address: str | None = None,
    base: EquinoxKnobs = EquinoxKnobs(),
    on_done: Callable[[CellResult], None] | None = None,
    **options,
) -> list[CellResult]:
    """Replay every cell under ``out_dir``; one result per cell, in ``cells``' order, failures included.

    ``load(workload, seed)`` gives a workload's table (default: ``traces.load_workload``); each
    (workload, seed) is loaded once, here.  ``on_done(result)`` is called as each cell finishes
    for good (succeeded, or failed its last attempt), in completion order.  ``options`` go to
    :func:`engine.replay.replay` (``preset``, engine overrides).
    """
    check_backend(backend)
    out_dir = Path(out_dir)
    results = {cell: CellResult(cell, out_dir / cell.path) for cell in cells}
    tables = _load_tables(cells, load)
    with closing(_start(backend, tables, jobs=jobs, address=ray_address)) as pool:
        running = {pool.submit(cell, out_dir, base, options): result for cell, result in results.items()}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                result = running.pop(future)
                result.error = _gather(future, result.path)
                if result.error is not None and result.attempts <= retries:
                    result.attempts += 1
                    running[pool.submit(result.cell, out_dir, base, options)] = result
                elif on_done is not None:
                    on_done(result)
    return list(results.values())


def foreign_runs(out_dir: Path, cells: list[Cell]) -> list[Path]:
    """Run directories under ``out_dir`` that are not cells of this sweep (left by an earlier
    grid): ``equinox audit OUT`` would compare them too."""
    from reports.audit import find_runs

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    mine = {(out_dir / cell.path).resolve() for cell in cells}
    return [run for run in find_runs(out_dir) if run.resolve() not in mine]


def _load_tables(cells: list[Cell], load) -> dict[tuple[str, int], pa.Table]:
    if load is None:
        from traces import load_workload

        load = lambda workload, seed: load_workload(workload, seed=seed)  # noqa: E731
    return {key: load(*key) for key in _unique((cell.workload, cell.seed) for cell in cells)}


def check_backend(backend: str) -> None:
    """Fail on an unknown backend, or the ray backend without Ray, before any workload is loaded."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}", source="--backend")
    if backend == "ray":
        _import_ray()


def _start(backend: str, tables: dict, *, jobs: int, address: str | None):
    return LocalBackend(tables, jobs=jobs) if backend == "local" else RayBackend(tables, address=address)


def _gather(future: Future, path: Path) -> str | None:
    """Wait for a cell's job and write the files it returned (if any); its error, or None."""
    try:
        files = future.result()
        if files is not None:
            with atomic_directory(path) as tmp:
                for name, data in files.items():
                    (tmp / name).write_bytes(data)
    except Exception as exc:  # noqa: BLE001 - a cell's failure is reported, not raised
        return "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return None


def _replay(table: pa.Table, cell: Cell, out: Path, base: EquinoxKnobs, options: dict) -> Path:
    """Replay one cell into ``out/<scheduler>/``; returns that run directory."""
    (run_dir,) = replay(
        table, [cell.scheduler], out, equinox=cell.equinox(base), seed=cell.seed, workload_name=cell.workload, **options
    )
    return run_dir


class LocalBackend:
    """Worker processes on this machine.  The driver writes each workload once to an Arrow file
    in a temporary directory; a worker memory-maps only the workloads of the cells it runs (the
    pages are shared by every worker through the OS), not a copy of every workload each.

    Workers are spawned, not forked, so they inherit no threads or locks of the driver (a Ray
    client, a progress bar).  If a worker dies (killed for memory, say), the pool breaks and
    fails every cell it held; they are retried on a fresh pool."""

    def __init__(self, tables: dict, *, jobs: int):
        self._dir = tempfile.TemporaryDirectory(prefix="equinox-sweep-")
        self._files = {}
        for i, (key, table) in enumerate(tables.items()):
            path = Path(self._dir.name) / f"{i}.arrow"
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            self._files[key] = str(path)
        self._jobs = max(1, jobs)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_receive_tables,
            initargs=(self._files,),
        )

    def submit(self, cell: Cell, out_dir: Path, base: EquinoxKnobs, options: dict) -> Future:
        try:
            return self._pool.submit(_replay_in_place, cell, out_dir, base, options)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False)
            self._pool = self._new_pool()
            return self._pool.submit(_replay_in_place, cell, out_dir, base, options)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._dir.cleanup()


_FILES: dict[tuple[str, int], str] = {}  # a local worker's workloads: their Arrow files
_TABLES: dict[tuple[str, int], pa.Table] = {}  # ... and those it has mapped


def _receive_tables(files: dict) -> None:
    _FILES.update(files)


def _replay_in_place(cell: Cell, out_dir: Path, base: EquinoxKnobs, options: dict) -> None:
    key = (cell.workload, cell.seed)
    if key not in _TABLES:
        _TABLES[key] = pa.ipc.open_file(pa.memory_map(_FILES[key])).read_all()
    _replay(_TABLES[key], cell, out_dir / cell.path.parent, base, options)


class RayBackend:
    """One Ray task per cell, returning the run's files for the driver to write.

    ``address`` None starts a local Ray instance (or joins the cluster ``$RAY_ADDRESS`` names);
    ``"auto"`` joins the cluster running on this machine; ``HOST:PORT`` or ``ray://HOST:PORT``
    a remote one.  A Ray already initialised in this process is used as it is, and left running.
    Ray's own task retries are off: ``retries`` counts every attempt."""

    def __init__(self, tables: dict, *, address: str | None = None):
        self._ray = _import_ray()
        self._owns = not self._ray.is_initialized()
        if self._owns:
            _init_ray(self._ray, address)
        self._tables = {key: self._ray.put(table) for key, table in tables.items()}
        self._task = self._ray.remote(num_cpus=1, max_retries=0)(_replay_to_files)

    def submit(self, cell: Cell, out_dir: Path, base: EquinoxKnobs, options: dict) -> Future:
        ref = self._task.remote(self._tables[(cell.workload, cell.seed)], cell, base, options)
        return _unwrapped(ref.future())

    def close(self) -> None:
        self._tables.clear()
        if self._owns:
            self._ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError(
            "the ray backend needs Ray, an optional extra: pip install 'equinox-fair[ray]'", source="--backend"
        ) from None
    return ray


def _init_ray(ray, address: str | None) -> None:
    try:
        ray.init(address=address)
    except ConnectionError as exc:
        raise InputError(f"cannot reach a Ray cluster at {address!r}: {exc}", source="--ray-address") from None


def _unwrapped(ray_future: Future) -> Future:
    """A task's future that fails with the task's own exception, not Ray's wrapper of it."""
    future: Future = Future()

    def forward(done: Future) -> None:
        exc = done.exception()
        if exc is None:
            future.set_result(done.result())
        else:
            future.set_exception(getattr(exc, "cause", None) or exc)  # RayTaskError.cause

    ray_future.add_done_callback(forward)
    return future


def _replay_to_files(table: pa.Table, cell: Cell, base: EquinoxKnobs, options: dict) -> dict[str, bytes]:
    """A Ray task: replay into a temporary directory on the worker, return the run's files."""
    with tempfile.TemporaryDirectory(prefix="equinox-cell-") as tmp:
        run_dir = _replay(table, cell, Path(tmp), base, options)
        return {f.name: f.read_bytes() for f in sorted(run_dir.iterdir()) if f.is_file()}


# -- summary ------------------------------------------------------------------------------


def summarise(results: list[CellResult]) -> pd.DataFrame:
    """One row per cell: workload, seed, scheduler, knobs and the audit's headline numbers
    (``error`` for a failed cell)."""
    from reports.audit import audit

    knobs = sorted({k for r in results for k, _ in r.cell.knobs})
    rows = []
    for r in results:
        cell = r.cell
        row = {"workload": cell.workload, "seed": cell.seed, "scheduler": run_name(cell.scheduler), **dict(cell.knobs)}
        row.update(cell=cell.path.as_posix(), error=r.error)
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
    return pd.DataFrame(rows, columns=["workload", "seed", "scheduler", *knobs, "cell", "error", *METRICS])


def plot_frontier(summary: pd.DataFrame, path: Path) -> None:
    """Jain's index against p99 TTFT, coloured by throughput, one labelled point per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = summary[summary["error"].isna()]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = ax.scatter(ok["ttft_p99_s"], ok["jain"], c=ok["tokens_per_s"], cmap="viridis", s=40)
    for label, x, y in zip(_labels(ok["cell"]), ok["ttft_p99_s"], ok["jain"]):
        ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.margins(x=0.15, y=0.1)  # room for the labels
    fig.colorbar(points, ax=ax, label="throughput (tokens/s)")
    ax.set_xlabel("p99 TTFT (s)")
    ax.set_ylabel("Jain's index (backlogged service rate)")
    ax.set_title("Sweep: fairness vs latency vs throughput")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _labels(cells: pd.Series) -> list[str]:
    """Each cell's path without the parts every cell shares: ``alpha-0_gamma-1`` in a knob sweep."""
    parts = [cell.split("/") for cell in cells]
    varies = [len(set(level)) > 1 for level in zip(*parts)]
    return ["/".join(p for p, v in zip(cell, varies) if v) or cell[-1] for cell in parts]
