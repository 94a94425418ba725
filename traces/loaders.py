"""Workload readers, and ``load_workload``, which turns any source into the canonical table.

The readers (``load_sharegpt``, ``load_vtc_lmsys``, ``load_azure``, ``load_canonical``) return
the canonical columns their source has, in file order, with provenance in the schema
metadata.  ``load_workload`` fills in what a source lacks (clients, arrival times) by the
seeded rules of :mod:`traces.arrivals` and builds the canonical table.

Every problem with a file is an ``InputError`` naming the file, the 1-based data row (the
first row after a CSV header, the first conversation of a ShareGPT list) and what was expected.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from traces.arrivals import assign_arrivals, assign_clients
from traces.errors import InputError
from traces.schema import (
    REQUIRED,
    WORKLOAD_SCHEMA,
    conform,
    make_table,
    with_metadata,
    workload_metadata,
)
from traces.synthetic import SYNTHETIC_WORKLOADS, synthesize
from traces.tokenizer import DEFAULT_TOKENIZER, get_tokenizer

FORMATS = ("canonical", "sharegpt", "vtc-lmsys", "azure")
DEFAULT_CLIENTS = 8  # clients drawn for a source that has none
DEFAULT_RATE = 1.0  # req/s of the arrivals drawn for a source that has no times
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
VTC_COLUMNS = ("adapter_dir", "prompt_len", "output_len", "req_time")
LMSYS_FILE = "vtc_lmsys_real_trace.csv"
LMSYS_NAME = "lmsys"


# ---------------------------------------------------------------- files and cells


def _existing_file(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", source=str(path))
    if not p.is_file():
        raise InputError("not a file; expected a workload file", source=str(path))
    return p


def _read_csv(path: Path, required) -> pd.DataFrame:
    """All cells as text; a malformed CSV or a missing column is an InputError."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(
            f"empty file; expected a CSV header with {', '.join(required)}", source=str(path)
        ) from None
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        row = int(line.group(1)) - 1 if line else None
        raise InputError(f"malformed CSV: {str(exc).strip()}", source=str(path), row=row) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", source=str(path)) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}; expected columns {', '.join(required)}, "
            f"found {', '.join(map(str, df.columns))}",
            source=str(path),
        )
    return df


def _numbers(df: pd.DataFrame, column: str, path: Path, *, integer: bool) -> np.ndarray:
    """A column of non-negative numbers (integers if ``integer``); names the first bad row."""
    cells = df[column]
    values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values) | (values < 0)
    if integer:
        bad |= values != np.floor(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "a non-negative integer" if integer else "a non-negative number"
        raise InputError(
            f"{column} must be {what}, got {cells.iloc[row]!r}", source=str(path), row=row + 1
        )
    return values.astype(np.int64) if integer else values


def _strings(cells) -> pa.Array:
    """Text cells, with empty or missing cells as nulls."""
    return pa.array(
        [None if pd.isna(v) or v == "" else str(v) for v in cells],
        type=pa.string(),
    )


def _drop_empty_requests(table: pa.Table) -> tuple[pa.Table, int]:
    """Drop rows whose prompt or output has 0 tokens (the canonical schema needs >= 1)."""
    keep = pc.and_(pc.greater(table["prompt_tokens"], 0), pc.greater(table["output_tokens"], 0))
    kept = table.filter(keep)
    return kept, table.num_rows - kept.num_rows


# ---------------------------------------------------------------- readers


def load_vtc_lmsys(path) -> pa.Table:
    """The VTC LMSYS trace CSV: client = adapter_dir, arrival = req_time (s).

    Rows with 0 prompt or output tokens are dropped and counted in the metadata.
    """
    path = _existing_file(path)
    df = _read_csv(path, VTC_COLUMNS)
    columns = {
        "client_id": _strings(df["adapter_dir"]),
        "arrival_s": _numbers(df, "req_time", path, integer=False),
        "prompt_tokens": _numbers(df, "prompt_len", path, integer=True),
        "output_tokens": _numbers(df, "output_len", path, integer=True),
    }
    if columns["client_id"].null_count:
        row = columns["client_id"].is_null().to_numpy(zero_copy_only=False).argmax()
        raise InputError("adapter_dir (the client) is empty", source=str(path), row=int(row) + 1)
    table, dropped = _drop_empty_requests(pa.table(columns))
    info = {"source": str(path), "format": "vtc-lmsys", "rows_read": len(df)}
    return with_metadata(table, {**info, "dropped": {"zero_tokens": dropped}})


def load_azure(path) -> pa.Table:
    """The Azure LLM inference trace CSV: arrival = seconds since the earliest TIMESTAMP.

    The trace has no clients (``load_workload`` draws them).  Rows with 0 context or
    generated tokens are dropped and counted in the metadata.
    """
    path = _existing_file(path)
    df = _read_csv(path, AZURE_COLUMNS)
    stamps = pd.to_datetime(df["TIMESTAMP"], format="ISO8601", errors="coerce")
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise InputError(
            "TIMESTAMP must be a date and time like 2023-11-16 18:17:03.9799600, "
            f"got {df['TIMESTAMP'].iloc[row]!r}",
            source=str(path),
            row=row + 1,
        )
    columns = {
        "arrival_s": (stamps - stamps.min()).dt.total_seconds().to_numpy(),
        "prompt_tokens": _numbers(df, "ContextTokens", path, integer=True),
        "output_tokens": _numbers(df, "GeneratedTokens", path, integer=True),
    }
    table, dropped = _drop_empty_requests(pa.table(columns))
    info = {
        "source": str(path),
        "format": "azure",
        "rows_read": len(df),
        "first_timestamp": str(stamps.min()),
    }
    return with_metadata(table, {**info, "dropped": {"zero_tokens": dropped}})


def load_canonical(path) -> pa.Table:
    """A Parquet or CSV file that already has the canonical columns (sorted by arrival_s)."""
    path = _existing_file(path)
    if _is_parquet(path):
        df, upstream = _read_parquet(path)
    else:
        df, upstream = _read_csv(path, REQUIRED), {}
    columns = {}
    for field in WORKLOAD_SCHEMA:
        if field.name not in df.columns:
            continue
        if pa.types.is_string(field.type):
            columns[field.name] = _strings(df[field.name])
        else:
            integer = pa.types.is_integer(field.type)
            columns[field.name] = _numbers(df, field.name, path, integer=integer)
    table = conform(pa.table(columns), source=str(path))
    info = {"source": str(path), "format": "canonical", "rows_read": len(df)}
    return with_metadata(table, {**info, **({"upstream": upstream} if upstream else {})})


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PAR1"


def _read_parquet(path: Path) -> tuple[pd.DataFrame, dict]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"not a readable Parquet file ({exc})", source=str(path)) from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}; expected columns {', '.join(REQUIRED)}",
            source=str(path),
        )
    return table.to_pandas(), workload_metadata(table)


