"""The options that turn a source into a workload, and the seeded rules that apply them.

``collect`` gathers a reader's chunks, applying length filters, caps and ``limit`` as they
come; ``assemble`` gives the result the clients and arrival times it lacks (or that the
options replace), scales and cuts time, and builds the canonical table.

Clients and arrivals are drawn per conversation (the rows sharing a ``conversation_id``, else
each row alone), in order of first appearance: a conversation's turns share a client, and
when arrivals are drawn the rate counts conversation starts.  A later turn arrives after the
turn before it by that turn's answer time plus a think time: from the source's own arrival
times when it has them, else estimated as ``output_tokens / answer_speed + think_time``.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from traces.arrivals import (
    SHUFFLE_STREAM,
    assign_arrivals,
    client_probs,
    draw_clients,
    parse_clients,
)
from traces.errors import InputError, TraceWarning
from traces.schema import make_table, with_metadata
from traces.tokenizer import DEFAULT_TOKENIZER

DEFAULT_CLIENTS = 8  # clients drawn for a source that has none
DEFAULT_RATE = 1.0  # req/s of the arrivals drawn for a source that has no times
TURNS = ("first", "all")
LENGTH_BOUNDS = ("min_prompt", "max_prompt", "min_output", "max_output", "cap_prompt", "cap_output")
_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "ms": 1e-3}


@dataclass
class Options:
    """How a source becomes a canonical workload; each field has a ``--option`` of the same name."""

    format: str | None = None  # overrides detection (see traces.formats.FORMATS)
    mapping: str | dict | None = None  # --map: canonical=source columns of any CSV/JSONL/Parquet
    tokenizer: str = DEFAULT_TOKENIZER  # counts tokens of sources that have text
    turns: str = "first"  # conversations: the first user -> assistant turn, or "all"
    think_time: float = 5.0  # s from an answer's end to the next turn (turns="all", no times)
    answer_speed: float = 50.0  # tokens/s an answer is assumed to stream at (turns="all", no times)
    text: bool = True  # keep the prompt text
    clients: int | str | None = None  # N, uniform:N, zipf:N, shares:A,B,..., from:COLUMN
    client_dist: str = "uniform"  # how N clients are drawn: uniform or zipf
    zipf_s: float = 1.0
    rate: float | None = None  # draw arrivals: conversation starts per second
    arrival: str = "poisson"  # or gamma (with cv)
    cv: float = 1.0
    time_scale: float = 1.0  # multiplies every arrival time
    rate_scale: float = 1.0  # divides every arrival time
    duration: float | None = None  # keep the requests that arrive before this (s)
    shuffle: bool = False  # draw conversations in a seeded random order (sample)
    vllm_filter: bool = False  # vLLM benchmark_serving's ShareGPT length filter
    min_prompt: int | None = None  # drop requests outside the bounds ...
    max_prompt: int | None = None
    min_output: int | None = None
    max_output: int | None = None
    cap_prompt: int | None = None  # ... then clip lengths to the caps
    cap_output: int | None = None
    limit: int | None = None  # keep the first N requests
    seed: int = 42

    def __post_init__(self):
        for name in ("time_scale", "rate_scale", "answer_speed"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"must be a number > 0, got {value!r}", source=name)
        for name in ("limit", *LENGTH_BOUNDS):
            value = getattr(self, name)
            low = 1 if name in ("limit", "cap_prompt", "cap_output") else 0
            if value is not None and (not isinstance(value, (int, np.integer)) or value < low):
                raise InputError(f"must be an integer >= {low}, got {value!r}", source=name)
        for name in ("think_time", "duration"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"must be a number of seconds >= 0, got {value!r}", source=name)
        if self.turns not in TURNS:
            raise InputError(f"expected one of {', '.join(TURNS)}, got {self.turns!r}", source="turns")
        self.client_column, self.client_probs = parse_clients(self.clients, self.client_dist, self.zipf_s)

    def record(self) -> dict:
        """The options as given, for the provenance metadata."""
        return asdict(self)


def parse_duration(text, option: str = "duration") -> float:
    """Seconds from ``90``, ``90s``, ``1.5m``, ``10min``, ``2h`` or ``500ms``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise InputError(f"expected a duration like 90s, 10m or 1h, got {text!r}", source=option)
    return float(match.group(1)) * _UNITS[match.group(2)]


