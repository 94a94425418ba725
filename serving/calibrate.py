"""``equinox calibrate``: fit the simulator's step-time model to a real engine's step logs, then
replay the same workloads on the simulator and report how far its latencies are from the real ones.

The fitted model (``CalibratedCostModel``) is linear in what a step does::

    step_time = base_s + prefill_s * prefill_tokens + decode_s * decode_tokens
                + request_s * requests + attention_s * (prefill_attn_pairs + decode_kv_tokens)

fitted by non-negative least squares over the busy steps of the given runs
(the adapter logs every step's tokens and FLOPs; with the model's shape from ``run.json`` the
FLOPs give back the attention work).  Busy steps in the logs tile the time line, so the fitted
time includes the engine's per-step host overhead, as the simulator needs.

For each run the simulator then replays the run's own requests (those the real engine
finished) with the run's scheduler, its engine limits (KV capacity, ``max_num_seqs``,
``max_num_batched_tokens``, block size) and the fitted model, and the report gives the TTFT and
end-to-end latency p50 and p90 of both and their relative error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from engine.replay import counters_table, write_run
from engine.results import REQUESTS_FILE, RUN_FILE, STEPS_FILE, atomic_write_json
from engine.simulator import EngineConfig, Simulator
from schedulers import EquinoxKnobs, ServiceWeights, make_policy
from traces.errors import InputError
from traces.schema import make_table

QUANTILES = {"p50": 0.5, "p90": 0.9}


@dataclass(frozen=True)
class CalibratedCostModel:
    """A step-time model fitted to a real engine (see the module docstring)."""

    base_s: float
    prefill_s: float
    decode_s: float
    request_s: float
    attention_s: float
    linear_params: int = 0  # for step FLOPs (0: unknown)
    n_layers: int = 0
    d_model: int = 0
    kv_bytes_per_token: int = 0
    peak_flops: float = 0.0

    def step_time(self, prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens, num_requests):
        p = np.asarray(prefill_tokens, dtype=float)
        d = np.asarray(decode_tokens, dtype=float)
        attn = np.asarray(prefill_attn_pairs, dtype=float) + np.asarray(decode_kv_tokens, dtype=float)
        t = (self.base_s + self.prefill_s * p + self.decode_s * d + self.request_s * np.asarray(num_requests, float)
             + self.attention_s * attn)  # fmt: skip
        out = np.where(p + d > 0, t, 0.0)
        return float(out) if np.ndim(out) == 0 else out

    def step_flops(self, prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens):
        tokens = np.asarray(prefill_tokens, dtype=float) + np.asarray(decode_tokens, dtype=float)
        attn = np.asarray(prefill_attn_pairs, dtype=float) + np.asarray(decode_kv_tokens, dtype=float)
        out = 2.0 * self.linear_params * tokens + 4.0 * self.d_model * self.n_layers * attn
        return float(out) if np.ndim(out) == 0 else out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CalibratedCostModel":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path) -> "CalibratedCostModel":
        try:
            return cls.from_dict(json.loads(Path(path).read_text())["cost_model"])
        except FileNotFoundError:
            message = "missing file; expected a calibration (equinox calibrate --out)"
            raise InputError(message, source=str(path)) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"not a calibration file: {exc}", source=str(path)) from None


@dataclass
class RealRun:
    name: str
    path: Path
    config: dict
    requests: pd.DataFrame
    steps: pd.DataFrame


def load_real_run(path: Path, name: str | None = None) -> RealRun:
    path = Path(path)
    for f in (REQUESTS_FILE, STEPS_FILE, RUN_FILE):
        if not (path / f).exists():
            raise InputError(f"missing {f}; expected a run directory of a real engine", source=str(path))
    config = json.loads((path / RUN_FILE).read_text())
    engine = config.get("engine") or {}
    if engine.get("kind") != "vllm":
        raise InputError(f"engine kind {engine.get('kind')!r}: calibration needs a vLLM run "
                         "(equinox replay --engine vllm or equinox serve --log-dir)", source=str(path))  # fmt: skip
    return RealRun(name or path.name, path, config, pd.read_parquet(path / REQUESTS_FILE),
                   pd.read_parquet(path / STEPS_FILE))  # fmt: skip


def _features(run: RealRun) -> tuple[np.ndarray, np.ndarray]:
    """(X, t) of the run's busy steps: columns 1, prefill, decode, requests, attention work."""
    s = run.steps[run.steps.busy]
    shape = (run.config.get("engine") or {}).get("model_shape") or {}
    tokens = s.prefill_tokens.to_numpy(float) + s.decode_tokens.to_numpy(float)
    if shape.get("d_model") and shape.get("n_layers"):
        linear = 2.0 * shape["linear_params"] * tokens
        attn = (s.flops.to_numpy(float) - linear) / (4.0 * shape["d_model"] * shape["n_layers"])
        attn = np.maximum(attn, 0.0)
    else:
        attn = np.zeros(len(s))
    X = np.column_stack([np.ones(len(s)), s.prefill_tokens.to_numpy(float), s.decode_tokens.to_numpy(float),
                         s.running.to_numpy(float), attn])  # fmt: skip
    return X, s.duration_s.to_numpy(float)


