"""`equinox replay`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from equinox_cli.common import (
    WORKLOAD_HELP,
    console,
    err_console,
    load,
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
        help="Comma-separated schedulers: fcfs, vtc, lcf, vtc-predict, vtc-oracle[:P], rpm[:N].",
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
        False, help="Stall-free steps (Sarathi-Serve): decodes first, then partial, then new prefills."
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
        None, help="--engine vllm: context length.", rich_help_panel="Real engines"
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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from engine.replay import replay as run_replay
    from schedulers import ServiceWeights, run_name

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

    specs = split_list(scheduler)
    for spec in specs:
        run_name(spec)  # fail on a bad name before loading anything
    table = load(
        workload, clients=clients, client_dist=client_dist, rate=rate, arrival=arrival,
        time_scale=time_scale, seed=seed, fmt=fmt, tokenizer=tokenizer,
    )  # fmt: skip
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if engine != "simulator" or endpoint:
        from equinox_cli.serve_cmd import replay_real

        with Progress(*columns, console=err_console, transient=False) as progress:
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
    with Progress(*columns, console=err_console, transient=False) as progress:
        runs = run_replay(
            table, specs, out, workload_name=workload, preset=preset, seed=seed,
            service=ServiceWeights(w_p, w_q), equinox=knobs, predictors=bundle, progress=progress,
            stall_free=stall_free,
            kv_capacity_tokens=kv_capacity, max_running=max_running,
            max_batch_tokens=max_batch_tokens, chunked_prefill=chunked_prefill, admit_every=admit_every,
        )  # fmt: skip
    for run in runs:
        console.print(f"wrote {run}")
    console.print(f"next: equinox audit {out}")