# ---------------------------------------------------------------- reading


def collect(chunks, opts: Options, info: dict) -> pa.Table:
    """The chunks of a reader as one table, length filters, caps and ``limit`` applied."""
    tables, kept = [], 0
    try:
        for chunk in chunks:
            chunk = _shape_lengths(chunk, opts, info)
            if opts.limit is not None:
                chunk = chunk.slice(0, opts.limit - kept)
            tables.append(chunk)
            kept += chunk.num_rows
            if opts.limit is not None and kept >= opts.limit:
                break
    finally:
        chunks.close()
    if not kept:
        dropped = ", ".join(f"{k} {v}" for k, v in info.get("dropped", {}).items() if v)
        raise InputError(
            "the workload has no requests" + (f" (dropped: {dropped})" if dropped else ""), source=_label(info)
        )
    return pa.concat_tables(t for t in tables if t.num_rows)


def _label(info: dict) -> str:
    source = info.get("source")
    return ", ".join(source) if isinstance(source, list) else str(source)


def vllm_keep(prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """vLLM benchmark_serving's ShareGPT filter (lengths counted with our tokenizer)."""
    return (
        (prompt_tokens >= 4) & (output_tokens >= 4) & (prompt_tokens <= 1024) & (prompt_tokens + output_tokens <= 2048)
    )


def _shape_lengths(chunk: pa.Table, opts: Options, info: dict) -> pa.Table:
    """Drop what the length filters reject (counted in info["dropped"]), then apply the caps."""
    dropped = info["dropped"]
    prompt, output = chunk["prompt_tokens"].to_numpy(), chunk["output_tokens"].to_numpy()
    keep = np.ones(len(prompt), dtype=bool)
    if opts.vllm_filter:
        vllm = vllm_keep(prompt, output)
        dropped["vllm_filter"] = dropped.get("vllm_filter", 0) + int((keep & ~vllm).sum())
        keep &= vllm
    bounds = [
        (prompt, opts.min_prompt, opts.max_prompt),
        (output, opts.min_output, opts.max_output),
    ]
    if any(b is not None for _, low, high in bounds for b in (low, high)):
        within = np.ones(len(prompt), dtype=bool)
        for values, low, high in bounds:
            within &= (values >= (low or 0)) & (values <= (np.inf if high is None else high))
        dropped["length_filter"] = dropped.get("length_filter", 0) + int((keep & ~within).sum())
        keep &= within
    if not keep.all():
        chunk = chunk.filter(pa.array(keep))
    for name, cap in (("prompt_tokens", opts.cap_prompt), ("output_tokens", opts.cap_output)):
        if cap is not None:
            capped = info.setdefault("capped", {})
            capped[name] = capped.get(name, 0) + int(pc.sum(pc.greater(chunk[name], cap)).as_py() or 0)
            index = chunk.schema.get_field_index(name)
            chunk = chunk.set_column(index, name, pc.min_element_wise(chunk[name], pa.scalar(cap, pa.int64())))
    return chunk


# ---------------------------------------------------------------- the canonical workload


def conversation_groups(table: pa.Table) -> np.ndarray:
    """Each row's conversation number (rows sharing a conversation_id share one; a row without
    one is alone), numbered by first appearance."""
    n = table.num_rows
    if "conversation_id" not in table.column_names:
        return np.arange(n)
    codes, _ = pd.factorize(np.asarray(table["conversation_id"].to_pylist(), dtype=object))
    alone = codes < 0
    codes[alone] = codes.max(initial=-1) + 1 + np.arange(alone.sum())
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse]


