"""S-LoRA mode (engine/slora.py): the VTC artifact's router, admission by reservation."""

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine.presets import get_preset
from engine.replay import replay
from engine.slora import SLoRAConfig, SLoRAEngine, reservation_peak, slora_config
from equinox_cli.main import app
from schedulers import make_policy
from traces import synthesize
from traces.result_schemas import REQUEST_SCHEMA, STEP_SCHEMA
from traces.schema import make_table

ROOT = Path(__file__).resolve().parents[1]


def run(rows, config, policy="fcfs", cost=None):
    """rows: (client, arrival, prompt, output)."""
    from tests.conftest import LinearCost

    clients, arrivals, prompts, outputs = zip(*rows)
    table = make_table(list(clients), list(arrivals), list(prompts), list(outputs))
    engine = SLoRAEngine(config, cost or LinearCost(base=0.1), make_policy(policy))
    requests, steps = engine.run(table)
    return requests.to_pydict(), steps.to_pydict(), engine


def test_reservation_peak_by_hand():
    # pairs (has_run, left) sorted by left descending: (11,19) (11,19) (21,9)
    # i=1: 19*1 + 11 = 30; i=2: 19*2 + 22 = 60; i=3: 9*3 + 43 = 70 -> 70 (less than the 90 tokens
    # prompt + output would reserve: a short request finishes before the long ones peak)
    assert reservation_peak([(11, 19), (21, 9), (11, 19)]) == 70
    # + (31, 11): order (11,19) (11,19) (31,11) (21,9), cumulative 11 22 53 74:
    # 30, 60, 11*3 + 53 = 86, 9*4 + 74 = 110 -> 110
    assert reservation_peak([(11, 19), (11, 19), (21, 9), (31, 11)]) == 110
    assert reservation_peak([]) == 0


# Pool 100, one adapter of 2 tokens: a candidate fits while the peak is < 100 - 2 = 98.
HAND = SLoRAConfig(max_total_tokens=100, batch_max_tokens=1000, adapter_tokens=2, max_req_total_len=200)
HAND_ROWS = [
    ("a", 0.0, 10, 20),  # R0: candidate pair (11, 19)
    ("a", 0.0, 10, 20),  # R1: (11, 19)
    ("a", 0.0, 20, 10),  # R2: (21, 9)
    ("a", 0.0, 30, 12),  # R3: (31, 11)
    ("a", 0.0, 1, 1),  # R4: (2, 0)
]


def test_admission_matches_the_artifacts_rule_by_hand():
    # t=0, empty batch, FCFS order:
    #   R0 -> peak 30 < 98 yes; R1 -> 60 yes; R2 -> 70 yes (see test_reservation_peak_by_hand);
    #   R3 -> 110 >= 98 no: the new batch stops there, and R4 (which alone would fit) waits
    #   behind it, as generate_new_batch breaks at the first request that does not fit.
    # Step 0 (t 0-0.1) prefills R0, R1, R2 only; each gets its first token at 0.1.
    # Steps 1-10 decode (10 steps, max_wait_tokens); R2 reaches 10 tokens at step 9 (t=1.0).
    # At t=1.1 the running pairs are R0, R1 = (10 + 11, 20 - 11 - 1) = (21, 8).
    #   R3: order (31,11) (21,8) (21,8), cumulative 31 52 73: 42, 68, 8*3 + 73 = 97 < 98 yes;
    #   R4: + (2,0): 0*4 + 75 = 75, peak still 97 yes.
    # Step 11 (t 1.1-1.2) prefills R3 and R4 alone; R4's single token ends it at 1.2.
    req, steps, engine = run(HAND_ROWS, HAND)
    assert req["admitted_s"] == pytest.approx([0.0, 0.0, 0.0, 1.1, 1.1])
    assert req["first_token_s"] == pytest.approx([0.1, 0.1, 0.1, 1.2, 1.2])
    assert req["finish_s"][2] == pytest.approx(1.0)
    assert req["finish_s"][4] == pytest.approx(1.2)
    # prefill-only steps: step 0 and step 11 compute prompts and no decode token
    assert steps["prefill_tokens"][0] == 40 and steps["decode_tokens"][0] == 0
    assert steps["prefill_tokens"][11] == 31 and steps["decode_tokens"][11] == 0
    assert steps["decode_tokens"][1:10] == [3] * 9 and steps["decode_tokens"][10] == 2
    assert set(steps["prefill_tokens"][1:11]) == {0}
    assert engine.preemptions == 0 and set(req["preemptions"]) == {0}
    assert req["generated_tokens"] == [20, 20, 10, 12, 1]


