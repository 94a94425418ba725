"""`equinox replay`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from equinox_cli.common import (
    WORKLOAD_HELP,
    check_number,
    check_output_dir,
    console,
    err_console,
    load,
    progress_display,
    sigterm_unwinds,
    split_list,
    user_errors,
)
from schedulers.equinox import EquinoxKnobs
from traces.errors import InputError

_EQ = EquinoxKnobs()  # the documented defaults


@user_errors
def replay(
    workload: str = typer.Option("overload", "--workload", "-w", help=WORKLOAD_HELP),
    scheduler: List[str] = typer.Option(
        ["fcfs,vtc"],
        "--scheduler",
        "-s",
        help="Comma-separated schedulers: fcfs, vtc, lcf, vtc-predict, vtc-oracle[:P], rpm[:N], dlpm[:Q], "
        "equinox, equinox-oracle (see `equinox schedulers`).",
    ),
    out: Path = typer.Option(
        Path("runs/latest"), "--out", "-o", help="Results directory; one sub-directory per scheduler."
    ),
    preset: str = typer.Option(
        "vtc-a10g-llama2-7b",
        help="Engine preset (hardware + model); see `equinox presets`. The default is the VTC paper's engine.",
    ),
    seed: int = typer.Option(42, help="Seed for synthetic arrivals, client assignment and oracle noise."),
    clients: Optional[str] = typer.Option(
        None,
        help="Assign clients (seeded; replaces the trace's): N, uniform:N, zipf:N, shares:0.5,0.3,0.2 or from:COLUMN.",
    ),
    client_dist: str = typer.Option("uniform", help="How --clients are assigned: uniform or zipf."),
    rate: Optional[float] = typer.Option(None, help="Requests/s for a trace without timestamps."),
    arrival: str = typer.Option("poisson", help="Arrival process with --rate: poisson or gamma."),
    time_scale: float = typer.Option(1.0, help="Stretch real timestamps (2 = half the rate)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Force the input format instead of detecting it."),
    tokenizer: str = typer.Option("cl100k_base", help="Tokenizer for traces with text (ShareGPT)."),
    kv_capacity: Optional[int] = typer.Option(None, help="KV cache capacity in tokens (default: the preset's)."),
    max_running: Optional[int] = typer.Option(None, help="Cap on running requests (default: the preset's)."),
    max_batch_tokens: Optional[int] = typer.Option(None, help="Token budget per step (default: the preset's)."),
    chunked_prefill: bool = typer.Option(True, help="Split long prompts across steps to fit the token budget."),
    admit_every: Optional[int] = typer.Option(
        None, min=1, help="Admit new requests every N steps (default: the preset's; VTC's engine merges every 10)."
    ),
    stall_free: bool = typer.Option(
        False,
        hidden=True,
        help="Kept for old scripts: with chunked prefill the engine's order is already stall-free (decodes never "
        "wait behind a prefill), so this changes nothing (docs/ENGINE.md).",
    ),
    prefix_caching: bool = typer.Option(
        True,
        help="Automatic prefix caching (vLLM's default): prompt blocks keyed by the workload's prefix_hashes, "
        "conversation or text are reused while cached (docs/ENGINE.md).",
    ),
    engine_mode: Optional[str] = typer.Option(
        None,
        help="vllm (continuous batching, preemption) or slora (VTC's S-LoRA router: memory reserved for "
        "each request's whole output, no preemption, merges every 10 decode steps); default: the preset's.",
    ),
    w_p: float = typer.Option(1.0, help="Service price of a prompt token."),
    w_q: float = typer.Option(2.0, help="Service price of an output token."),
    alpha: float = typer.Option(
        _EQ.alpha, help="Equinox: weight of the User Fairness Counter in HF.", rich_help_panel="Equinox"
    ),
    beta: float = typer.Option(
        _EQ.beta, help="Equinox: weight of the Resource Fairness Counter in HF.", rich_help_panel="Equinox"
    ),
    gamma: float = typer.Option(
        _EQ.gamma, help="Equinox: latency discount strength (0 = off).", rich_help_panel="Equinox"
    ),
    ttft_slo: float = typer.Option(_EQ.ttft_slo_s, help="Equinox: TTFT SLO in seconds.", rich_help_panel="Equinox"),
    tpot_slo: float = typer.Option(
        _EQ.tpot_slo_s, help="Equinox: time-per-output-token SLO in seconds.", rich_help_panel="Equinox"
    ),
    kappa: float = typer.Option(
        _EQ.kappa,
        help="Equinox: the guard: a client more than kappa U (UFC) or kappa R (RFC) over the smallest waits.",
        rich_help_panel="Equinox",
    ),
    adaptive_budget: bool = typer.Option(
        _EQ.adaptive_budget,
        help="Equinox: adapt the step token budget to the TPOT SLO and utilization.",
        rich_help_panel="Equinox",
    ),
    budget_min: int = typer.Option(
        _EQ.budget_min, help="Equinox: smallest adaptive token budget.", rich_help_panel="Equinox"
    ),
    budget_max: int = typer.Option(
        _EQ.budget_max, help="Equinox: largest adaptive token budget.", rich_help_panel="Equinox"
    ),
    utilization_target: float = typer.Option(
        _EQ.utilization_target,
        help="Equinox: grow the budget while a step uses less than this share of it.",
        rich_help_panel="Equinox",
    ),
    predictors: Optional[Path] = typer.Option(
        None, help="A MoPE bundle (equinox train-predictors): predicted lengths for equinox and vtc-predict."
    ),
    engine: str = typer.Option(
        "simulator",
        help="simulator, or vllm: a real vLLM engine in this process (needs --model; docs/SERVING.md).",
        rich_help_panel="Real engines",
    ),
    model: Optional[str] = typer.Option(
        None,
        help="--engine vllm: the model (directory or name); --endpoint: the served model name.",
        rich_help_panel="Real engines",
    ),
    max_model_len: Optional[int] = typer.Option(
        None,
        help="Context limit in tokens: a request whose prompt + output exceeds it is rejected (too_long). "
        "Default: the preset's (the model's context); --engine vllm: the model's context length.",
    ),
    peak_flops: Optional[float] = typer.Option(
        None,
        help="--engine vllm: the device's dense peak FLOP/s (MFU, train-predictors); known GPUs are recognised.",
        rich_help_panel="Real engines",
    ),
    endpoint: Optional[str] = typer.Option(
        None,
        help="Replay against this OpenAI-compatible server (streaming; client-side times).",
        rich_help_panel="Real engines",
    ),
    api_key: Optional[str] = typer.Option(
        None, help="--endpoint: API key for every request.", rich_help_panel="Real engines"
    ),
    api_keys: Optional[Path] = typer.Option(
        None, help='--endpoint: TOML [keys] table of tenant = "API key".', rich_help_panel="Real engines"
    ),
    concurrency: int = typer.Option(
        64, min=1, help="--endpoint: most requests in flight.", rich_help_panel="Real engines"
    ),
    route: str = typer.Option("completions", help="--endpoint: completions or chat.", rich_help_panel="Real engines"),
):
    """Replay a workload on the simulated engine, a real vLLM engine, or an OpenAI-compatible endpoint.

    Writes OUT/<scheduler>/requests.parquet, steps.parquet and run.json (OUT/endpoint/ for --endpoint).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from engine.replay import replay as run_replay
    from schedulers import ServiceWeights, run_name

    _check_options(locals())
    try:
        knobs = EquinoxKnobs(
            alpha=alpha, beta=beta, gamma=gamma, ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo, kappa=kappa,
            adaptive_budget=adaptive_budget, budget_min=budget_min, budget_max=budget_max,
            utilization_target=utilization_target,
        )  # fmt: skip
    except ValueError as exc:
        raise InputError(str(exc), source="Equinox options") from None
    bundle = None
    if predictors is not None and engine == "simulator" and not endpoint:  # real engines load it themselves
        import warnings

        from predictors import load_bundle

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bundle = load_bundle(predictors, preset=preset)
        for warning in caught:
            err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False)

    if max_model_len is not None and max_model_len < 1:
        raise InputError(f"must be at least 1 token, got {max_model_len}", source="--max-model-len")
    specs = split_list(scheduler)
    for spec in specs:
        run_name(spec)  # fail on a bad name before loading anything
    table = load(
        workload, clients=clients, client_dist=client_dist, rate=rate, arrival=arrival,
        time_scale=time_scale, seed=seed, fmt=fmt, tokenizer=tokenizer,
    )  # fmt: skip
    _warn_foreign_runs(out, table, [run_name(spec) for spec in specs])
    _remove_stale_temporaries(out, [run_name(spec) for spec in specs])
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if engine != "simulator" or endpoint:
        from equinox_cli.serve_cmd import replay_real

        with sigterm_unwinds(), progress_display(*columns) as progress:
            runs = replay_real(
                table, specs, out, engine=engine, endpoint=endpoint, model=model, workload_name=workload, seed=seed,
                service=ServiceWeights(w_p, w_q), knobs=knobs, predictors=predictors, kv_capacity=kv_capacity,
                max_running=max_running, max_batch_tokens=max_batch_tokens, chunked_prefill=chunked_prefill,
                api_key=api_key, api_keys=api_keys, concurrency=concurrency, route=route,
                max_model_len=max_model_len, peak_flops=peak_flops, progress=progress,
            )  # fmt: skip
        for run in runs:
            console.print(f"wrote {run}")
        console.print(f"next: equinox audit {out}")
        return
    with sigterm_unwinds(), progress_display(*columns) as progress:
        runs = run_replay(
            table, specs, out, workload_name=workload, preset=preset, seed=seed,
            service=ServiceWeights(w_p, w_q), equinox=knobs, predictors=bundle, progress=progress,
            stall_free=stall_free, engine_mode=engine_mode, prefix_caching=prefix_caching,
            max_model_len=max_model_len,
            kv_capacity_tokens=kv_capacity, max_running=max_running,
            max_batch_tokens=max_batch_tokens, chunked_prefill=chunked_prefill, admit_every=admit_every,
        )  # fmt: skip
    _print_summaries(runs)
    for run in runs:
        console.print(f"wrote {run}")
    console.print(f"next: equinox audit {out}")


