"""The results format every engine writes and every report reads.

A run directory holds:

* ``requests.parquet``: one row per request (``REQUEST_SCHEMA``): the workload's
  columns plus what happened to the request.
* ``steps.parquet``: one row per engine step (``STEP_SCHEMA``); idle gaps between
  steps are rows with ``busy = False`` so that the rows tile the run's time line.
* ``run.json``: the full configuration, seed and versions.
* ``counters.parquet`` (Equinox runs): per-client UFC, RFC and HF over time (``COUNTER_SCHEMA``).

The schemas are in ``traces/result_schemas.py`` (the policies read them too).

All times are seconds from the workload's start.  Files are written atomically
(to a temporary name, then renamed), so an interrupted run leaves no truncated file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REQUESTS_FILE = "requests.parquet"
COUNTERS_FILE = "counters.parquet"
STEPS_FILE = "steps.parquet"
RUN_FILE = "run.json"


def outcome_columns(reqs, scheduler: str) -> dict[str, pa.Array]:
    """The columns of ``requests.parquet`` that every engine reads off its finished Request objects:
    what happened to each request and the engine's state at its arrival."""

    def col(getter, dtype):
        return pa.array([getter(r) for r in reqs], type=dtype)

    state = list(zip(*(r.arrival_state for r in reqs))) if reqs else [[], [], [], []]
    return {
        "scheduler": pa.array([scheduler] * len(reqs), type=pa.string()),
        "status": col(lambda r: r.status, pa.string()),
        "admitted_s": col(lambda r: r.admitted_s, pa.float64()),
        "first_token_s": col(lambda r: r.first_token_s, pa.float64()),
        "finish_s": col(lambda r: r.finish_s, pa.float64()),
        "generated_tokens": col(lambda r: r.generated, pa.int64()),
        "preemptions": col(lambda r: r.preemptions, pa.int64()),
        "waiting_at_arrival": pa.array(state[0], type=pa.int64()),
        "waiting_tokens_at_arrival": pa.array(state[1], type=pa.int64()),
        "running_at_arrival": pa.array(state[2], type=pa.int64()),
        "kv_used_at_arrival": pa.array(state[3], type=pa.float64()),
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str | Path, path: Path, mode: int) -> None:
    """Give a temporary file or directory normal permissions, then move it into place."""
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, path)


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    """Write a Parquet file deterministically and atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
        _publish(tmp, path, 0o666)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        _publish(tmp, path, 0o666)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(obj, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


@contextmanager
def atomic_directory(path: Path):
    """Yield a temporary directory that replaces ``path`` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A signal that raises (SIGTERM under equinox_cli.common.sigterm_unwinds) between the directory's
    # creation and the ``try`` would leave it behind: hold SIGTERM until the directory is ours.
    masked = _hold_sigterm()
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        masked = _release_sigterm(masked)  # a SIGTERM that came meanwhile raises here, inside the try
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            _publish(tmp, path, 0o777)
            shutil.rmtree(old)
        else:
            _publish(tmp, path, 0o777)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _release_sigterm(masked)


def _hold_sigterm():
    """Block SIGTERM in this thread; returns the mask to restore (None where signals cannot be masked)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _release_sigterm(mask) -> None:
    """Restore the mask ``_hold_sigterm`` returned (a pending SIGTERM is delivered now)."""
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return None