def load_sharegpt(
    path, *, tokenizer: str = DEFAULT_TOKENIZER, vllm_filter: bool = False, limit: int | None = None
) -> pa.Table:
    """First turn of each ShareGPT conversation: prompt text and tokens, reply tokens, id.

    The turn is the first human message directly followed by a gpt message; conversations
    without one are skipped, as are turns whose prompt or reply has no tokens.  With
    ``vllm_filter`` it also drops what vLLM's benchmark_serving drops: a prompt or reply under
    4 tokens, a prompt over 1024, or prompt + reply over 2048.  ``limit`` keeps the first N
    turns that pass.  Drop counts go to the metadata.
    """
    path = _existing_file(path)
    _check_limit(limit)
    counter = get_tokenizer(tokenizer)
    data = _read_json(path)
    rows, ids, prompts, replies = _first_turns(data, str(path))
    try:
        prompt_tokens, output_tokens = counter.count_many(prompts), counter.count_many(replies)
    except InputError as exc:  # exc.row is the text's position among the turns
        raise InputError(exc.message, source=str(path), row=rows[exc.row - 1]) from None
    no_turn = len(data) - len(rows)
    keep = (prompt_tokens > 0) & (output_tokens > 0)
    dropped = {"no_human_gpt_turn": no_turn, "empty_text": int((~keep).sum())}
    if vllm_filter:
        vllm = _vllm_keep(prompt_tokens, output_tokens)
        dropped["vllm_filter"] = int((keep & ~vllm).sum())
        keep &= vllm
    kept = np.flatnonzero(keep)[:limit]
    info = {
        "source": str(path),
        "format": "sharegpt",
        "tokenizer": counter.name,
        "vllm_filter": vllm_filter,
        "limit": limit,
        "rows_read": len(data),
        "dropped": dropped,
    }
    columns = {
        "prompt_tokens": prompt_tokens[kept],
        "output_tokens": output_tokens[kept],
        "prompt": pa.array([prompts[i] for i in kept], type=pa.string()),
        "conversation_id": pa.array([ids[i] for i in kept], type=pa.string()),
    }
    return with_metadata(pa.table(columns), info)


