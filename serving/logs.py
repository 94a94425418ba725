"""Per-request and per-step logs of a real engine, in the simulator's results format.

``RunLog`` collects rows of ``traces.result_schemas.REQUEST_SCHEMA`` and ``STEP_SCHEMA`` as a real
engine runs and turns them into the same tables the simulator returns, so ``equinox audit``
and ``equinox train-predictors`` read a served or replayed run unchanged.

Steps tile the time line as the simulator's do: a busy step runs from the start of one
``schedule()`` to the start of the next while the engine has work (so per-step host overhead
is part of the step), and a gap in which the engine had nothing to do is an idle row.

With a directory, the log is a run directory (``requests.parquet``, ``steps.parquet``,
``run.json``) written when the log opens, then rewritten atomically every ``flush_interval_s``
by a background thread and on ``close()``: a killed server leaves the files of its last flush,
each whole.  Requests appear
when they end (finished, rejected or aborted); those still in flight at a crash are lost.
Each flush rewrites the whole run (about 1 s per million steps, docs/SERVING.md).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from engine.results import (
    COUNTERS_FILE,
    REQUESTS_FILE,
    RUN_FILE,
    STEPS_FILE,
    atomic_write_json,
    atomic_write_parquet,
)
from traces.result_schemas import REQUEST_SCHEMA, STEP_SCHEMA

CHUNK_ROWS = 8192  # rows kept as Python tuples before they are sealed into an Arrow batch

_STATUS = REQUEST_SCHEMA.names.index("status")
_REJECT = REQUEST_SCHEMA.names.index("reject_reason")
_REJECT_REASONS = frozenset({"rate_limit", "too_long", "exceeds_kv"})  # requests.parquet's reject_reason
# What a busy step reports: prefill_tokens .. flops (the columns after flops are left null).
_STEP_FIELDS = tuple(STEP_SCHEMA.names[4 : STEP_SCHEMA.names.index("flops") + 1])
# An idle row: zeros up to kv_used_tokens, the busy step's kv_capacity_tokens and token_budget, no FLOPs.
_IDLE_ZEROS = (0,) * _STEP_FIELDS.index("kv_capacity_tokens")
_IDLE_KEPT = slice(len(_IDLE_ZEROS), _STEP_FIELDS.index("token_budget") + 1)
assert _STEP_FIELDS[_IDLE_KEPT] == ("kv_capacity_tokens", "token_budget") and _STEP_FIELDS[-1] == "flops"


class _Rows:
    """Rows of one schema: a short buffer of tuples (in schema order), sealed into Arrow record
    batches as it fills.  Appending a row is one ``list.append``; columns are built when a chunk
    is sealed or a snapshot taken."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.batches: list[pa.RecordBatch] = []
        self.rows: list[tuple] = []
        self.count = 0

    def append(self, row: dict) -> None:
        self.append_values(tuple(row.get(name) for name in self.schema.names))

    def append_values(self, values: tuple) -> None:
        """A row as a tuple of the schema's fields, in order."""
        rows = self.rows
        rows.append(values)
        self.count += 1
        if len(rows) >= CHUNK_ROWS:
            self.batches.append(_batch(rows, self.schema))
            self.rows = []

    def snapshot(self, extra: tuple | None = None) -> pa.Table:
        rows = self.rows if extra is None else [*self.rows, extra]
        return pa.Table.from_batches([*self.batches, _batch(rows, self.schema)], schema=self.schema)


