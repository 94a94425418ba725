"""The canonical workload table: one row per request, sorted by arrival.

Every loader and generator in :mod:`traces` returns a ``pyarrow.Table`` with this
schema, and the replay driver reads nothing else.  ``validate`` checks a table
and reports the first bad row by number.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from traces.errors import InputError

REQUIRED = ("request_id", "client_id", "arrival_s", "prompt_tokens", "output_tokens")

WORKLOAD_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("client_id", pa.string(), nullable=False),
        pa.field("arrival_s", pa.float64(), nullable=False),  # seconds from the workload's start
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),  # fair-share weight, default 1
        pa.field("prompt", pa.string()),  # prompt text when the source has it
        pa.field("conversation_id", pa.string()),  # groups turns of one conversation
        pa.field("prefix_hashes", pa.list_(pa.int64())),  # prefix-block hashes (Mooncake's hash_ids)
    ]
)
OPTIONAL = ("weight", "prompt", "conversation_id", "prefix_hashes")

METADATA_KEY = b"equinox.workload"


def make_table(
    client_id,
    arrival_s,
    prompt_tokens,
    output_tokens,
    *,
    weight=None,
    prompt=None,
    conversation_id=None,
    prefix_hashes=None,
    metadata: dict | None = None,
    source: str = "workload",
) -> pa.Table:
    """Build a canonical table from columns; sorts by arrival (stable) and numbers requests 0..n-1.

    The optional columns (``prompt``, ``conversation_id``, ``prefix_hashes``) take sequences or
    Arrow arrays; left out, they are nulls.
    """
    arrival = np.asarray(arrival_s, dtype=np.float64)
    n = len(arrival)
    order = np.argsort(arrival, kind="stable")
    client = client_id.cast(pa.string()) if isinstance(client_id, (pa.Array, pa.ChunkedArray)) else None
    cols = {
        "request_id": pa.array(np.arange(n, dtype=np.int64)),
        "client_id": client.take(order)
        if client is not None
        else pa.array([str(c) for c in np.asarray(client_id, dtype=object)[order]], type=pa.string()),
        "arrival_s": pa.array(arrival[order]),
        "prompt_tokens": pa.array(np.asarray(prompt_tokens, dtype=np.int64)[order]),
        "output_tokens": pa.array(np.asarray(output_tokens, dtype=np.int64)[order]),
        "weight": pa.array(np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)[order]),
    }
    for name, values in (("prompt", prompt), ("conversation_id", conversation_id), ("prefix_hashes", prefix_hashes)):
        cols[name] = _optional_column(values, WORKLOAD_SCHEMA.field(name).type, n, order)
    table = pa.Table.from_pydict(cols, schema=WORKLOAD_SCHEMA)
    table = with_metadata(table, metadata or {})
    validate(table, source=source)
    return table


def _optional_column(values, type: pa.DataType, n: int, order: np.ndarray):
    if values is None:
        return pa.nulls(n, type=type)
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(list(values), type=type)
    return values.cast(type).take(order)


# The per-request columns the replay loops read, in the order ``column_lists`` returns them.
REPLAY_COLUMNS = ("request_id", "client_id", "arrival_s", "prompt_tokens", "output_tokens", "weight", "prompt")


def column_lists(table: pa.Table, names=REPLAY_COLUMNS) -> list[list]:
    """The named columns as Python lists (loops over requests index them row by row)."""
    return [table.column(name).to_pylist() for name in names]


def with_metadata(table: pa.Table, info: dict) -> pa.Table:
    """Attach provenance (source, options, tokenizer, seed) as JSON in the schema metadata."""
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(info, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def workload_metadata(table: pa.Table | pa.Schema) -> dict:
    """The provenance attached by ``with_metadata`` to a table (or a schema), or {}."""
    meta = getattr(table, "schema", table).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def conform(table: pa.Table, source: str) -> pa.Table:
    """Cast a table read from disk to the canonical schema (adding optional columns), then validate."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}; a workload needs {', '.join(REQUIRED)}",
            source=source,
        )
    n = table.num_rows
    cols = []
    for field in WORKLOAD_SCHEMA:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError(
                    f"column {field.name!r} must be {field.type}, got {col.type} ({exc})",
                    source=source,
                ) from None
        elif field.name == "weight":
            col = pa.array(np.ones(n))
        else:
            col = pa.nulls(n, type=field.type)
        cols.append(col)
    out = pa.Table.from_arrays(cols, schema=WORKLOAD_SCHEMA.with_metadata(table.schema.metadata))
    validate(out, source=source)
    return out


def validate(table: pa.Table, source: str = "workload") -> None:
    """Raise InputError naming the first bad row (1-based, as a user counts rows)."""
    n = table.num_rows
    if n == 0:
        raise InputError("the workload has no requests", source=source)
    for name in REQUIRED:
        col = table.column(name)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{name} is empty", source=source, row=row + 1)
    ids = table.column("request_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    repeats = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if repeats.size:
        row = int(order[repeats + 1].min())  # the first row whose id an earlier row has
        first = int(np.flatnonzero(ids == ids[row])[0])
        raise InputError(
            f"request_id {ids[row]} repeats row {first + 1}'s; request ids must be unique",
            source=source,
            row=row + 1,
        )
    arrival = table.column("arrival_s").to_numpy()
    bad = ~np.isfinite(arrival) | (arrival < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"arrival_s must be a finite number >= 0, got {arrival[row]}", source=source, row=row + 1)
    if np.any(np.diff(arrival) < 0):
        row = int(np.flatnonzero(np.diff(arrival) < 0)[0]) + 1
        raise InputError("rows must be sorted by arrival_s", source=source, row=row + 1)
    for name, low in (("prompt_tokens", 1), ("output_tokens", 1)):
        values = table.column(name).to_numpy()
        bad = values < low
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{name} must be an integer >= {low}, got {values[row]}", source=source, row=row + 1)
    weight = table.column("weight").to_numpy()
    bad = ~np.isfinite(weight) | (weight <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"weight must be > 0, got {weight[row]}", source=source, row=row + 1)
