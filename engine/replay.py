"""The replay driver: one workload, one or more schedulers, one results directory each."""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.presets import DEFAULT_PRESET, get_preset
from engine.results import (
    COUNTERS_FILE,
    REQUESTS_FILE,
    RUN_FILE,
    STEPS_FILE,
    atomic_directory,
    atomic_write_json,
    atomic_write_parquet,
)
from engine.simulator import EngineConfig, Simulator
from engine.slora import SLoRAEngine, slora_config
from schedulers import EquinoxKnobs, ServiceWeights, make_policy, run_name
from traces.errors import InputError
from traces.schema import workload_metadata


def engine_config(preset_name: str = DEFAULT_PRESET, **overrides) -> tuple[EngineConfig, object]:
    """The engine configuration of a preset, with any non-None overrides applied."""
    preset = get_preset(preset_name)
    config = EngineConfig(
        kv_capacity_tokens=preset.kv_capacity_tokens,
        max_running=preset.max_running,
        max_batch_tokens=preset.max_batch_tokens,
        block_size=preset.block_size,
        admit_every=preset.merge_interval_steps,
        max_model_len=preset.max_model_len,
    )
    limit = overrides.get("max_model_len")
    if limit is not None and limit < 1:
        raise InputError(f"must be at least 1 token, got {limit}", source="--max-model-len")
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    return config, preset


# Overload: the replay says so when serving took this many times the arrivals' span, or when the
# queue grew over the second half of the arrivals to at least OVERLOAD_QUEUE of the requests.
OVERLOAD_SPAN_RATIO = 2.0
OVERLOAD_QUEUE = 0.05
REJECT_WARNING = 0.01  # rejections above this share of the requests are a warning


def run_summary(requests: pa.Table, config: EngineConfig) -> dict:
    """What the terminal should hear about a run: rejections per reason, overload, prefix hits."""
    status = np.asarray(requests.column("status").to_pylist(), dtype=object)
    served = status == "finished"
    n = len(status)
    out: dict = {"requests": n, "served": int(served.sum()), "max_model_len": config.max_model_len}
    reasons = requests.column("reject_reason").to_pylist() if "reject_reason" in requests.column_names else []
    counts: dict[str, int] = {}
    for reason in reasons:
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
    out["rejected"] = dict(sorted(counts.items()))
    arrival = requests.column("arrival_s").to_numpy()
    finish = np.asarray(requests.column("finish_s").to_pylist(), dtype=float)
    admitted = np.asarray(requests.column("admitted_s").to_pylist(), dtype=float)
    if served.sum() >= 20 and n > 1:
        start, last = float(arrival.min()), float(arrival.max())
        span = last - start
        makespan = float(np.nanmax(finish[served])) - start

        def waiting_at(t: float) -> int:  # served requests that had arrived but not yet started at t
            return int(np.count_nonzero(served & (arrival <= t) & (admitted > t)))

        end_queue, mid_queue = waiting_at(last), waiting_at(start + span / 2)
        ratio = makespan / span if span > 0 else None
        growing = end_queue > mid_queue and end_queue >= max(10, OVERLOAD_QUEUE * served.sum())
        out["overload"] = {
            "span_s": span, "makespan_s": makespan, "ratio": ratio, "waiting_at_last_arrival": end_queue,
            "waiting_at_mid_arrivals": mid_queue,
            "overloaded": bool(
                span > 0 and end_queue >= max(10, 0.01 * served.sum()) and (ratio >= OVERLOAD_SPAN_RATIO or growing)
            ),
        }  # fmt: skip
    if config.prefix_caching and "cached_prompt_tokens" in requests.column_names:
        prompt = requests.column("prompt_tokens").to_numpy()[served]
        cached = np.asarray(requests.column("cached_prompt_tokens").to_pylist(), dtype=object)[served]
        hit = int(sum(c or 0 for c in cached))
        out["prefix_cache"] = {"cached_prompt_tokens": hit, "prompt_tokens": int(prompt.sum())}
    return out