def _check_options(opts: dict) -> None:
    """Engine sizes, service prices and Equinox knobs a replay can run with, and an --out that can be
    a directory: one line and exit 2 before anything is loaded or written."""
    for name in ("kv_capacity", "max_running", "max_batch_tokens"):
        check_number(opts[name], "--" + name.replace("_", "-"), low=1, integer=True)
    for name in ("w_p", "w_q", "alpha", "beta", "gamma", "kappa"):
        check_number(opts[name], "--" + name.replace("_", "-"), low=0)
    if opts["w_p"] == 0 and opts["w_q"] == 0:
        raise InputError("a request would cost nothing; give w_p or w_q a price > 0", source="--w-p/--w-q")
    for name in ("ttft_slo", "tpot_slo", "time_scale", "rate"):
        check_number(opts[name], "--" + name.replace("_", "-"), above=0)
    check_number(opts["utilization_target"], "--utilization-target", above=0)
    if opts["kv_capacity"] is not None and opts["engine"] == "simulator" and not opts["endpoint"]:
        from engine.presets import get_preset

        block = get_preset(opts["preset"]).block_size
        if opts["kv_capacity"] < block:
            raise InputError(
                f"expected at least one KV block ({block} tokens), got {opts['kv_capacity']}", source="--kv-capacity"
            )
    check_output_dir(opts["out"], "--out")