def _vllm_keep(prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """vLLM benchmark_serving's ShareGPT filter (lengths counted with our tokenizer)."""
    return (
        (prompt_tokens >= 4)
        & (output_tokens >= 4)
        & (prompt_tokens <= 1024)
        & (prompt_tokens + output_tokens <= 2048)
    )


def _read_json(path: Path):
    raw = path.read_bytes()
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", source=str(path)) from None
    except json.JSONDecodeError as exc:
        at, what = len(exc.doc[: exc.pos].encode()), exc.msg.removesuffix(" at")
        if what.startswith("Unterminated string") or not exc.doc[exc.pos :].strip():
            message = f"truncated JSON at byte {len(raw)}: the file ends early ({what} at byte {at})"
        else:
            message = f"invalid JSON at byte {at} (line {exc.lineno}, column {exc.colno}): {what}"
        raise InputError(message, source=str(path)) from None


def _first_turns(data, source: str):
    """(rows, ids, prompts, replies) of the conversations that have a human -> gpt turn."""
    if not isinstance(data, list):
        raise InputError(
            'expected a JSON list of conversations [{"id": ..., "conversations": [...]}, ...]',
            source=source,
        )
    rows, ids, prompts, replies = [], [], [], []
    for row, item in enumerate(data, start=1):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            raise InputError(
                'expected an object with a "conversations" list', source=source, row=row
            )
        turn = _first_human_gpt(turns, source, row)
        if turn is not None:
            rows.append(row)
            ids.append(None if item.get("id") is None else str(item["id"]))
            prompts.append(turn[0])
            replies.append(turn[1])
    return rows, ids, prompts, replies


def _first_human_gpt(turns: list, source: str, row: int) -> tuple[str, str] | None:
    parsed = [_message(m, k, source, row) for k, m in enumerate(turns, start=1)]
    for (role, text), (next_role, reply) in zip(parsed, parsed[1:]):
        if role == "human" and next_role == "gpt":
            return text, reply
    return None


def _message(message, k: int, source: str, row: int) -> tuple[str, str]:
    if (
        not isinstance(message, dict)
        or not isinstance(message.get("from"), str)
        or not isinstance(message.get("value"), str)
    ):
        raise InputError(
            f'message {k}: expected {{"from": "human"|"gpt", "value": <text>}}',
            source=source,
            row=row,
        )
    return message["from"], message["value"]


# ---------------------------------------------------------------- formats and sources


def detect_format(path) -> str:
    """One of FORMATS, from the extension and the first bytes (Parquet magic, JSON, CSV header)."""
    path = _existing_file(path)
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if not head.strip():
        raise InputError("empty file; expected a workload", source=str(path))
    if head.startswith(b"PAR1") or path.suffix.lower() == ".parquet":
        return "canonical"
    if path.suffix.lower() == ".json" or head.lstrip()[:1] in (b"[", b"{"):
        return "sharegpt"
    first_line = head.decode("utf-8-sig", errors="replace").splitlines()[0]
    header = {cell.strip().strip('"') for cell in first_line.split(",")}
    for fmt, columns in (("vtc-lmsys", VTC_COLUMNS), ("azure", AZURE_COLUMNS), ("canonical", REQUIRED)):
        if header.issuperset(columns):
            return fmt
    raise InputError(
        "unrecognised workload file; expected ShareGPT JSON, canonical Parquet, or a CSV with "
        f"the columns of vtc-lmsys ({', '.join(VTC_COLUMNS)}), azure ({', '.join(AZURE_COLUMNS)}) "
        f"or canonical ({', '.join(REQUIRED)}); found header {first_line[:200]!r}",
        source=str(path),
    )


def lmsys_trace_path() -> Path:
    """The VTC LMSYS trace: ``../shared/data/vtc-lmsys`` beside the working directory or this
    package's repository, else the copy bundled in ``traces/data``."""
    package = Path(__file__).resolve().parent
    for root in (Path.cwd(), package.parent):
        candidate = root.parent / "shared" / "data" / "vtc-lmsys" / LMSYS_FILE
        if candidate.is_file():
            return candidate
    return package / "data" / LMSYS_FILE


_READERS = {"canonical": load_canonical, "vtc-lmsys": load_vtc_lmsys, "azure": load_azure}


def _read_source(source: str, *, format, seed, tokenizer, vllm_filter, limit) -> pa.Table:
    if format is None and source in SYNTHETIC_WORKLOADS:
        return synthesize(source, seed=seed)
    if format is None and source == LMSYS_NAME:
        return load_vtc_lmsys(lmsys_trace_path())
    if format is not None and format not in FORMATS:
        raise InputError(
            f"unknown format {format!r}; expected one of {', '.join(FORMATS)}", source="format"
        )
    looks_like_name = not (Path(source).suffix or "/" in source or "\\" in source)
    if format is None and looks_like_name and not Path(source).exists():
        names = ", ".join([*SYNTHETIC_WORKLOADS, LMSYS_NAME])
        raise InputError(f"no such file, and not a workload name ({names})", source=source)
    fmt = format or detect_format(source)
    if fmt == "sharegpt":
        return load_sharegpt(source, tokenizer=tokenizer, vllm_filter=vllm_filter, limit=limit)
    return _READERS[fmt](source)


def _check_limit(limit) -> None:
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputError(f"must be an integer >= 1, got {limit!r}", source="limit")


def _check_time_scale(time_scale) -> None:
    if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale) and time_scale > 0):
        raise InputError(f"must be a number > 0, got {time_scale!r}", source="time_scale")