def summary_lines(name: str, summary: dict) -> list[tuple[bool, str]]:
    """The replay's lines about one run: (is_warning, text)."""
    lines = []
    n = summary["requests"]
    rejected = summary.get("rejected") or {}
    total = sum(rejected.values())
    if total:
        why = {
            "too_long": f"too_long (prompt + output over the {summary.get('max_model_len') or 0:,}-token context)",
            "exceeds_kv": "exceeds_kv (larger than the whole KV cache)",
            "rate_limit": "rate_limit (refused by the policy)",
        }
        parts = ", ".join(f"{count:,} {why.get(reason, reason)}" for reason, count in rejected.items())
        text = f"{name}: rejected {total:,} of {n:,} requests ({100 * total / n:.1f}%): {parts}"
        share = sum(c for r, c in rejected.items() if r != "rate_limit") / n
        if share > REJECT_WARNING:
            text += "; a preset with a longer context or a larger KV cache serves them (equinox presets)"
        lines.append((share > REJECT_WARNING, text))
    over = summary.get("overload")
    if over and over["overloaded"]:
        ratio = over["ratio"]
        lines.append((True, (
            f"{name}: offered load exceeds what the engine serves: serving took {ratio:.1f}x the arrivals' span "
            f"({over['makespan_s']:,.0f} s for arrivals over {over['span_s']:,.0f} s; "
            f"{over['waiting_at_last_arrival']:,} requests still waiting at the last arrival); for a load it "
            f"keeps up with, stretch the arrivals (--time-scale {max(ratio, 1.1):.1f}, or equinox traces shape "
            f"--rate-scale {1 / max(ratio, 1.1):.2f}) or pick a bigger preset (equinox presets)"
        )))  # fmt: skip
    cache = summary.get("prefix_cache")
    if cache and cache["cached_prompt_tokens"]:
        share = cache["cached_prompt_tokens"] / max(1, cache["prompt_tokens"])
        lines.append((False, f"{name}: prefix cache served {100 * share:.1f}% of the prompt tokens"))
    return lines


