"""The workload formats: how each source's records become canonical columns, a chunk at a time.

Column formats have one request per row and are a ``ColumnMap`` from canonical columns to
source columns (CSV, JSON Lines, a JSON list of objects or Parquet alike); ``--map`` builds
one for any file.  Conversation formats (ShareGPT, LMSYS-Chat-1M) are a ``Dialect`` naming
where the messages are: each user message answered by the assistant is a request.

Every reader yields ``pyarrow.Table`` chunks of the canonical columns it has, counts what it
read and dropped in ``info``, and names the file, the 1-based row and what was expected in
every ``InputError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from traces.errors import InputError
from traces.schema import OPTIONAL, REQUIRED
from traces.streams import column_batches, iter_records
from traces.tokenizer import get_tokenizer

TEXT_BATCH_CHARS = 4 << 20  # tokenize conversations in batches of about this much text
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class ColumnMap:
    """Canonical column -> source column, for a source with one request per row."""

    columns: dict  # all required
    optional: dict = field(default_factory=dict)  # read when present
    time_unit: str = "s"  # of the arrival column: s, ms, us, datetime, or auto (numbers are s, else dates)
    shift: bool = True  # count arrivals from the earliest
    drop_zero: bool = True  # drop and count requests with 0 tokens (else validation rejects them)
    failed_output: bool = False  # 0 output tokens marks a failed request (counted as "failed")


COLUMN_FORMATS = {
    "vtc-lmsys": ColumnMap(
        {
            "client_id": "adapter_dir",
            "prompt_tokens": "prompt_len",
            "output_tokens": "output_len",
            "arrival_s": "req_time",
        },
        shift=False,
    ),
    "azure": ColumnMap(
        {"arrival_s": "TIMESTAMP", "prompt_tokens": "ContextTokens", "output_tokens": "GeneratedTokens"},
        time_unit="datetime",
    ),
    "burstgpt": ColumnMap(
        {"arrival_s": "Timestamp", "prompt_tokens": "Request tokens", "output_tokens": "Response tokens"},
        failed_output=True,
    ),
    "mooncake": ColumnMap(
        {"arrival_s": "timestamp", "prompt_tokens": "input_length", "output_tokens": "output_length"},
        {"prefix_hashes": "hash_ids"},
        time_unit="ms",
    ),
    "canonical": ColumnMap({c: c for c in REQUIRED}, {c: c for c in OPTIONAL}, shift=False, drop_zero=False),
}
MAP_KEYS = {
    "arrival": "arrival_s",
    "prompt": "prompt_tokens",
    "output": "output_tokens",
    "client": "client_id",
    "prompt_text": "prompt",
    "weight": "weight",
    "conversation": "conversation_id",
    "prefix_hashes": "prefix_hashes",
}


@dataclass(frozen=True)
class Dialect:
    """Where a conversation format keeps its id, messages, roles and texts."""

    id: str
    messages: str
    role: str
    text: str
    user: str
    assistant: str

    def no_turn(self) -> str:
        return f"no_{self.user}_{self.assistant}_turn"


DIALECTS = {
    "sharegpt": Dialect("id", "conversations", "from", "value", "human", "gpt"),
    "lmsys-chat-1m": Dialect("conversation_id", "conversation", "role", "content", "user", "assistant"),
}
FORMATS = ("canonical", "sharegpt", "lmsys-chat-1m", "vtc-lmsys", "azure", "burstgpt", "mooncake", "mapped")


def detect(path: Path, kind: str, keys: list[str]) -> str:
    """The format of a file from its kind and its columns or first record's keys."""
    have = set(keys)
    if "conversations" in have or (kind == "json" and not have):
        return "sharegpt"  # (its reader says what is wrong with a JSON file that is not)
    if {"conversation", "conversation_id"} <= have:
        return "lmsys-chat-1m"
    for fmt, cmap in COLUMN_FORMATS.items():
        if set(cmap.columns.values()) <= have:
            return fmt
    if len(have & set(REQUIRED)) >= 2:
        return "canonical"  # (its reader names the missing columns)
    known = "; ".join(f"{fmt} ({', '.join(cmap.columns.values())})" for fmt, cmap in COLUMN_FORMATS.items())
    found = f"found header {','.join(keys)[:200]!r}" if kind == "csv" else f"found keys {', '.join(keys)[:200]}"
    raise InputError(
        f"unrecognised workload file; expected ShareGPT or LMSYS-Chat-1M conversations, or the columns of {known}, "
        f"or give --map arrival=COL,prompt=COL,output=COL; {found}",
        source=str(path),
    )