def fit(runs: list[RealRun]) -> tuple[CalibratedCostModel, dict]:
    """Fit the cost model on the busy steps of ``runs``; returns it and the fit's step-time errors."""
    from scipy.optimize import nnls

    parts = [_features(r) for r in runs]
    X = np.vstack([p[0] for p in parts])
    t = np.concatenate([p[1] for p in parts])
    keep = t > 0
    X, t = X[keep], t[keep]
    if len(t) < 5:
        raise InputError(f"only {len(t)} busy steps in the logs; calibration needs more", source="calibrate")
    scale = X.max(axis=0)
    scale[scale == 0] = 1.0
    # Absolute error: the fit is unbiased in the mean, so sums of steps (latencies) come out right.
    coef, _ = nnls(X / scale, t)
    coef = coef / scale
    shape = (runs[0].config.get("engine") or {}).get("model_shape") or {}
    model = CalibratedCostModel(
        *map(float, coef), linear_params=int(shape.get("linear_params", 0)), n_layers=int(shape.get("n_layers", 0)),
        d_model=int(shape.get("d_model", 0)),
    )  # fmt: skip
    pred = X @ coef
    rel = np.abs(pred - t) / t
    stats = {"steps": int(len(t)), "mape": float(rel.mean()), "median_ape": float(np.median(rel)),
             "p90_ape": float(np.quantile(rel, 0.9)), "mean_step_s": float(t.mean())}  # fmt: skip
    return model, stats


def engine_config_of(config: dict) -> EngineConfig:
    e = config.get("engine") or {}
    try:
        return EngineConfig(
            kv_capacity_tokens=int(e["kv_capacity_tokens"]), max_running=int(e["max_running"]),
            max_batch_tokens=int(e["max_batch_tokens"]), block_size=int(e["block_size"]),
            chunked_prefill=bool(e.get("chunked_prefill", True)),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"run.json engine section lacks {exc}", source="calibrate") from None


def policy_of(config: dict, seed: int):
    spec = config.get("scheduler_spec") or config.get("scheduler")
    described = config.get("policy") or {}
    knobs = {f.name: described[f.name] for f in fields(EquinoxKnobs) if f.name in described and f.name != "lengths"}
    prices = config.get("service_weights") or {}
    service = ServiceWeights(float(prices.get("w_p", 1.0)), float(prices.get("w_q", 2.0)))
    return spec, make_policy(spec, seed=seed, service=service, equinox=EquinoxKnobs(**knobs))


def workload_of(run: RealRun) -> pa.Table:
    """The requests the real engine finished, as a workload (arrival order, ids kept)."""
    req = run.requests[run.requests.status == "finished"].sort_values(["arrival_s", "request_id"])
    table = make_table(
        req.client_id.astype(str).to_numpy(), req.arrival_s.to_numpy(float), req.prompt_tokens.to_numpy(),
        req.generated_tokens.to_numpy(), weight=req.weight.to_numpy(float), source=str(run.path),
    )  # fmt: skip
    ids = pa.array(req.request_id.to_numpy(np.int64))
    return table.set_column(0, "request_id", ids)


def latency_quantiles(req: pd.DataFrame) -> dict:
    done = req[req.status == "finished"]
    ttft = done.first_token_s - done.arrival_s
    e2e = done.finish_s - done.arrival_s
    return {f"{m}_{q}": float(s.quantile(v)) for m, s in (("ttft", ttft), ("e2e", e2e)) for q, v in QUANTILES.items()}


