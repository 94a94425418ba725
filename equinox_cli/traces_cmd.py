"""`equinox traces ...`: list, synth, convert, sample, inspect."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from equinox_cli.common import check_output_file, console, err_console, user_errors
from traces.errors import InputError, TraceWarning

app = typer.Typer(help="Load, convert and synthesise workloads (the canonical request table).", no_args_is_help=True)

# Options shared by convert, sample and inspect: how the input is read ...
FORMAT = typer.Option(
    None,
    "--format",
    help="Override detection: canonical, sharegpt, lmsys-chat-1m, vtc-lmsys, azure, burstgpt, mooncake.",
)
MAP = typer.Option(
    None,
    "--map",
    help="Read any CSV/JSONL/Parquet by columns: arrival=COL[:ms],prompt=COL,output=COL "
    "and optionally client=, prompt_text=, weight=, conversation=, prefix_hashes=.",
)
TOKENIZER = typer.Option(
    "cl100k_base", help="Token counter for text: cl100k_base, o200k_base, llama3, or a local tokenizer.json directory."
)
TURNS = typer.Option("first", help="Conversations: the first user turn of each, or all (prior turns in the prompt).")
THINK_TIME = typer.Option("5s", help="--turns all: pause between an answer's end and the next turn.")
ANSWER_SPEED = typer.Option(50.0, help="--turns all: tokens/s at which an answer is assumed to stream.")
TEXT = typer.Option(True, "--text/--no-text", help="Keep the prompt text (predictors read it).")
# ... and how it is shaped.
CLIENTS = typer.Option(
    None, help="N, uniform:N, zipf:N, shares:0.5,0.3,0.2 or from:COLUMN (replaces any clients the trace has)."
)
CLIENT_DIST = typer.Option("uniform", help="How N clients are drawn: uniform or zipf.")
ZIPF_S = typer.Option(1.0, help="Zipf exponent for zipf clients.")
ARRIVAL = typer.Option("poisson", help="poisson or gamma arrivals (with --rate).")
CV = typer.Option(1.0, help="Coefficient of variation of gamma gaps.")
RATE_SCALE = typer.Option(1.0, help="Multiply the rate of real timestamps (2 = twice as fast).")
DURATION = typer.Option(None, help="Keep the requests that arrive within this time, e.g. 10m.")
MIN_PROMPT = typer.Option(None, help="Drop requests with fewer prompt tokens.")
MAX_PROMPT = typer.Option(None, help="Drop requests with more prompt tokens.")
MIN_OUTPUT = typer.Option(None, help="Drop requests with fewer output tokens.")
MAX_OUTPUT = typer.Option(None, help="Drop requests with more output tokens.")
CAP_PROMPT = typer.Option(None, help="Clip prompt tokens to this (after the filters).")
CAP_OUTPUT = typer.Option(None, help="Clip output tokens to this (after the filters).")
VLLM_FILTER = typer.Option(False, help="vLLM benchmark_serving's ShareGPT length filter.")
LIMIT = typer.Option(None, help="Keep the first N requests.")
SEED = typer.Option(42, help="Seed for client assignment, arrivals and sampling.")
OUT = typer.Option(..., "--out", "-o", help="Output .parquet file.")


@app.command("list")
def traces_list():
    """The synthetic workloads (docs/DESIGN.md, Workloads) and bundled traces."""
    from rich.table import Table

    from traces import SYNTHETIC_WORKLOADS

    table = Table("name", "description")
    for name, text in SYNTHETIC_WORKLOADS.items():
        table.add_row(name, text)
    table.add_row("lmsys", "VTC's LMSYS-derived trace: 27 clients, 1,500 requests over 600 s (bundled)")
    console.print(table)


def _check_out(out: Path) -> None:
    """A .parquet file name that can be written, checked before any input is read."""
    check_output_file(out, "--out")
    if out.suffix != ".parquet":
        raise InputError("the output must be a .parquet file", source=str(out))


def _write_workload(table, out: Path) -> None:
    from engine.results import atomic_write_parquet
    from traces import workload_metadata

    _check_out(out)
    atomic_write_parquet(table, out)
    clients = len(set(table.column("client_id").to_pylist()))
    console.print(f"wrote {out}: {table.num_rows} requests, {clients} clients", soft_wrap=True)
    meta = workload_metadata(table)
    for key in ("dropped", "capped"):
        counts = ", ".join(f"{name} {count}" for name, count in meta.get(key, {}).items() if count)
        if counts:
            console.print(f"{key}: {counts}", soft_wrap=True)


def _load(paths: List[str], **options):
    """load_workload with a progress bar on stderr; its warnings printed as one line each."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from traces import load_workload, parse_duration

    for name in ("think_time", "duration"):
        if options.get(name) is not None:
            options[name] = parse_duration(options[name], name.replace("_", "-"))
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with warnings.catch_warnings(record=True) as caught, Progress(*columns, console=err_console, transient=True) as bar:
        warnings.simplefilter("always", TraceWarning)
        task = bar.add_task("reading", total=None)
        table = load_workload(
            paths[0] if len(paths) == 1 else paths,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            **options,
        )
    for warning in caught:
        if issubclass(warning.category, TraceWarning):
            err_console.print(f"[bold yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)
    return table


@app.command("synth")
@user_errors
def traces_synth(
    name: str = typer.Argument(..., help="A synthetic workload (`equinox traces list`), e.g. overload."),
    out: Path = OUT,
    seed: int = typer.Option(42, help="Seed for arrival phases and Poisson gaps."),
):
    """Generate one of VTC's synthetic workloads as a canonical Parquet file."""
    from traces import synthesize

    _check_out(out)
    _write_workload(synthesize(name, seed=seed), out)


@app.command("convert")
@user_errors
def traces_convert(
    paths: List[str] = typer.Argument(..., help="Input trace file(s); several files are shards of one format."),
    out: Path = OUT,
    fmt: Optional[str] = FORMAT,
    mapping: Optional[str] = MAP,
    tokenizer: str = TOKENIZER,
    turns: str = TURNS,
    think_time: str = THINK_TIME,
    answer_speed: float = ANSWER_SPEED,
    text: bool = TEXT,
    clients: Optional[str] = CLIENTS,
    client_dist: str = CLIENT_DIST,
    zipf_s: float = ZIPF_S,
    rate: Optional[float] = typer.Option(
        None, help="Draw arrivals at this rate (conversations/s), replacing any times."
    ),
    arrival: str = ARRIVAL,
    cv: float = CV,
    rate_scale: float = RATE_SCALE,
    time_scale: float = typer.Option(1.0, help="Stretch real timestamps (2 = half the rate)."),
    duration: Optional[str] = DURATION,
    min_prompt: Optional[int] = MIN_PROMPT,
    max_prompt: Optional[int] = MAX_PROMPT,
    min_output: Optional[int] = MIN_OUTPUT,
    max_output: Optional[int] = MAX_OUTPUT,
    cap_prompt: Optional[int] = CAP_PROMPT,
    cap_output: Optional[int] = CAP_OUTPUT,
    vllm_filter: bool = VLLM_FILTER,
    limit: Optional[int] = LIMIT,
    seed: int = SEED,
    prefix_hashes: Optional[int] = typer.Option(
        None, "--prefix-hashes", help="Hash every prompt's N-token blocks from its conversation (512: Mooncake's)."
    ),
    system_prompts: Optional[str] = typer.Option(
        None, help="CLIENTS:PROMPTS:TOKENS: that many clients share synthetic system prompts (with prefix hashes)."
    ),
):
    """Convert a trace (ShareGPT, LMSYS-Chat-1M, Mooncake, BurstGPT, Azure, VTC LMSYS, or any
    CSV/JSONL/Parquet with --map) into the canonical Parquet workload."""
    options = dict(locals())
    paths, out = options.pop("paths"), options.pop("out")
    _check_out(out)
    options["format"] = options.pop("fmt")
    block, shared = options.pop("prefix_hashes"), options.pop("system_prompts")
    table = _load(paths, **options)
    if block is not None or shared is not None:  # traces/prefix_workloads.py
        from traces.prefix_workloads import PREFIX_BLOCK, parse_system_prompts, with_prefix_hashes

        system = parse_system_prompts(shared) if shared is not None else None
        table = with_prefix_hashes(table, block if block is not None else PREFIX_BLOCK, system)
    _write_workload(table, out)


@app.command("sample")
@user_errors
def traces_sample(
    path: str = typer.Argument(..., help="Input workload or trace file."),
    rate: float = typer.Option(..., help="Conversations (requests, for single-turn traces) per second."),
    out: Path = OUT,
    duration: Optional[str] = DURATION,
    clients: Optional[str] = CLIENTS,
    client_dist: str = CLIENT_DIST,
    zipf_s: float = ZIPF_S,
    arrival: str = ARRIVAL,
    cv: float = CV,
    fmt: Optional[str] = FORMAT,
    mapping: Optional[str] = MAP,
    tokenizer: str = TOKENIZER,
    turns: str = TURNS,
    think_time: str = THINK_TIME,
    answer_speed: float = ANSWER_SPEED,
    text: bool = TEXT,
    min_prompt: Optional[int] = MIN_PROMPT,
    max_prompt: Optional[int] = MAX_PROMPT,
    min_output: Optional[int] = MIN_OUTPUT,
    max_output: Optional[int] = MAX_OUTPUT,
    cap_prompt: Optional[int] = CAP_PROMPT,
    cap_output: Optional[int] = CAP_OUTPUT,
    seed: int = SEED,
):
    """A seeded random sample: conversations drawn in random order, arriving at --rate for --duration."""
    options = dict(locals())
    path, out = options.pop("path"), options.pop("out")
    _check_out(out)
    options["format"] = options.pop("fmt")
    _write_workload(_load([path], shuffle=True, **options), out)


@app.command("inspect")
@user_errors
def traces_inspect(
    path: str = typer.Argument(..., help="A workload, or any trace convert reads (with its defaults)."),
    png: Optional[Path] = typer.Option(None, help="Also write a PNG of arrivals over time and length histograms."),
    fmt: Optional[str] = FORMAT,
    mapping: Optional[str] = MAP,
    tokenizer: str = TOKENIZER,
    turns: str = TURNS,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Rows, clients, duration, rates, length percentiles, per-client counts and provenance."""
    from traces import plot_workload, summarize

    if png is not None:
        check_output_file(png, "--png")
    table = _load([path], format=fmt, mapping=mapping, tokenizer=tokenizer, turns=turns)
    summary = summarize(table)
    if png is not None:
        plot_workload(table, png)
    if as_json:
        console.print_json(json.dumps(summary, default=str))
    else:
        _print_summary(summary)
    if png is not None:
        console.print(f"wrote {png}")


def _print_summary(s: dict) -> None:
    from rich.table import Table

    conversations = f"{s['conversations']:,} conversations" if s["conversations"] else "no conversation ids"
    line = (
        f"{s['rows']:,} requests, {s['clients']} clients ({conversations}) over "
        f"{s['duration_s']:,.1f} s: {s['mean_rate']:.3g} req/s mean, "
        f"{s['peak_rate']:.3g} req/s in the busiest {s['peak_window_s']:g} s"
    )
    if s["with_prefix_hashes"]:
        blocks = s["prefix_blocks"]
        line += (
            f"; {s['with_prefix_hashes']:,} with prefix hashes: {blocks['total']:,} blocks, "
            f"{blocks['distinct']:,} distinct, {blocks['repeated_fraction']:.0%} repeat an earlier block"
        )
    console.print(line, soft_wrap=True)
    lengths = Table("tokens", "mean", "p50", "p90", "p99", "max")
    for name, stats in s["lengths"].items():
        lengths.add_row(name, *(f"{stats[k]:,.0f}" for k in ("mean", "p50", "p90", "p99", "max")))
    console.print(lengths)
    clients = Table("client", "requests", "share")
    shown = list(s["per_client"].items())
    for client, count in shown[:15]:
        clients.add_row(client, f"{count:,}", f"{count / s['rows']:.1%}")
    if len(shown) > 15:
        rest = sum(count for _, count in shown[15:])
        clients.add_row(f"({len(shown) - 15} more)", f"{rest:,}", f"{rest / s['rows']:.1%}")
    console.print(clients)
    console.print("provenance:")
    console.print_json(json.dumps(s["provenance"], default=str))
