"""`equinox serve`, `equinox calibrate`, and the real-engine half of `equinox replay`.

``serve`` starts vLLM's OpenAI-compatible server with the fair scheduler (serving/server.py);
``calibrate`` fits the simulator's step time to a real engine's logs and reports the simulator's
latency error (serving/calibrate.py); ``replay_real`` is what ``equinox replay --engine vllm``
and ``equinox replay --endpoint URL`` run (serving/replay_vllm.py, serving/endpoint.py).
vLLM is imported only when a command needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from equinox_cli.common import console, err_console, user_errors
from schedulers.equinox import EquinoxKnobs
from traces.errors import InputError, read_toml

_EQ = EquinoxKnobs()


def _knobs(**values) -> dict:
    try:
        knobs = EquinoxKnobs(**values)
    except ValueError as exc:
        raise InputError(str(exc), source="Equinox options") from None
    return {k: v for k, v in knobs.__dict__.items() if k != "lengths"}


@user_errors
def serve(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", "-m", help="Model directory or name, as vLLM takes it."),
    scheduler: str = typer.Option(
        "vtc", "--scheduler", "-s", help="One scheduler: fcfs, vtc, lcf, vtc-predict, vtc-oracle[:P], rpm[:N], equinox."
    ),  # fmt: skip
    tenants: Optional[Path] = typer.Option(
        None, help="TOML file of API keys -> tenants and weights (docs/SERVING.md). Without it the server runs open."
    ),
    log_dir: Optional[Path] = typer.Option(
        None, help="Write requests.parquet, steps.parquet and run.json here (the simulator's schema)."
    ),
    flush_interval: float = typer.Option(5.0, min=0.05, help="Rewrite the logs every this many seconds."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    tenant_header: str = typer.Option("X-Equinox-Tenant", help="Open mode: header naming the tenant."),
    default_tenant: str = typer.Option("default", help="Tenant of requests that name none (open mode)."),
    seed: int = typer.Option(42, help="Seed of the policy (vtc-oracle noise)."),
    w_p: float = typer.Option(1.0, help="Service price of a prompt token."),
    w_q: float = typer.Option(2.0, help="Service price of an output token."),
    alpha: float = typer.Option(_EQ.alpha, help="Equinox: weight of the UFC in HF.", rich_help_panel="Equinox"),
    beta: float = typer.Option(_EQ.beta, help="Equinox: weight of the RFC in HF.", rich_help_panel="Equinox"),
    gamma: float = typer.Option(_EQ.gamma, help="Equinox: latency discount (0 = off).", rich_help_panel="Equinox"),
    ttft_slo: float = typer.Option(_EQ.ttft_slo_s, help="Equinox: TTFT SLO, s.", rich_help_panel="Equinox"),
    tpot_slo: float = typer.Option(_EQ.tpot_slo_s, help="Equinox: TPOT SLO, s.", rich_help_panel="Equinox"),
    kappa: float = typer.Option(_EQ.kappa, help="Equinox: the guard, in U and R units.", rich_help_panel="Equinox"),
    adaptive_budget: bool = typer.Option(
        _EQ.adaptive_budget, help="Equinox: adapt the step token budget.", rich_help_panel="Equinox"
    ),  # fmt: skip
    budget_min: int = typer.Option(_EQ.budget_min, help="Equinox: smallest budget.", rich_help_panel="Equinox"),
    budget_max: int = typer.Option(_EQ.budget_max, help="Equinox: largest budget.", rich_help_panel="Equinox"),
    utilization_target: float = typer.Option(
        _EQ.utilization_target, help="Equinox: budget growth threshold.", rich_help_panel="Equinox"
    ),  # fmt: skip
    predictors: Optional[Path] = typer.Option(None, help="A MoPE bundle: predicted lengths for equinox/vtc-predict."),
    peak_flops: Optional[float] = typer.Option(
        None, help="The device's dense peak FLOP/s, for MFU and train-predictors (known GPUs are recognised)."
    ),
):
    """Serve MODEL behind vLLM's OpenAI API with a fair scheduler and authenticated tenants.

    Options after `--` go to vLLM (e.g. `-- --max-num-seqs 64 --gpu-memory-utilization 0.8`).
    """
    from serving.bridge import ServingSettings
    from serving.replay_vllm import require_vllm
    from serving.server import serve as run_server

    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():  # a path, not a hub name
        raise InputError("no such model directory", source=f"--model {model}")
    require_vllm()
    if predictors is not None and not predictors.exists():
        raise InputError("no such bundle", source=str(predictors))
    try:
        settings = ServingSettings(
            scheduler=scheduler, seed=seed, w_p=w_p, w_q=w_q,
            equinox=_knobs(alpha=alpha, beta=beta, gamma=gamma, ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo, kappa=kappa,
                           adaptive_budget=adaptive_budget, budget_min=budget_min, budget_max=budget_max,
                           utilization_target=utilization_target),
            predictors=str(predictors.resolve()) if predictors else None,
            log_dir=str(log_dir.resolve()) if log_dir else None, flush_interval_s=flush_interval,
            default_tenant=default_tenant, peak_flops=peak_flops, run={"mode": "serve"},
        )  # fmt: skip
    except ValueError as exc:
        raise InputError(str(exc), source="serve options") from None

    def echo(line: str) -> None:
        err_console.print(line, highlight=False, soft_wrap=True)

    run_server(model, settings, tenants=tenants, host=host, port=port, tenant_header=tenant_header,
               vllm_args=list(ctx.args), echo=echo)  # fmt: skip


SERVE_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


@user_errors
def calibrate(
    runs: List[Path] = typer.Argument(..., help="Run directories of a real engine (replay --engine vllm, serve logs)."),
    fit_on: List[Path] = typer.Option([], "--fit-on", help="Fit on these runs only (default: all RUNS)."),
    cost_model: Optional[Path] = typer.Option(None, help="Use this calibration.json's model instead of fitting."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write calibration.json and OUT/sim/<run>/ here."),
    seed: int = typer.Option(42, help="Seed of the simulated policies."),
):
    """Fit the simulator's step time to real step logs; report simulated vs real TTFT and e2e p50/p90."""
    from serving.calibrate import CalibratedCostModel, markdown
    from serving.calibrate import calibrate as run_calibrate

    model = CalibratedCostModel.load(cost_model) if cost_model is not None else None
    dirs = [d for p in runs for d in _run_dirs(p)]
    fit_dirs = [d for p in fit_on for d in _run_dirs(p)]
    report = run_calibrate(dirs, out, seed=seed, model=model, fit_on=fit_dirs or None)
    console.print(markdown(report), highlight=False, soft_wrap=True)
    if out is not None:
        console.print(f"wrote {out / 'calibration.json'} and {out / 'sim'}")