def calibrate(paths, out_dir: Path | None = None, *, seed: int = 42, model: CalibratedCostModel | None = None,
              fit_on=None) -> dict:  # fmt: skip
    """Fit (on ``fit_on`` runs, default all of ``paths``; or take ``model``) and compare every run of
    ``paths`` with its simulation; writes ``out_dir/calibration.json`` and the simulated runs
    ``out_dir/sim/<run>/`` when ``out_dir`` is set.  Returns the report."""
    runs = [load_real_run(Path(p)) for p in paths]
    fit_runs = [load_real_run(Path(p)) for p in fit_on] if fit_on else runs
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        for r in runs:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    fit_stats = None
    if model is None:
        model, fit_stats = fit(fit_runs)
        fit_stats["runs"] = [str(r.path) for r in fit_runs]
    report = {"cost_model": model.to_dict(), "fit": fit_stats, "runs": []}
    for run in runs:
        workload = workload_of(run)
        config = engine_config_of(run.config)
        spec, policy = policy_of(run.config, seed)
        sim_req, sim_steps = Simulator(config, model, policy).run(workload, scheduler_name=run.config.get("scheduler"))
        real_q = latency_quantiles(run.requests)
        sim_q = latency_quantiles(sim_req.to_pandas())
        errors = {k: (sim_q[k] - real_q[k]) / real_q[k] if real_q[k] > 0 else float("nan") for k in real_q}
        X, t = _features(run)
        rel = np.abs(X @ np.array([model.base_s, model.prefill_s, model.decode_s, model.request_s, model.attention_s])
                     - t) / np.where(t > 0, t, np.nan)  # fmt: skip
        report["runs"].append({
            "name": run.name, "path": str(run.path), "scheduler": spec, "requests": workload.num_rows,
            "real": real_q, "sim": sim_q, "error": errors, "step_mape": float(np.nanmean(rel)) if len(rel) else None,
            "real_makespan_s": float(run.requests.finish_s.max() - run.requests.arrival_s.min()),
            "sim_makespan_s": float(sim_req.column("finish_s").to_pandas().max()
                                    - workload.column("arrival_s")[0].as_py()),
        })  # fmt: skip
        if out_dir is not None:
            record = {"scheduler": run.config.get("scheduler"), "scheduler_spec": spec, "policy": policy.describe(),
                      "seed": seed, "service_weights": run.config.get("service_weights"),
                      "workload": {"name": f"{run.name} (real run)", "requests": workload.num_rows},
                      "engine": {"kind": "simulator", "calibrated_from": (fit_stats or {}).get("runs"),
                                 "peak_flops": None, **config.as_dict()},
                      "steps": sim_steps.num_rows}  # fmt: skip
            write_run(Path(out_dir) / "sim" / run.name, sim_req, sim_steps, record, counters_table(policy))
    if out_dir is not None:
        atomic_write_json(report, Path(out_dir) / "calibration.json")
    return report


def markdown(report: dict) -> str:
    """The report as a Markdown table."""
    m = report["cost_model"]
    lines = [
        "Step-time model fitted to the real engine's busy steps:",
        "",
        f"`step_time = {m['base_s'] * 1e3:.3f} ms + {m['prefill_s'] * 1e6:.3f} us * prefill_tokens "
        f"+ {m['decode_s'] * 1e6:.3f} us * decode_tokens + {m['request_s'] * 1e6:.3f} us * requests "
        f"+ {m['attention_s'] * 1e9:.4f} ns * attention_pairs`",
    ]
    if report.get("fit"):
        f = report["fit"]
        lines += ["", f"Fit over {f['steps']} steps of {', '.join(Path(p).name for p in f['runs'])}: step-time error "
                      f"mean {f['mape']:.1%}, median {f['median_ape']:.1%}, p90 {f['p90_ape']:.1%}."]  # fmt: skip
    lines += ["", "| run | requests | metric | real | simulated | error |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        for k in r["real"]:
            lines.append(f"| {r['name']} | {r['requests']} | {k.replace('_', ' ')} | {r['real'][k]:.3f} s "
                         f"| {r['sim'][k]:.3f} s | {r['error'][k]:+.1%} |")  # fmt: skip
    return "\n".join(lines) + "\n"