def assemble(raw: pa.Table, info: dict, opts: Options, label: str) -> pa.Table:
    """Fill in clients and arrivals as ``opts`` say, scale and cut time, build the canonical table."""
    have = set(raw.column_names)
    draw_clients_ = opts.client_probs is not None or "client_id" not in have
    draw_times = opts.rate is not None or "arrival_s" not in have
    scale = opts.time_scale / opts.rate_scale
    if opts.shuffle and not draw_times:
        raise InputError("a random sample draws new arrivals: give a rate", source="rate")
    if not (draw_clients_ or draw_times or scale != 1 or opts.duration is not None) and "request_id" in have:
        return with_metadata(raw, info)  # already canonical: keep its request ids
    groups = conversation_groups(raw)
    count = int(groups.max()) + 1
    weight = raw["weight"].to_numpy() if "weight" in have and not draw_clients_ else None
    if draw_clients_:
        probs = opts.client_probs
        if probs is None:
            probs = client_probs(DEFAULT_CLIENTS, opts.client_dist, opts.zipf_s)
        client_id = draw_clients(count, probs, opts.seed)[groups]
        dist = opts.client_dist if opts.clients is None or str(opts.clients).isdigit() else str(opts.clients)
        info["clients_drawn"] = {"count": len(probs), "dist": dist, "zipf_s": opts.zipf_s}
    else:
        client_id = raw["client_id"]
    if draw_times:
        arrival_s = _draw_arrivals(raw, groups, count, opts, info)
    else:
        arrival_s = raw["arrival_s"].to_numpy()
    table = make_table(
        client_id,
        arrival_s * scale,
        raw["prompt_tokens"].to_numpy(),
        raw["output_tokens"].to_numpy(),
        weight=weight,
        prompt=raw["prompt"] if "prompt" in have else None,
        conversation_id=raw["conversation_id"] if "conversation_id" in have else None,
        prefix_hashes=raw["prefix_hashes"] if "prefix_hashes" in have else None,
        metadata=info,
        source=label,
    )
    if opts.duration is not None:
        kept = int(np.searchsorted(table["arrival_s"].to_numpy(), opts.duration, side="left"))
        info.setdefault("dropped", {})["after_duration"] = table.num_rows - kept
        if not kept:
            raise InputError(f"no request arrives within {opts.duration:g} s", source="duration")
        table = with_metadata(table.slice(0, kept), info)
    return table


def _draw_arrivals(raw: pa.Table, groups: np.ndarray, count: int, opts: Options, info: dict) -> np.ndarray:
    """Conversation starts at the rate, plus each turn's offset within its conversation."""
    rate = DEFAULT_RATE if opts.rate is None else opts.rate
    starts = assign_arrivals(count, rate, opts.arrival, opts.seed, opts.cv)
    info["arrivals_drawn"] = {"rate": rate, "process": opts.arrival, "cv": opts.cv}
    if opts.shuffle:
        order = np.random.default_rng([opts.seed, SHUFFLE_STREAM]).permutation(count)
        starts = starts[np.argsort(order)]  # conversation order[k] starts k-th
    span = (opts.duration or math.inf) / (opts.time_scale / opts.rate_scale)
    if opts.duration is not None and starts.max() < span:
        warnings.warn(
            f"the source has {count} conversations: at {rate:g}/s they start within "
            f"{starts.max() * opts.time_scale / opts.rate_scale:.0f} s, short of the {opts.duration:g} s asked",
            TraceWarning,
            stacklevel=4,
        )
    if count == raw.num_rows:
        return starts
    if "arrival_s" in raw.column_names:  # keep the source's timing within a conversation
        arrival = pd.Series(raw["arrival_s"].to_numpy())
        offsets = (arrival - arrival.groupby(groups).transform("min")).to_numpy()
    else:
        gaps = raw["output_tokens"].to_numpy() / opts.answer_speed + opts.think_time
        offsets = pd.Series(gaps).groupby(groups).cumsum().to_numpy() - gaps
        info["turn_timing"] = {"think_time_s": opts.think_time, "answer_speed_tokens_per_s": opts.answer_speed}
    return starts[groups] + offsets