def test_a_second_adapter_costs_its_tokens():
    # As above, but R3 belongs to client b: two adapters leave 100 - 2 * 2 = 96.
    # t=1.1: R0, R1 = (21, 8): R3's peak 97 >= 96, no (R4 waits behind it); a decode step.
    # t=1.2: R0, R1 = (22, 7): 42, 7*2 + 53 = 67, 7*3 + 75 = 96 >= 96, no; a decode step.
    # t=1.3: R0, R1 = (23, 6): 42, 6*2 + 54 = 66, 6*3 + 77 = 95 < 96 yes; R4: + (2, 0) -> 79, yes.
    # R0 then has 13 tokens; the prefill step (1.3-1.4) and 7 decode steps: it finishes at 2.1.
    rows = list(HAND_ROWS)
    rows[3] = ("b", 0.0, 30, 12)
    req, steps, _ = run(rows, HAND)
    assert req["admitted_s"] == pytest.approx([0.0, 0.0, 0.0, 1.3, 1.3])
    assert req["finish_s"][0] == pytest.approx(2.1)


def test_new_requests_merge_every_ten_decode_steps():
    config = SLoRAConfig(max_total_tokens=1000, batch_max_tokens=1000)
    rows = [
        ("a", 0.0, 10, 100),  # prefilled at 0-0.1, then decodes
        ("a", 0.15, 10, 5),  # arrives during decode step 2; waits for the 10th decode step (t=1.1)
        ("a", 1.65, 10, 5),  # arrives 5 decode steps after the merge at 1.1-1.2: waits until 2.2
        ("a", 3.45, 10, 5),  # 10 decode steps since the last merge are over: the next step (3.5)
    ]
    req, steps, _ = run(rows, config)
    assert req["admitted_s"] == pytest.approx([0.0, 1.1, 2.2, 3.5])
    assert req["first_token_s"] == pytest.approx([0.1, 1.2, 2.3, 3.6])


def test_an_idle_engine_polls_every_10_ms():
    config = SLoRAConfig(max_total_tokens=1000, batch_max_tokens=1000)
    req, steps, _ = run([("a", 0.0, 10, 1), ("a", 0.523, 10, 1)], config)
    # the first request ends at 0.1; the router then looks every 10 ms: 0.11, 0.12, ... 0.53
    assert req["admitted_s"][1] == pytest.approx(0.53)
    assert steps["busy"].count(False) == 1


@pytest.mark.parametrize("policy", ["fcfs", "vtc", "lcf", "equinox", "vtc-oracle", "rpm:30"])
def test_never_preempts_and_never_overflows_the_pool(policy):
    rng = np.random.default_rng(7)
    n = 300
    rows = sorted(
        zip(
            [f"c{i}" for i in rng.integers(0, 5, n)],
            np.cumsum(rng.exponential(0.05, n)).tolist(),
            rng.integers(1, 600, n).tolist(),
            rng.integers(1, 600, n).tolist(),
        ),
        key=lambda r: r[1],
    )
    config = SLoRAConfig(max_total_tokens=3000, batch_max_tokens=1500)
    req, steps, engine = run(rows, config, policy=policy)
    assert engine.preemptions == 0 and set(req["preemptions"]) == {0}
    # the reservation holds every admitted request's whole output: KV never exceeds the pool
    assert max(steps["kv_used_tokens"]) < config.max_total_tokens
    assert max(steps["prefill_tokens"]) <= config.batch_max_tokens
    served = [s == "finished" for s in req["status"]]
    assert all(s in ("finished", "rejected") for s in req["status"])
    ok = [g == o for g, o, s in zip(req["generated_tokens"], req["output_tokens"], served) if s]
    assert ok and all(ok)
    if policy != "rpm:30":
        assert all(served)  # every request fits the pool alone here
    # prefill steps never decode
    for p, d in zip(steps["prefill_tokens"], steps["decode_tokens"]):
        assert p == 0 or d == 0


