"""``load_workload``, which turns any source into the canonical table, and the raw readers.

The raw readers (``read_raw`` and its shorthands ``load_sharegpt``, ``load_vtc_lmsys``,
``load_azure``, ``load_canonical``) stream one or more files of one format (see
:mod:`traces.formats`) into the canonical columns the source has, with provenance in the
schema metadata.  ``load_workload`` then fills in what a source lacks (clients, arrival times)
by the seeded rules of :mod:`traces.shaping` and builds the canonical table.

Every problem with a file is an ``InputError`` naming the file, the 1-based data row (the
first row after a CSV header, the first conversation of a ShareGPT list) or byte, and what
was expected.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from traces.errors import InputError, TraceWarning
from traces.formats import (
    COLUMN_FORMATS,
    DIALECTS,
    FORMATS,
    column_chunks,
    conversation_chunks,
    detect,
    finish_arrivals,
    parse_mapping,
)
from traces.schema import conform, with_metadata, workload_metadata
from traces.shaping import Options, assemble, collect
from traces.streams import sniff
from traces.synthetic import SYNTHETIC_WORKLOADS, synthesize
from traces.tokenizer import DEFAULT_TOKENIZER

LMSYS_FILE = "vtc_lmsys_real_trace.csv"
LMSYS_NAME = "lmsys"
Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


def _existing_file(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", source=str(path))
    if not p.is_file():
        raise InputError("not a file; expected a workload file", source=str(path))
    return p


def detect_format(path) -> str:
    """One of FORMATS, from the extension and the first bytes (Parquet columns, JSON keys, CSV header)."""
    path = _existing_file(path)
    return detect(path, *sniff(path))


def read_raw(paths, opts: Options | None = None, progress: Progress | None = None) -> pa.Table:
    """The canonical columns that files of one format have, streamed (filters and limit applied)."""
    paths = [_existing_file(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    opts = opts or Options()
    fmt = opts.format or ("mapped" if opts.mapping else None)
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", source="format")
    if opts.mapping and fmt != "mapped":
        raise InputError(f"--map reads any CSV/JSONL/Parquet file; leave out --format {fmt}", source="map")
    cmap = parse_mapping(opts.mapping) if fmt == "mapped" else COLUMN_FORMATS.get(fmt)
    sniffed = [sniff(p) for p in paths]
    fmt = fmt or detect(paths[0], *sniffed[0])
    cmap = cmap or COLUMN_FORMATS.get(fmt)
    sources = [str(p) for p in paths]
    info = {"source": sources[0] if len(paths) == 1 else sources, "format": fmt, "rows_read": 0, "dropped": {}}
    total = sum(p.stat().st_size for p in paths)

    def chunks():
        done = 0
        for path, (kind, keys) in zip(paths, sniffed):
            report = (lambda n, base=done: progress(base + n, total)) if progress else None
            if fmt in DIALECTS:
                yield from conversation_chunks(path, kind, keys, DIALECTS[fmt], opts, info, report)
            else:
                yield from column_chunks(path, kind, keys, cmap, opts, info, report)
            done += path.stat().st_size

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceWarning)
        table = collect(chunks(), opts, info)
    for warning in caught:  # kept in the provenance, and passed on
        if issubclass(warning.category, TraceWarning):
            info.setdefault("warnings", []).append(str(warning.message))
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if "arrival_s" in table.column_names and fmt != "canonical":
        table = finish_arrivals(table, cmap, info)
    if fmt == "canonical":
        table = conform(table, source=", ".join(sources))
        upstream = workload_metadata(pq.read_schema(paths[0])) if sniffed[0][0] == "parquet" else {}
        if upstream:
            info["upstream"] = upstream
    return with_metadata(table, info)


def load_sharegpt(
    path, *, tokenizer: str = DEFAULT_TOKENIZER, vllm_filter: bool = False, limit: int | None = None, **options
) -> pa.Table:
    """ShareGPT conversations: by default the first human -> gpt turn of each (prompt text and
    tokens, reply tokens, conversation id); ``turns="all"`` gives every turn (see Options).

    Conversations without such a turn are skipped, as are turns whose prompt or reply has no
    tokens.  With ``vllm_filter`` it also drops what vLLM's benchmark_serving drops: a prompt or
    reply under 4 tokens, a prompt over 1024, or prompt + reply over 2048.  ``limit`` keeps the
    first N turns that pass.  Drop counts go to the metadata.
    """
    opts = Options(format="sharegpt", tokenizer=tokenizer, vllm_filter=vllm_filter, limit=limit, **options)
    return read_raw(path, opts)


def load_vtc_lmsys(path) -> pa.Table:
    """The VTC LMSYS trace CSV: client = adapter_dir, arrival = req_time (s).

    Rows with 0 prompt or output tokens are dropped and counted in the metadata.
    """
    return read_raw(path, Options(format="vtc-lmsys"))


def load_azure(path) -> pa.Table:
    """The Azure LLM inference trace CSV: arrival = seconds since the earliest TIMESTAMP.

    The trace has no clients (``load_workload`` draws them).  Rows with 0 context or
    generated tokens are dropped and counted in the metadata.
    """
    return read_raw(path, Options(format="azure"))


def load_canonical(path) -> pa.Table:
    """A Parquet, CSV or JSON Lines file that already has the canonical columns (sorted by arrival_s)."""
    return read_raw(path, Options(format="canonical"))


def lmsys_trace_path() -> Path:
    """The VTC LMSYS trace: ``../shared/data/vtc-lmsys`` beside the working directory or this
    package's repository, else the copy bundled in ``traces/data``."""
    package = Path(__file__).resolve().parent
    for root in (Path.cwd(), package.parent):
        candidate = root.parent / "shared" / "data" / "vtc-lmsys" / LMSYS_FILE
        if candidate.is_file():
            return candidate
    return package / "data" / LMSYS_FILE