class RunLog:
    """Rows of one run; thread-safe snapshots for the flusher."""

    def __init__(self, config: dict, out_dir: str | Path | None = None, flush_interval_s: float = 5.0,
                 counters: Callable[[], pa.Table | None] | None = None):  # fmt: skip
        self.config = config
        self.counters = counters  # Equinox's counter trajectory, written as counters.parquet
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.flush_interval_s = flush_interval_s
        self._lock = threading.Lock()
        self._requests = _Rows(REQUEST_SCHEMA)
        self._steps = _Rows(STEP_SCHEMA)
        self._pending_step: dict | None = None  # the last busy step, until we know where it ends
        self._step_no = 0
        self.end_reasons: dict[str, int] = {}  # how requests ended (stop, length, abort, rejected...): counts
        self._dirty = False
        self._stop = threading.Event()
        self._wake = threading.Event()  # set: flush now (a termination signal arrived)
        self._thread: threading.Thread | None = None
        self.flushes = 0
        self.flush_seconds = 0.0
        if self.out_dir is not None:
            self.flush()  # the directory is a (still empty) run directory from the start
            if flush_interval_s > 0:
                self._thread = threading.Thread(target=self._flusher, name="equinox-log-flush", daemon=True)
                self._thread.start()

    # -- rows -------------------------------------------------------------------------
    def request(self, **row) -> None:
        self.request_values(tuple(row.get(name) for name in REQUEST_SCHEMA.names))

    def request_values(self, values: tuple, reason: str | None = None) -> None:
        """A request row as a tuple of ``REQUEST_SCHEMA``'s fields, in order; ``reason``: how it
        ended as the engine says (counted in ``run.json``'s ``end_reasons``; default: its status)."""
        reason = reason or values[_STATUS]
        if len(values) < len(REQUEST_SCHEMA):  # the appended columns: null, but for why it was refused
            values = values + (None,) * (len(REQUEST_SCHEMA) - len(values))
            if values[_STATUS] == "rejected" and reason in _REJECT_REASONS:
                values = values[:_REJECT] + (reason,) + values[_REJECT + 1 :]
        with self._lock:
            self._requests.append_values(values)
            self.end_reasons[reason] = self.end_reasons.get(reason, 0) + 1
            self._dirty = True

    def step(self, start_s: float, end_s: float, still_busy: bool, **row) -> None:
        """A busy step ran from ``start_s`` to ``end_s``; ``still_busy``: the engine has work after it."""
        self.step_values(start_s, end_s, still_busy, tuple(row.get(name) for name in _STEP_FIELDS))

    def step_values(self, start_s: float, end_s: float, still_busy: bool, values: tuple) -> None:
        """``step`` with the rest of the row as a tuple of ``STEP_SCHEMA``'s fields from
        ``prefill_tokens`` to ``flops``, in order."""
        with self._lock:
            self._close_pending(start_s)
            self._pending_step = (start_s, end_s, still_busy, values)
            self._dirty = True

    def _close_pending(self, next_start: float | None) -> None:
        """Emit the pending busy step, stretched to ``next_start`` if the engine stayed busy, else + idle gap."""
        p = self._pending_step
        if p is None:
            return
        self._pending_step = None
        start, end, still_busy, values = p
        if next_start is not None and still_busy:
            end = max(end, next_start)
        steps = self._steps
        steps.append_values((self._step_no, start, end - start, True, *values))
        self._step_no += 1
        if next_start is not None and next_start > end:
            steps.append_values((self._step_no, end, next_start - end, False, *_IDLE_ZEROS, *values[_IDLE_KEPT], 0.0))
            self._step_no += 1

    # -- tables -----------------------------------------------------------------------
    def tables(self, *, final: bool = False) -> tuple[pa.Table, pa.Table]:
        """The requests and steps so far; ``final`` closes the last step (no more steps come)."""
        with self._lock:
            if final:
                self._close_pending(None)
            pending = None
            if self._pending_step is not None:  # a snapshot shows the last step as it stands
                start, end, _, values = self._pending_step
                pending = (self._step_no, start, end - start, True, *values)
            return self._requests.snapshot(), self._steps.snapshot(pending)

    def __len__(self) -> int:
        return self._requests.count

    # -- files ------------------------------------------------------------------------
    def flush(self, *, final: bool = False) -> None:
        """Write the run directory's three files (each atomically)."""
        if self.out_dir is None:
            return
        started = time.perf_counter()
        with self._lock:
            self._dirty = False
            reasons = dict(sorted(self.end_reasons.items()))
        requests, steps = self.tables(final=final)
        requests = requests.sort_by([("arrival_s", "ascending"), ("request_id", "ascending")])
        atomic_write_parquet(requests, self.out_dir / REQUESTS_FILE)
        atomic_write_parquet(steps, self.out_dir / STEPS_FILE)
        counters = self.counters() if self.counters is not None else None
        if counters is not None:
            atomic_write_parquet(counters, self.out_dir / COUNTERS_FILE)
        record = {**self.config, "steps": steps.num_rows, "requests_logged": requests.num_rows,
                  "end_reasons": reasons, "complete": final}  # fmt: skip
        atomic_write_json(record, self.out_dir / RUN_FILE)
        self.flushes += 1
        self.flush_seconds += time.perf_counter() - started

    def request_flush(self) -> None:
        """Flush as soon as possible, from the flusher thread (safe to call from a signal handler)."""
        self._wake.set()

    def _flusher(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._dirty:
                try:
                    self.flush()
                except Exception as exc:  # a full disk must not take the engine down
                    print(f"equinox: log flush to {self.out_dir} failed: {exc}", flush=True)

    def close(self) -> None:
        """Stop the flusher and write the final files (``run.json`` says ``"complete": true``)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush(final=True)


def _batch(rows: list[tuple], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(schema)
    # Columns appended to the schema after this writer's rows were laid out (issue 14's
    # reject_reason, cached_prompt_tokens, ...): nulls.
    columns += [(None,) * len(rows)] * (len(schema) - len(columns))
    arrays = []
    for field, values in zip(schema, columns, strict=True):
        if pa.types.is_floating(field.type):
            values = [None if v is None else float(v) for v in values]
        else:
            values = list(values)
        arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def shift_times(requests: pa.Table, steps: pa.Table, offset_s: float) -> tuple[pa.Table, pa.Table]:
    """Add ``offset_s`` to every time column (to put a log on a workload's clock)."""

    def shifted(table: pa.Table, names) -> pa.Table:
        for name in names:
            i = table.schema.get_field_index(name)
            table = table.set_column(i, table.schema.field(i), pc.add(table.column(i), pa.scalar(offset_s)))
        return table

    return (
        shifted(requests, ("arrival_s", "admitted_s", "first_token_s", "finish_s")),
        shifted(steps, ("start_s",)),
    )
