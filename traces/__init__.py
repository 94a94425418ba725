"""Workloads for Equinox: real traces and VTC's synthetic suite, as one canonical table.

``load_workload(source, ...)`` takes a synthetic workload name (see ``SYNTHETIC_WORKLOADS``),
``"lmsys"`` (the VTC LMSYS trace) or a file (ShareGPT JSON, VTC LMSYS CSV, Azure LLM CSV, or
a canonical Parquet/CSV), and returns a ``pyarrow.Table`` with ``WORKLOAD_SCHEMA``.
"""

from traces.arrivals import assign_arrivals, assign_clients
from traces.errors import InputError
from traces.loaders import (
    DEFAULT_CLIENTS,
    DEFAULT_RATE,
    FORMATS,
    detect_format,
    load_azure,
    load_canonical,
    load_sharegpt,
    load_vtc_lmsys,
    load_workload,
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
    "synthesize",
    "validate",
    "with_metadata",
    "workload_metadata",
]