# ---------------------------------------------------------------- the canonical workload


def load_workload(
    source,
    *,
    clients: int | None = None,
    client_dist: str = "uniform",
    zipf_s: float = 1.0,
    rate: float | None = None,
    arrival: str = "poisson",
    cv: float = 1.0,
    time_scale: float = 1.0,
    seed: int = 42,
    format: str | None = None,
    tokenizer: str = DEFAULT_TOKENIZER,
    vllm_filter: bool = False,
    limit: int | None = None,
) -> pa.Table:
    """A synthetic workload name, ``"lmsys"`` (the VTC LMSYS trace) or a file, as the canonical table.

    A source without clients gets ``clients`` (default 8) drawn by ``client_dist`` ("uniform" or
    "zipf" with exponent ``zipf_s``); a source without times gets arrivals at ``rate`` req/s
    (default 1) by ``arrival`` ("poisson" or "gamma" with ``cv``).  Giving ``clients`` or
    ``rate`` replaces what the source has (drawn clients reset weights to 1).  ``time_scale``
    then multiplies every arrival time (2.0 = twice as slow), and ``limit`` keeps the first N
    requests.  ``format`` overrides detection: one of FORMATS.
    """
    _check_limit(limit)
    _check_time_scale(time_scale)
    raw = _read_source(
        str(source), format=format, seed=seed, tokenizer=tokenizer, vllm_filter=vllm_filter, limit=limit
    )
    options = {
        "clients": clients,
        "client_dist": client_dist,
        "zipf_s": zipf_s,
        "rate": rate,
        "arrival": arrival,
        "cv": cv,
        "time_scale": time_scale,
        "seed": seed,
        "format": format,
        "tokenizer": tokenizer,
        "vllm_filter": vllm_filter,
        "limit": limit,
    }
    info = {**workload_metadata(raw), "options": options}
    table = _assemble(raw, info, options, label=str(source))
    return table if limit is None else table.slice(0, limit)


def _assemble(raw: pa.Table, info: dict, opts: dict, label: str) -> pa.Table:
    """Fill in clients and arrivals as ``opts`` say, scale time, and build the canonical table."""
    n, have = raw.num_rows, set(raw.column_names)
    draw_clients = opts["clients"] is not None or "client_id" not in have
    draw_times = opts["rate"] is not None or "arrival_s" not in have
    if not (draw_clients or draw_times or opts["time_scale"] != 1) and "request_id" in have:
        return with_metadata(raw, info)  # already canonical: keep its request ids
    weight = raw["weight"].to_numpy() if "weight" in have and not draw_clients else None
    if draw_clients:
        count = DEFAULT_CLIENTS if opts["clients"] is None else opts["clients"]
        client_id = assign_clients(n, count, opts["client_dist"], opts["seed"], opts["zipf_s"])
        info["clients_drawn"] = {"count": count, "dist": opts["client_dist"], "zipf_s": opts["zipf_s"]}
    else:
        client_id = raw["client_id"].to_numpy()
    if draw_times:
        rate = DEFAULT_RATE if opts["rate"] is None else opts["rate"]
        arrival_s = assign_arrivals(n, rate, opts["arrival"], opts["seed"], opts["cv"])
        info["arrivals_drawn"] = {"rate": rate, "process": opts["arrival"], "cv": opts["cv"]}
    else:
        arrival_s = raw["arrival_s"].to_numpy()
    return make_table(
        client_id,
        arrival_s * opts["time_scale"],
        raw["prompt_tokens"].to_numpy(),
        raw["output_tokens"].to_numpy(),
        weight=weight,
        prompt=raw["prompt"].to_pylist() if "prompt" in have else None,
        conversation_id=raw["conversation_id"].to_pylist() if "conversation_id" in have else None,
        metadata=info,
        source=label,
    )