def parse_mapping(spec) -> ColumnMap:
    """``--map arrival=ts,prompt=in_tok,output=out_tok,client=api_key`` (or a dict) as a ColumnMap.

    Keys are MAP_KEYS; ``arrival=COL:ms`` (or ``:s``, ``:us``) gives the unit of numeric times,
    else numbers are seconds and text is parsed as dates.  ``prompt_text`` without ``prompt`` is
    tokenized.
    """
    pairs = spec.items() if isinstance(spec, dict) else (p.split("=", 1) for p in str(spec).split(",") if p.strip())
    columns, unit = {}, "auto"
    for pair in pairs:
        if len(pair) != 2 or not pair[1].strip() or pair[0].strip() not in MAP_KEYS:
            raise InputError(
                f"expected KEY=COLUMN pairs with KEY one of {', '.join(MAP_KEYS)}, got {'='.join(pair)!r}", source="map"
            )
        key, column = pair[0].strip(), pair[1].strip()
        if key == "arrival" and column.rsplit(":", 1)[-1] in TIME_UNITS and ":" in column:
            column, unit = column.rsplit(":", 1)
        columns[MAP_KEYS[key]] = column
    if "output_tokens" not in columns or not {"prompt_tokens", "prompt"} & set(columns):
        raise InputError("a mapping needs output= and prompt= (tokens) or prompt_text= (text)", source="map")
    return ColumnMap(columns, time_unit=unit)


# ---------------------------------------------------------------- one request per row


def column_chunks(path: Path, kind: str, keys: list[str], cmap: ColumnMap, opts, info: dict, progress):
    """Chunks of canonical columns from a file with one request per row."""
    source = str(path)
    wanted = dict(cmap.columns)
    if opts.client_column:
        wanted["client_id"] = opts.client_column
    missing = [column for column in wanted.values() if column not in keys]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}; expected columns {', '.join(wanted.values())}, "
            f"found {', '.join(keys)}",
            source=source,
        )
    wanted.update({c: s for c, s in cmap.optional.items() if s in keys and c not in wanted})
    counter = None
    if "prompt_tokens" not in wanted:
        counter = get_tokenizer(opts.tokenizer)
        info["tokenizer"] = counter.name
    dropped = info["dropped"]
    if cmap.drop_zero:
        dropped.setdefault("zero_tokens", 0)
    if cmap.failed_output:
        dropped.setdefault("failed", 0)
    unit, row0 = cmap.time_unit, 0
    for batch in column_batches(path, kind, sorted(set(wanted.values())), keys, progress):
        columns = {}
        for target, column in wanted.items():
            values = _as_array(batch[column])
            if target == "arrival_s":
                unit = _time_unit(values) if unit == "auto" else unit
                columns[target] = _arrivals(values, unit, column, source, row0)
            else:
                columns[target] = _convert(target, values, column, source, row0)
        if counter is not None:
            texts = columns["prompt"].fill_null("").to_pylist()
            columns["prompt_tokens"] = _count(counter, texts, source, np.arange(row0 + 1, row0 + len(texts) + 1))
        if not opts.text:
            columns.pop("prompt", None)
        chunk = pa.table(columns)
        row0 += chunk.num_rows
        info["rows_read"] += chunk.num_rows
        yield _drop_zero(chunk, cmap, dropped) if cmap.drop_zero else chunk


def finish_arrivals(table: pa.Table, cmap: ColumnMap, info: dict) -> pa.Table:
    """Arrival seconds counted from the earliest request (dates always, numbers if ``cmap.shift``)."""
    arrival = table["arrival_s"]
    if pa.types.is_timestamp(arrival.type):
        ns = arrival.cast(pa.int64()).to_numpy()
        info["first_timestamp"] = str(pd.Timestamp(ns.min()))
        seconds = (ns - ns.min()) / 1e9
    else:
        seconds = arrival.to_numpy()
        if cmap.shift and seconds.min() != 0:
            info["first_timestamp"] = float(seconds.min())
            seconds = seconds - seconds.min()
    return table.set_column(table.schema.get_field_index("arrival_s"), "arrival_s", pa.array(seconds))


