"""`equinox calibrate` without vLLM: a simulated run dressed as a real one must be fitted exactly.

The simulator runs a workload with a known linear step time; its logs are labelled as a vLLM run
(with a model shape, so FLOPs give back the attention work).  Calibration must recover the
coefficients and then reproduce the run's latencies.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cost_model import ModelSpec, model_flops
from engine.replay import write_run
from engine.simulator import EngineConfig, Simulator
from schedulers import make_policy
from serving.calibrate import CalibratedCostModel, calibrate, fit, load_real_run, markdown
from traces.errors import InputError
from traces.schema import make_table

SPEC = ModelSpec("tiny", n_params=1_000_000, n_layers=2, d_model=128, n_heads=2, n_kv_heads=1, d_ff=256, vocab=1024)
TRUE = dict(base_s=0.002, prefill_s=2e-5, decode_s=1e-4, request_s=5e-5, attention_s=1e-8)


class Truth(CalibratedCostModel):
    def step_flops(self, prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens):
        return model_flops(SPEC, prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens)


def fake_real_run(path, scheduler, seed):
    rng = np.random.default_rng(seed)
    n = 150
    workload = make_table([f"c{i}" for i in rng.integers(0, 3, n)], np.cumsum(rng.exponential(0.02, n)),
                          rng.integers(8, 300, n), rng.integers(4, 60, n))  # fmt: skip
    config = EngineConfig(kv_capacity_tokens=20_000, max_running=8, max_batch_tokens=256, block_size=16,
                          fast_forward=False)  # fmt: skip
    req, steps = Simulator(config, Truth(**TRUE), make_policy(scheduler)).run(workload, scheduler_name=scheduler)
    record = {"scheduler": scheduler, "scheduler_spec": scheduler, "policy": {"name": scheduler},
              "service_weights": {"w_p": 1.0, "w_q": 2.0},
              "engine": {"kind": "vllm", "kv_capacity_tokens": 20_000, "max_running": 8, "max_batch_tokens": 256,
                         "block_size": 16, "chunked_prefill": True,
                         "model_shape": {"n_params": SPEC.n_params, "linear_params": SPEC.linear_params,
                                         "n_layers": SPEC.n_layers, "d_model": SPEC.d_model}}}  # fmt: skip
    write_run(path, req, steps, record)
    return path


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return [fake_real_run(root / "fcfs", "fcfs", 1), fake_real_run(root / "vtc", "vtc", 2)]


def test_fit_recovers_a_known_step_time(real_runs):
    model, stats = fit([load_real_run(p) for p in real_runs])
    for name, value in TRUE.items():
        assert getattr(model, name) == pytest.approx(value, rel=1e-3, abs=1e-9), name
    assert stats["mape"] < 1e-6


def test_calibrated_simulation_reproduces_the_runs_latencies(real_runs, tmp_path):
    report = calibrate(real_runs, tmp_path, fit_on=[real_runs[0]])
    assert report["fit"]["runs"] == [str(real_runs[0])]
    for run in report["runs"]:
        for key, err in run["error"].items():
            assert abs(err) < 1e-6, (run["name"], key, err)
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert CalibratedCostModel.from_dict(saved["cost_model"]) == CalibratedCostModel.load(tmp_path / "calibration.json")
    assert (tmp_path / "sim" / "vtc" / "requests.parquet").exists()
    text = markdown(report)
    assert "| vtc | 150 | ttft p90 |" in text and "+0.0%" in text


def test_calibrate_refuses_a_simulated_run(tmp_path, real_runs):
    cfg = json.loads((real_runs[0] / "run.json").read_text())
    cfg["engine"]["kind"] = "simulator"
    import shutil

    shutil.copytree(real_runs[0], tmp_path / "sim")
    (tmp_path / "sim" / "run.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="needs a vLLM run"):
        calibrate([tmp_path / "sim"])


def test_calibrate_command(real_runs, tmp_path):
    import typer

    from equinox_cli import serve_cmd

    app = typer.Typer()
    app.command("calibrate")(serve_cmd.calibrate)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["calibrate", str(real_runs[0].parent), "--out", str(tmp_path / "cal")])
    assert result.exit_code == 0, result.output
    assert "ttft p50" in result.output and (tmp_path / "cal" / "calibration.json").exists()
    saved = str(tmp_path / "cal" / "calibration.json")
    result = CliRunner().invoke(app, ["calibrate", str(real_runs[0]), "--cost-model", saved])
    assert result.exit_code == 0 and "Fit over" not in result.output
    result = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "run directory" in result.output