def test_requests_that_cannot_run_are_rejected_with_a_reason():
    config = SLoRAConfig(max_total_tokens=1000, batch_max_tokens=1000, max_req_total_len=3072)
    rows = [("a", 0.0, 10, 10), ("a", 0.0, 600, 600), ("a", 0.0, 3000, 100)]
    # (600, 600): its reservation alone is 601 + 599 = 1200 >= 1000 - 32; (3000, 100): over 3072
    req, _, engine = run(rows, config)
    assert req["status"] == ["finished", "rejected", "rejected"]
    assert engine.reject_reasons == [None, "exceeds_kv", "too_long"]
    if "reject_reason" in req:  # the results column (shared schema, when present)
        assert req["reject_reason"] == [None, "exceeds_kv", "too_long"]


def test_same_policy_objects_and_results_schema():
    table = synthesize("overload", seed=1).slice(0, 200)
    preset = get_preset("slora-a10g-llama2-7b")
    for name in ("fcfs", "vtc", "equinox"):
        policy = make_policy(name)
        requests, steps = SLoRAEngine(slora_config(preset), preset.cost_model, policy).run(table)
        assert requests.schema == REQUEST_SCHEMA and steps.schema == STEP_SCHEMA
        assert set(requests.column("status").to_pylist()) == {"finished"}
        if name == "vtc":
            assert sum(policy.counters.values()) > 0  # the policy was charged through its verbs


def test_a_policy_token_budget_limits_new_batches():
    # A policy asking for 256 prompt tokens per step (Policy.token_budget): the 300-token prompts
    # each form a prefill step alone (never blocked), then the two 100-token ones share one.
    from schedulers.fcfs import FCFS
    from tests.conftest import LinearCost

    class Budgeted(FCFS):
        def token_budget(self, default):
            return 256

    rows = [("a", 0.0, 300, 2), ("b", 0.0, 300, 2), ("a", 0.0, 100, 2), ("b", 0.0, 100, 2)]
    table = make_table(*map(list, zip(*rows)))
    engine = SLoRAEngine(SLoRAConfig(max_total_tokens=5000), LinearCost(base=0.1), Budgeted())
    requests, steps = engine.run(table)
    assert set(requests.column("status").to_pylist()) == {"finished"}
    assert [p for p in steps.column("prefill_tokens").to_pylist() if p] == [300, 300, 200]


def test_replay_dispatches_on_the_preset_and_the_option(tmp_path):
    table = synthesize("overload", seed=1).slice(0, 100)
    (run_dir,) = replay(table, ["vtc"], tmp_path / "a", preset="slora-a10g-llama2-7b")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["engine"]["mode"] == "slora" and record["engine"]["max_total_tokens"] == 10_000
    assert pq.read_table(run_dir / "steps.parquet").num_rows > 0
    (run_dir,) = replay(table, ["fcfs"], tmp_path / "b", preset="a100-llama2-7b", engine_mode="slora")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["engine"]["mode"] == "slora"
    assert record["engine"]["max_total_tokens"] == get_preset("a100-llama2-7b").kv_capacity_tokens


def test_cli_engine_mode(tmp_path):
    runner = CliRunner()
    out = tmp_path / "runs"
    args = ["replay", "-w", "overload", "-s", "fcfs", "--out", str(out), "--engine-mode", "slora"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "fcfs" / "run.json").read_text())["engine"]["mode"] == "slora"
    audit = runner.invoke(app, ["audit", str(out), "--format", "json"])
    assert audit.exit_code == 0, audit.output
    bad = runner.invoke(
        app, ["replay", "-w", "overload", "-s", "fcfs", "--out", str(tmp_path / "x"), "--engine-mode", "sglang"]
    )
    assert bad.exit_code == 2
    assert "--engine-mode" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x").exists()


def _vtc_results() -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fidelity

    return fidelity.default_data()


VTC_RESULTS = _vtc_results()


@pytest.mark.skipif(not (VTC_RESULTS / "FCFS").is_dir(), reason="VTC artifact results not present")
def test_fidelity_on_a_measured_run():
    import fidelity

    table, ttft, result = fidelity.load_run(VTC_RESULTS / "FCFS" / "all_results_real.jsonl")
    requests, _ = fidelity.replay_one(table, "fcfs", "slora-a10g-llama2-7b", "slora")
    r = fidelity.compare(table, ttft, result, requests)
    assert abs(r["throughput"] - 1) < 0.10 and abs(r["mean_ttft"] - 1) < 0.10
    assert r["preemptions"] == 0