def _read_source(source, opts: Options, progress: Progress | None) -> pa.Table:
    if isinstance(source, (list, tuple)):
        return read_raw(source, opts=opts, progress=progress)
    source = str(source)
    builtin = opts.format is None and not opts.mapping and source in (*SYNTHETIC_WORKLOADS, LMSYS_NAME)
    if builtin and opts.client_column:
        raise InputError(
            f"from:{opts.client_column} takes clients from a column of a trace file; the built-in workload "
            f"{source!r} has its own clients (use N, uniform:N, zipf:N or shares:... to redraw them)",
            source="--clients",
        )
    if opts.format is None and not opts.mapping and source in SYNTHETIC_WORKLOADS:
        return synthesize(source, seed=opts.seed)
    if opts.format is None and not opts.mapping and source == LMSYS_NAME:
        return load_vtc_lmsys(lmsys_trace_path())
    looks_like_name = not (Path(source).suffix or "/" in source or "\\" in source)
    if opts.format is None and looks_like_name and not Path(source).exists():
        names = ", ".join([*SYNTHETIC_WORKLOADS, LMSYS_NAME])
        raise InputError(f"no such file, and not a workload name ({names})", source=source)
    return read_raw(source, opts=opts, progress=progress)


def load_workload(source, *, progress: Progress | None = None, **options) -> pa.Table:
    """A synthetic workload name, ``"lmsys"`` (the VTC LMSYS trace), a file or a list of files
    (shards of one format), as the canonical table.

    ``options`` are the fields of :class:`traces.shaping.Options`.  A source without clients
    gets ``clients`` (default 8) drawn by ``client_dist`` ("uniform" or "zipf" with exponent
    ``zipf_s``); a source without times gets arrivals at ``rate`` req/s (default 1) by
    ``arrival`` ("poisson" or "gamma" with ``cv``).  Giving ``clients`` or ``rate`` replaces
    what the source has (drawn clients reset weights to 1).  ``time_scale`` then multiplies
    every arrival time (2.0 = twice as slow), ``duration`` cuts it, and ``limit`` keeps the first
    N requests.  ``format`` overrides detection: one of FORMATS.  ``progress(done, total)`` is
    called with the bytes read so far.
    """
    opts = Options(**options)
    raw = _read_source(source, opts, progress)
    info = {**workload_metadata(raw), "options": opts.record()}
    label = ", ".join(map(str, source)) if isinstance(source, (list, tuple)) else str(source)
    table = assemble(raw, info, opts, label=label)
    return table if opts.limit is None else table.slice(0, opts.limit)