def _as_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # mixed JSON types, huge integers: as text,
        # so bad cells are named
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _convert(target: str, values: pa.Array, column: str, source: str, row0: int) -> pa.Array:
    if target in ("client_id", "conversation_id", "prompt"):
        strings = values.cast(pa.string())
        strings = pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)
        if target == "client_id" and strings.null_count:
            row = int(np.flatnonzero(strings.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{column} (the client) is empty", source=source, row=row0 + row + 1)
        return strings
    if target == "prefix_hashes":
        return _int_lists(values, column, source, row0)
    integer = target in ("request_id", "prompt_tokens", "output_tokens")
    return pa.array(_numbers(values, column, source, row0, integer=integer))


MAX_INTEGER = 2**53  # integers above it lose digits as float64 and overflow int64 soon after


def _numbers(values: pa.Array, column: str, source: str, row0: int, *, integer: bool) -> np.ndarray:
    """Non-negative numbers (integers if ``integer``); names the first bad row."""
    if pa.types.is_string(values.type):
        values = pc.utf8_trim_whitespace(values)
    try:
        numbers = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        cells = pd.Series(values.to_pylist(), dtype=object)
        numbers = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(numbers) | (numbers < 0)
    if integer:
        bad |= (numbers != np.floor(numbers)) | (numbers > MAX_INTEGER)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "a non-negative integer" if integer else "a non-negative number"
        what += " below 2^53" if integer and numbers[row] > MAX_INTEGER else ""
        raise InputError(f"{column} must be {what}, got {values[row].as_py()!r}", source=source, row=row0 + row + 1)
    return numbers.astype(np.int64) if integer else numbers


def _time_unit(values: pa.Array) -> str:
    """s when the first cell is a number, else datetime."""
    first = next((v for v in values.to_pylist() if v not in (None, "")), None)
    try:
        float(first)
        return "s"
    except (TypeError, ValueError):
        return "datetime"


def _arrivals(values: pa.Array, unit: str, column: str, source: str, row0: int) -> pa.Array:
    """Seconds (float64), or timestamps (counted from the earliest once every row is read)."""
    if pa.types.is_timestamp(values.type):
        return values.cast(pa.timestamp("ns"))
    if unit in TIME_UNITS:
        return pa.array(_numbers(values, column, source, row0, integer=False) * TIME_UNITS[unit])
    cells = values.to_pandas()
    stamps = pd.to_datetime(cells, format="ISO8601", errors="coerce", utc=True)
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise InputError(
            f"{column} must be a date and time like 2023-11-16 18:17:03.9799600, got {cells.iloc[row]!r}",
            source=source,
            row=row0 + row + 1,
        )
    return pa.array(stamps.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]"))


def _int_lists(values: pa.Array, column: str, source: str, row0: int) -> pa.Array:
    """Lists of integers; text cells may be written "[1, 2, 3]" or "[1 2 3]"."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        cells = [_parse_ints(cell) for cell in values.to_pylist()]
        for row, cell in enumerate(cells):
            if isinstance(cell, str):
                raise InputError(
                    f"{column} must be a list of integers, got {cell!r}", source=source, row=row0 + row + 1
                )
        values = pa.array(cells, type=pa.list_(pa.int64()))
    try:
        return values.cast(pa.list_(pa.int64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError):
        for row, cell in enumerate(values.to_pylist()):
            if cell is not None and not (isinstance(cell, list) and all(isinstance(v, int) for v in cell)):
                raise InputError(
                    f"{column} must be a list of integers, got {cell!r}", source=source, row=row0 + row + 1
                ) from None
        raise


def _parse_ints(cell: str | None):
    text = (cell or "").strip()
    if not text:
        return None
    try:
        return [int(v) for v in re.split(r"[\s,]+", text.strip("[]").strip()) if v]
    except ValueError:
        return text  # not a list: reported with its row by _int_lists


def _drop_zero(chunk: pa.Table, cmap: ColumnMap, dropped: dict) -> pa.Table:
    """Drop requests with 0 tokens, counted as zero_tokens (or failed: 0 output where that means so)."""
    prompt, output = chunk["prompt_tokens"].to_numpy(), chunk["output_tokens"].to_numpy()
    failed = (output == 0) if cmap.failed_output else np.zeros(len(output), dtype=bool)
    zero = ((prompt == 0) | (output == 0)) & ~failed
    if cmap.failed_output:
        dropped["failed"] += int(failed.sum())
    dropped["zero_tokens"] += int(zero.sum())
    return chunk.filter(pa.array(~(failed | zero)))


# ---------------------------------------------------------------- conversations


def conversation_chunks(path: Path, kind: str, keys: list[str], dialect: Dialect, opts, info: dict, progress):
    """Chunks of requests from conversations: the first user -> assistant turn of each, or
    every turn (``opts.turns == "all"``) with all earlier messages counted in its prompt."""
    source, counter = str(path), get_tokenizer(opts.tokenizer)
    if opts.client_column and keys and opts.client_column not in keys:
        raise InputError(f"missing column(s) {opts.client_column}; found {', '.join(keys)}", source=source)
    info["tokenizer"] = counter.name
    dropped = info["dropped"]
    for key in (dialect.no_turn(), "empty_text"):
        dropped.setdefault(key, 0)
    columns = [dialect.id, dialect.messages, *([opts.client_column] if opts.client_column else [])]
    expected = f'a JSON list of conversations [{{"{dialect.id}": ..., "{dialect.messages}": [...]}}, ...]'
    pending, chars = [], 0
    for row, record in iter_records(path, kind, columns, progress, expected):
        info["rows_read"] += 1
        messages = _messages(record, dialect, source, row)
        turns = [
            k
            for k in range(len(messages) - 1)
            if messages[k][0] == dialect.user and messages[k + 1][0] == dialect.assistant
        ]
        if not turns:
            dropped[dialect.no_turn()] += 1
            continue
        turns = turns if opts.turns == "all" else turns[:1]
        client = _record_client(record, opts.client_column, source, row)
        conversation = str(record[dialect.id]) if record.get(dialect.id) is not None else f"row-{row}"
        messages = messages[: turns[-1] + 2]  # what comes after the last turn's answer is not needed
        pending.append((row, conversation, client, messages, turns))
        chars += sum(len(text) for _, text in messages)
        if chars >= TEXT_BATCH_CHARS:
            yield _turn_table(pending, counter, opts, source, dropped)
            pending, chars = [], 0
    if pending:
        yield _turn_table(pending, counter, opts, source, dropped)


def _messages(record, dialect: Dialect, source: str, row: int) -> list[tuple[str, str]]:
    turns = record.get(dialect.messages) if isinstance(record, dict) else None
    if not isinstance(turns, list):
        raise InputError(f'expected an object with a "{dialect.messages}" list', source=source, row=row)
    messages = []
    for k, message in enumerate(turns, start=1):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get(dialect.role), str)
            or not isinstance(message.get(dialect.text), str)
        ):
            raise InputError(
                f'message {k}: expected {{"{dialect.role}": "{dialect.user}"|"{dialect.assistant}", '
                f'"{dialect.text}": <text>}}',
                source=source,
                row=row,
            )
        messages.append((message[dialect.role], message[dialect.text]))
    return messages


def _record_client(record: dict, column: str | None, source: str, row: int) -> str | None:
    if column is None:
        return None
    value = record.get(column)
    if value is None or value == "":
        raise InputError(f"{column} (the client) is empty", source=source, row=row)
    return str(value)


def _turn_table(pending: list, counter, opts, source: str, dropped: dict) -> pa.Table:
    """Count the tokens of a batch of conversations at once and lay out one row per turn."""
    texts, owners, spans = [], [], []
    for row, _, _, messages, turns in pending:
        needed = range(turns[0], turns[0] + 2) if opts.turns == "first" else range(turns[-1] + 2)
        spans.append(len(texts) - needed.start)  # position of message 0 of this conversation
        texts.extend(messages[k][1] for k in needed)
        owners.extend([row] * len(needed))
    counts = _count(counter, texts, source, owners)
    prompt_tokens, output_tokens, prompts, ids, clients = [], [], [], [], []
    for (_, conversation, client, messages, turns), base in zip(pending, spans):
        history = np.cumsum(counts[base : base + turns[-1] + 1]) if opts.turns == "all" else None
        for k in turns:
            prompt_tokens.append(history[k] if history is not None else counts[base + k])
            output_tokens.append(counts[base + k + 1])
            prompts.append(messages[k][1])
            ids.append(conversation)
            clients.append(client)
    columns = {
        "prompt_tokens": np.array(prompt_tokens, dtype=np.int64),
        "output_tokens": np.array(output_tokens, dtype=np.int64),
        "conversation_id": pa.array(ids, type=pa.string()),
    }
    if opts.text:
        columns["prompt"] = pa.array(prompts, type=pa.string())
    if opts.client_column:
        columns["client_id"] = pa.array(clients, type=pa.string())
    keep = (columns["prompt_tokens"] > 0) & (columns["output_tokens"] > 0)
    dropped["empty_text"] += int((~keep).sum())
    return pa.table(columns).filter(pa.array(keep))


def _count(counter, texts: list, source: str, rows) -> np.ndarray:
    try:
        return counter.count_many(texts)
    except InputError as exc:  # exc.row is the text's position in ``texts``
        raise InputError(exc.message, source=source, row=int(rows[exc.row - 1])) from None