def _run_dirs(path: Path) -> list[Path]:
    if (path / "run.json").exists():
        return [path]
    subs = sorted(d for d in path.iterdir() if (d / "run.json").exists()) if path.is_dir() else []
    if not subs:
        raise InputError("expected a run directory (run.json) or a directory of them", source=str(path))
    return subs


def _api_keys(path: Optional[Path]) -> dict:
    """``[keys]`` table of a TOML file: tenant = "key"."""
    if path is None:
        return {}
    keys = read_toml(path, "a TOML file with a [keys] table").get("keys")
    if not isinstance(keys, dict) or any(not isinstance(v, str) for v in keys.values()):
        raise InputError('expected a [keys] table of tenant = "API key"', source=str(path))
    return {str(k): v for k, v in keys.items()}


def replay_real(
    table,
    specs: list[str],
    out: Path,
    *,
    engine: str,
    endpoint: Optional[str],
    model: Optional[str],
    workload_name: str,
    seed: int,
    service,
    knobs: EquinoxKnobs,
    predictors: Optional[Path],
    kv_capacity: Optional[int],
    max_running: Optional[int],
    max_batch_tokens: Optional[int],
    chunked_prefill: bool,
    api_key: Optional[str] = None,
    api_keys: Optional[Path] = None,
    concurrency: int = 64,
    route: str = "completions",
    max_model_len: Optional[int] = None,
    block_size: Optional[int] = None,
    peak_flops: Optional[float] = None,
    progress=None,
) -> list[Path]:
    """`equinox replay --engine vllm` or `--endpoint URL`: returns the run directories written."""
    if endpoint:
        from serving.endpoint import EndpointOptions, replay_endpoint

        if engine != "simulator":
            raise InputError("--endpoint replays against a running server; leave out --engine", source="--endpoint")
        options = EndpointOptions(url=endpoint, model=model, api_key=api_key, api_keys=_api_keys(api_keys),
                                  concurrency=concurrency, route=route, kv_capacity_tokens=kv_capacity)  # fmt: skip
        callback = None
        if progress is not None:
            task = progress.add_task(f"{workload_name} / endpoint", total=table.num_rows)
            callback = lambda k: progress.update(task, completed=k)  # noqa: E731
        run = replay_endpoint(table, out, options, workload_name=workload_name, seed=seed, progress=callback,
                              echo=lambda line: err_console.print(line, highlight=False))  # fmt: skip
        return [run]
    if engine != "vllm":
        raise InputError(f"unknown engine {engine!r}; expected simulator or vllm", source="--engine")
    if not model:
        raise InputError("--engine vllm needs --model (a model directory or name)", source="--model")
    from serving.replay_vllm import VllmEngineOptions, replay_vllm, require_vllm

    require_vllm()
    blocks = None
    if kv_capacity is not None:  # in blocks of a size we set, so that the capacity is what was asked
        if block_size is None:
            from vllm.platforms import current_platform

            block_size = 32 if current_platform.is_cpu() else 16  # vLLM's CPU attention takes multiples of 32
        blocks = max(1, -(-kv_capacity // block_size))
    options = VllmEngineOptions(
        model=model, max_num_seqs=max_running, max_num_batched_tokens=max_batch_tokens, max_model_len=max_model_len,
        num_gpu_blocks=blocks, block_size=block_size, enable_chunked_prefill=chunked_prefill, seed=seed,
    )  # fmt: skip
    bundle = str(predictors) if predictors else None
    return replay_vllm(table, specs, out, options, workload_name=workload_name, seed=seed, service=service,
                       equinox=knobs, predictors=bundle, peak_flops=peak_flops, progress=progress)  # fmt: skip