def _warn_foreign_runs(out: Path, table, names: list[str]) -> None:
    """Say so when --out already holds runs of another workload (ones this replay does not replace):
    the audit of --out would refuse to put them side by side."""
    import json

    from engine.replay import fingerprint
    from reports.audit import find_runs, workload_of

    if not out.is_dir():
        return
    mine = fingerprint(table)
    foreign = []
    for run in find_runs(out):
        if run.parent.resolve() == out.resolve() and run.name in names:
            continue  # this replay replaces it
        try:
            name, fp = workload_of(json.loads((run / "run.json").read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if fp is not None and fp != mine:
            foreign.append(f"{run.relative_to(out).as_posix() or '.'} ({name}, fingerprint {fp})")
    if foreign:
        err_console.print(
            f"[yellow]warning:[/] {out} already holds runs of another workload: {', '.join(foreign)} "
            f"(this one's fingerprint is {mine}); `equinox audit {out}` will refuse to mix them unless "
            "--allow-mixed, so use another --out or audit the runs by directory",
            highlight=False,
            soft_wrap=True,
        )


def _print_summaries(runs) -> None:
    """Per run: rejections per reason, overload, prefix-cache hits (from run.json's summary)."""
    import json

    from engine.replay import summary_lines
    from engine.results import RUN_FILE

    for run in runs:
        record = json.loads((Path(run) / RUN_FILE).read_text())
        for warning, text in summary_lines(record["scheduler"], record.get("summary") or {}):
            if warning:
                err_console.print(f"[yellow]warning:[/] {text}", highlight=False)
            else:
                err_console.print(text, highlight=False)


def _remove_stale_temporaries(out: Path, names: list[str]) -> None:
    """Delete what an interrupted replay (killed, even with -9) left of these runs: the hidden
    ``.<run>.*.tmp`` and ``.<run>.*.old`` directories of an atomic write.  Two replays of the same
    scheduler into one --out at the same time are not supported (the later removes the earlier's)."""
    import shutil

    if not out.is_dir():
        return
    stale = sorted(p for name in names for pattern in (f".{name}.*.tmp", f".{name}.*.old") for p in out.glob(pattern))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        err_console.print(
            f"removed {len(stale)} temporary {'directory' if len(stale) == 1 else 'directories'} "
            f"an interrupted replay left in {out}",
            highlight=False,
            soft_wrap=True,
        )