def fingerprint(table: pa.Table) -> str:
    """A content hash of the workload's scheduling columns."""
    h = hashlib.sha256()
    for name in ("client_id", "arrival_s", "prompt_tokens", "output_tokens", "weight"):
        col = table.column(name).combine_chunks()
        if pa.types.is_string(col.type):
            h.update("\x00".join(col.to_pylist()).encode())
        else:
            h.update(np.ascontiguousarray(col.to_numpy()).tobytes())
    return h.hexdigest()[:16]


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("equinox-fair", "numpy", "pyarrow", "pandas"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def counters_table(policy) -> pa.Table | None:
    """Equinox's per-client counter trajectory (``counters.parquet``), if the policy keeps one."""
    trajectory = getattr(policy, "trajectory", None)
    return trajectory.table() if trajectory is not None and len(trajectory) else None


def write_run_files(
    directory: Path, requests: pa.Table, steps: pa.Table | None, config: dict, counters: pa.Table | None = None
) -> None:
    """Write a run's files into ``directory``; ``steps`` None when they were streamed there already."""
    atomic_write_parquet(requests, directory / REQUESTS_FILE)
    if steps is not None:
        atomic_write_parquet(steps, directory / STEPS_FILE)
    if counters is not None:
        atomic_write_parquet(counters, directory / COUNTERS_FILE)
    atomic_write_json(config, directory / RUN_FILE)


def write_run(run_dir: Path, requests: pa.Table, steps: pa.Table, config: dict, counters: pa.Table | None = None):
    """Write one run directory; it appears whole or not at all."""
    with atomic_directory(run_dir) as tmp:
        write_run_files(tmp, requests, steps, config, counters)


def _conversations(workload):
    """The workload's conversation per row (a MoPE session reads a request's earlier turns by it), or None."""
    if "conversation_id" not in workload.column_names:
        return None
    return workload.column("conversation_id").to_pylist()


def replay(
    workload: pa.Table,
    schedulers: list[str],
    out_dir: Path,
    *,
    workload_name: str = "workload",
    preset: str = DEFAULT_PRESET,
    seed: int = 42,
    service: ServiceWeights = ServiceWeights(),
    equinox: EquinoxKnobs = EquinoxKnobs(),
    predictors=None,
    progress=None,
    engine_mode: str | None = None,
    **engine_overrides,
) -> list[Path]:
    """Replay ``workload`` under each scheduler spec; write ``out_dir/<scheduler>/``.

    ``progress`` is an optional ``rich.progress.Progress``; each scheduler gets a task.
    ``equinox`` holds the Equinox knobs; ``predictors`` is a loaded MoPE bundle whose
    sessions supply predicted lengths to the policies that use them.
    ``engine_mode`` "slora" replays on S-LoRA's router (engine/slora.py) instead of the vLLM-mode
    simulator; None: the preset's own mode.
    Returns the run directories in the order of ``schedulers``.
    """
    config, engine_preset = engine_config(preset, **engine_overrides)
    mode = engine_mode or engine_preset.mode
    if mode not in ("vllm", "slora"):
        raise InputError(f"unknown engine mode {mode!r}; expected vllm or slora", source="--engine-mode")
    if mode == "slora":
        o = engine_overrides
        config = slora_config(
            engine_preset,
            max_total_tokens=o.get("kv_capacity_tokens"),
            running_max_req_size=o.get("max_running"),
            batch_max_tokens=o.get("max_batch_tokens"),
            max_wait_tokens=o.get("admit_every"),
        )
    names = [run_name(spec) for spec in schedulers]  # validates every spec before any work
    policies = [
        make_policy(
            spec,
            seed=seed,
            service=service,
            equinox=equinox,
            predictor=predictors.session(conversations=_conversations(workload)) if predictors is not None else None,
        )
        for spec in schedulers
    ]
    out_dir = Path(out_dir)
    workload_record = {
        "name": workload_name,
        "requests": workload.num_rows,
        "clients": len(set(workload.column("client_id").to_pylist())),
        "fingerprint": fingerprint(workload),
        "provenance": workload_metadata(workload),
    }
    runs = []
    for spec, name, policy in zip(schedulers, names, policies):
        callback = None
        if progress is not None:
            task = progress.add_task(f"{workload_name} / {name}", total=workload.num_rows)
            callback = lambda done, task=task: progress.update(task, completed=done)  # noqa: E731
        run_dir = out_dir / name
        with atomic_directory(run_dir) as tmp:
            if mode == "slora":
                sim = SLoRAEngine(config, engine_preset.cost_model, policy, progress=callback)
            else:
                sim = Simulator(
                    config, engine_preset.cost_model, policy, progress=callback, steps_path=tmp / STEPS_FILE
                )
            started = time.perf_counter()
            requests, steps = sim.run(workload, scheduler_name=name)
            wall = time.perf_counter() - started
            record = _run_record(
                name, spec, policy, seed, service, workload_record, engine_preset, config, sim.step, wall
            )
            record["summary"] = run_summary(requests, config)
            write_run_files(tmp, requests, steps, record, counters_table(policy))
        if progress is not None:
            progress.update(task, completed=workload.num_rows)
        runs.append(run_dir)
    return runs


def _run_record(name, spec, policy, seed, service, workload_record, engine_preset, config, steps, wall) -> dict:
    return {
        "scheduler": name,
        "scheduler_spec": spec,
        "policy": policy.describe(),
        "seed": seed,
        "service_weights": {"w_p": service.w_p, "w_q": service.w_q},
        "workload": workload_record,
        "engine": {
            "kind": "simulator",
            "preset": engine_preset.name,
            "peak_flops": engine_preset.hardware.peak_flops,
            **config.as_dict(),
        },
        "steps": steps,
        "wall_s": round(wall, 3),
        "versions": _versions(),
    }
