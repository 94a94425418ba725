"""`replay --engine vllm` on a real vLLM engine (CPU) with a tiny random-weight Llama.

One heavy tenant queues 16 requests, then a light tenant 4, all at once.  With two request
slots, FCFS makes the light tenant wait behind every heavy request; VTC and Equinox interleave
it.  The checks count admissions, not seconds: a CPU shared with other work makes step times
swing by 10x.  One engine serves the three schedulers in turn (about half a minute on 2 cores).
"""

import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]'); real-engine tests skipped")

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from traces.result_schemas import REQUEST_SCHEMA, STEP_SCHEMA  # noqa: E402
from traces.schema import make_table  # noqa: E402

HEAVY, LIGHT = 16, 4


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from serving.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from serving.replay_vllm import VllmEngineOptions, replay_vllm

    clients = ["heavy"] * HEAVY + ["light"] * LIGHT
    arrivals = [0.0] * (HEAVY + LIGHT)  # the light tenant's requests queue behind the heavy one's
    workload = make_table(clients, arrivals, [64] * (HEAVY + LIGHT), [48] * (HEAVY + LIGHT))
    options = VllmEngineOptions(
        model=str(tiny_model), max_num_seqs=2, max_num_batched_tokens=256, max_model_len=512, threads=1
    )  # one thread: robust when the machine is busy
    out = tmp_path_factory.mktemp("runs")
    dirs = replay_vllm(workload, ["fcfs", "vtc", "equinox"], out, options, workload_name="heavy-light", peak_flops=1e12)
    return {d.name: d for d in dirs}


def requests(run_dir) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "requests.parquet")


def test_every_request_runs_to_its_workload_length_in_the_simulators_schema(runs):
    for run in runs.values():
        assert pq.read_schema(run / "requests.parquet").remove_metadata() == REQUEST_SCHEMA
        assert pq.read_schema(run / "steps.parquet").remove_metadata() == STEP_SCHEMA
        req = requests(run)
        assert len(req) == HEAVY + LIGHT and (req.status == "finished").all()
        assert (req.generated_tokens == req.output_tokens).all()
        assert (req.arrival_s <= req.admitted_s).all() and (req.admitted_s < req.first_token_s).all()
        assert (req.first_token_s <= req.finish_s).all()
        steps = pd.read_parquet(run / "steps.parquet")
        busy = steps[steps.busy]
        assert busy.decode_tokens.sum() == (req.output_tokens - 1).sum()  # one decode per later token
        assert busy.prefill_tokens.sum() == req.prompt_tokens.sum()
        assert busy.running.max() <= 2


def heavy_admitted_before_light(req: pd.DataFrame) -> list[int]:
    """For each light request, how many heavy requests were admitted in an earlier step."""
    heavy = req[req.client_id == "heavy"].admitted_s.to_numpy()
    return sorted(int((heavy < t).sum()) for t in req[req.client_id == "light"].admitted_s)


def test_fcfs_makes_the_light_tenant_wait_while_vtc_and_equinox_interleave_it(runs):
    ahead = {name: heavy_admitted_before_light(requests(run)) for name, run in runs.items()}
    assert ahead["fcfs"] == [HEAVY] * LIGHT, ahead  # behind every heavy request
    # VTC: one slot of each pair goes to the light tenant, from the first step on
    assert ahead["vtc"] == [0, 1, 2, 3], ahead
    assert max(ahead["equinox"]) <= LIGHT, ahead


def test_audit_reads_real_engine_runs(runs):
    from reports.audit import audit

    result = {r["name"]: r for r in audit(list(runs.values())).runs}
    assert set(result) == {"fcfs", "vtc", "equinox"}
    for name, r in result.items():
        assert r["requests"]["finished"] == HEAVY + LIGHT
        assert r["scheduler"] == name
        assert set(r["clients"]) == {"heavy", "light"}
        assert r["utilization"]["mfu"] > 0  # FLOPs from the model's shape, peak given


def test_train_predictors_reads_real_engine_runs(runs, tmp_path):
    from predictors import load_bundle, train

    train(list(runs.values()), tmp_path / "bundle")
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.preset.startswith("vllm/")


def test_calibrate_fits_the_simulator_to_the_real_steps(runs, tmp_path):
    import math

    from serving.calibrate import CalibratedCostModel, calibrate

    report = calibrate(list(runs.values()), tmp_path, fit_on=[runs["fcfs"]])
    model = CalibratedCostModel.from_dict(report["cost_model"])
    assert model.step_time(0, 0, 2, 200, 2) > 0 and model.step_time(128, 8000, 0, 0, 2) > 0
    assert report["fit"]["steps"] > 100
    for run in report["runs"]:
        assert run["requests"] == HEAVY + LIGHT
        assert all(math.isfinite(e) for e in run["error"].values()), run
    sim = pd.read_parquet(tmp_path / "sim" / "vtc" / "requests.parquet")
    assert (sim.status == "finished").all() and len(sim) == HEAVY + LIGHT
