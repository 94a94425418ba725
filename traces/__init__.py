"""Workloads for Equinox: real traces and VTC's synthetic suite, as one canonical table.

``load_workload(source, ...)`` takes a synthetic workload name (see ``SYNTHETIC_WORKLOADS``),
``"lmsys"`` (the VTC LMSYS trace) or files (ShareGPT, LMSYS-Chat-1M, Mooncake, BurstGPT, VTC
LMSYS, Azure LLM, canonical Parquet/CSV, or any CSV/JSONL/Parquet through a column mapping),
and returns a ``pyarrow.Table`` with ``WORKLOAD_SCHEMA``.  Formats and options: docs/TRACES.md.
"""

from traces.arrivals import assign_arrivals, assign_clients, parse_clients
from traces.errors import InputError, TraceWarning
from traces.formats import FORMATS
from traces.loaders import (
    detect_format,
    load_azure,
    load_canonical,
    load_sharegpt,
    load_vtc_lmsys,
    load_workload,
    read_raw,
)
from traces.schema import (
    REQUIRED,
    WORKLOAD_SCHEMA,
    conform,
    make_table,
    validate,
    with_metadata,
    workload_metadata,
)
from traces.shaping import DEFAULT_CLIENTS, DEFAULT_RATE, Options, parse_duration
from traces.summary import plot_workload, summarize
from traces.synthetic import SYNTHETIC_WORKLOADS, synthesize
from traces.tokenizer import available_tokenizers, get_tokenizer

__all__ = [
    "DEFAULT_CLIENTS",
    "DEFAULT_RATE",
    "FORMATS",
    "REQUIRED",
    "SYNTHETIC_WORKLOADS",
    "WORKLOAD_SCHEMA",
    "InputError",
    "Options",
    "TraceWarning",
    "assign_arrivals",
    "assign_clients",
    "available_tokenizers",
    "conform",
    "detect_format",
    "get_tokenizer",
    "load_azure",
    "load_canonical",
    "load_sharegpt",
    "load_vtc_lmsys",
    "load_workload",
    "make_table",
    "parse_clients",
    "parse_duration",
    "plot_workload",
    "read_raw",
    "summarize",
    "synthesize",
    "validate",
    "with_metadata",
    "workload_metadata",
]
