"""The simulator against hand-computed schedules, and its invariants."""

import numpy as np
import pyarrow as pa
import pytest
from conftest import LinearCost

from engine.simulator import EngineConfig, Simulator
from schedulers import make_policy
from traces.schema import make_table


def run(table, policy="fcfs", cost=None, **cfg):
    config = EngineConfig(**{"kv_capacity_tokens": 100_000, **cfg})
    sim = Simulator(config, cost or LinearCost(), make_policy(policy))
    req, steps = sim.run(table)
    return req.to_pandas(), steps.to_pandas()


def one(prompt, output, **cfg):
    return run(make_table(["a"], [0.0], [prompt], [output]), **cfg)


def test_single_request_timeline():
    # step 0 prefills 32 tokens and samples token 1 at t=0.1; steps 1, 2 decode tokens 2, 3.
    req, steps = one(32, 3)
    r = req.iloc[0]
    assert (r.status, r.admitted_s, r.first_token_s, r.finish_s) == (
        "finished",
        0.0,
        pytest.approx(0.1),
        pytest.approx(0.3),
    )
    assert r.generated_tokens == 3
    assert steps.prefill_tokens.tolist() == [32, 0, 0]
    assert steps.decode_tokens.tolist() == [0, 1, 1]


def test_chunked_prefill_splits_prompt_to_budget():
    # 100 prompt tokens with a 40-token budget: chunks 40, 40, 20; the first token comes with the last chunk.
    req, steps = one(100, 2, max_batch_tokens=40)
    assert steps.prefill_tokens.tolist()[:3] == [40, 40, 20]
    assert req.first_token_s[0] == pytest.approx(0.3)
    assert req.finish_s[0] == pytest.approx(0.4)


def test_without_chunking_a_prompt_over_the_budget_is_rejected():
    req, _ = one(100, 2, max_batch_tokens=40, chunked_prefill=False)
    assert req.status[0] == "rejected"


def test_kv_blocks_round_up_and_are_freed():
    # 17 prompt tokens need 2 blocks of 16; after the request finishes everything is free.
    _, steps = one(17, 1)
    assert steps.kv_used_tokens.tolist() == [0]
    _, steps = one(17, 2)
    assert steps.kv_used_tokens.tolist() == [32, 0]


def test_preemption_by_recompute_when_kv_runs_out():
    # Capacity 64 tokens = 4 blocks. Two requests of 16-token prompts, 40 outputs each, cannot both
    # hold 56 tokens: the later-admitted one is preempted, recomputed, and both still finish.
    table = make_table(["a", "b"], [0.0, 0.0], [16, 16], [40, 40])
    req, steps = run(table, kv_capacity_tokens=64)
    assert (req.status == "finished").all()
    assert req.preemptions.sum() >= 1
    assert req.preemptions[1] >= 1 and req.preemptions[0] == 0
    assert (steps.kv_used_tokens <= 64).all()
    assert (req.generated_tokens == 40).all()


def test_request_cap_limits_the_batch():
    table = make_table(["a"] * 5, [0.0] * 5, [8] * 5, [4] * 5)
    _, steps = run(table, max_running=2)
    assert steps.running.max() == 2


def test_step_rows_tile_the_time_line_with_idle_gaps():
    table = make_table(["a", "a"], [0.0, 10.0], [8, 8], [2, 2])
    _, steps = run(table)
    assert steps.busy.tolist() == [True, True, False, True, True]
    end = steps.start_s + steps.duration_s
    assert np.allclose(end[:-1].to_numpy(), steps.start_s[1:].to_numpy())
    assert steps.start_s.iloc[3] == 10.0


def _random_workload(n=400, clients=5, seed=0, weight_choices=(1.0, 2.0)):
    rng = np.random.default_rng(seed)
    return make_table(
        [f"c{i}" for i in rng.integers(0, clients, n)],
        np.cumsum(rng.exponential(0.05, n)),
        rng.integers(1, 600, n),
        rng.integers(1, 300, n),
        weight=rng.choice(weight_choices, n),
    )


@pytest.mark.parametrize("policy", ["fcfs", "vtc", "lcf", "vtc-predict", "vtc-oracle:0.3", "rpm:20"])
@pytest.mark.parametrize("kv", [4096, 200_000])
def test_fast_forward_equals_step_by_step(policy, kv):
    table = _random_workload()
    cost = LinearCost(base=0.01, per_token=1e-5)
    fast = run(table, policy, cost, kv_capacity_tokens=kv, max_running=64, max_batch_tokens=512)
    slow = run(table, policy, cost, kv_capacity_tokens=kv, max_running=64, max_batch_tokens=512, fast_forward=False)
    for a, b in zip(fast, slow):
        if "engine_seconds" in a:  # sums of the same shares, in another order: equal to rounding
            np.testing.assert_allclose(a.pop("engine_seconds"), b.pop("engine_seconds"), rtol=1e-9)
        pa_a, pa_b = pa.Table.from_pandas(a), pa.Table.from_pandas(b)
        assert pa_a.equals(pa_b)
    if kv == 4096:
        assert fast[0].preemptions.sum() > 0  # the small cache exercises preemption


def test_fast_forward_equals_step_by_step_for_equinox_with_one_counter(monkeypatch):
    """Equinox with beta = 0 and a fixed budget charges nothing per step: the fast path applies,
    moves whole stretches, and changes nothing."""
    from schedulers import Equinox, EquinoxKnobs

    knobs = EquinoxKnobs(alpha=1.0, beta=0.0, gamma=0.0, kappa=float("inf"), adaptive_budget=False, memory_aware=False)
    assert Equinox(knobs).exact_under_fast_forward
    stretches = []
    original = Simulator._stretch

    def counted(self, now, next_arrival):
        end = original(self, now, next_arrival)
        stretches.append(end is not None)
        return end

    monkeypatch.setattr(Simulator, "_stretch", counted)
    table = _random_workload()
    cost = LinearCost(base=0.01, per_token=1e-5)
    for kv in (4096, 200_000):
        runs = []
        for fast in (True, False):
            config = EngineConfig(kv_capacity_tokens=kv, max_running=64, max_batch_tokens=512, fast_forward=fast)
            runs.append(Simulator(config, cost, Equinox(knobs)).run(table))
        (fast_req, fast_steps), (slow_req, slow_steps) = runs
        np.testing.assert_allclose(fast_req["engine_seconds"], slow_req["engine_seconds"], rtol=1e-9)
        assert fast_req.drop(["engine_seconds"]).equals(slow_req.drop(["engine_seconds"]))
        assert fast_steps.equals(slow_steps)
    assert sum(stretches) > 10


ENGINES = {
    "chunked": dict(max_batch_tokens=512),
    "first-chunk-admission": dict(max_batch_tokens=512, reserve_full_prompt=False),
    "stall-free": dict(max_batch_tokens=512, stall_free=True),
    "unchunked": dict(max_batch_tokens=1024, chunked_prefill=False),
    "merge-every-4": dict(max_batch_tokens=512, admit_every=4),
}


@pytest.mark.parametrize("policy", ["fcfs", "vtc", "lcf", "vtc-predict", "vtc-oracle:0.3", "rpm:20", "equinox"])
@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("kv", [4096, 200_000])
def test_vectorised_engine_equals_a_plain_per_request_loop(policy, engine, kv):
    """The simulator keeps its batch in arrays and charges policies per step in one call;
    tests/reference_engine.py does the same one request object at a time. Same numbers."""

    table = _random_workload(weight_choices=(1.0, 1.6, 2.0))
    _assert_equals_reference(table, policy, kv_capacity_tokens=kv, max_running=64, **ENGINES[engine])


@pytest.mark.parametrize("policy", ["fcfs", "equinox"])
def test_vectorised_engine_equals_the_plain_loop_when_many_finish_at_once(policy):
    """Outputs of 1-3 tokens and prompts over the budget: requests finish in the step their
    (chunked) prefill completes, several per step, beside decodes that finish too."""
    rng = np.random.default_rng(5)
    n = 300
    table = make_table([f"c{i}" for i in rng.integers(0, 4, n)], np.cumsum(rng.exponential(0.01, n)),
                       rng.integers(1, 600, n), rng.integers(1, 4, n))  # fmt: skip
    _assert_equals_reference(table, policy, kv_capacity_tokens=200_000, max_running=64, max_batch_tokens=256,
                             stall_free=True)  # fmt: skip


def test_counted_decode_steps_equal_the_plain_loop(monkeypatch):
    """A loaded engine mostly only decodes: those steps are counted (``_decode_step``), not
    written into every request's columns, and preempt from the counted values when blocks run
    out (``_preempt_for_blocks``); prefills and budget cuts take the general path, which writes
    the counted steps back first. All three happen here."""
    calls = {"_decode_step": 0, "_general_step": 0, "_preempt_for_blocks": 0}
    for name in calls:
        original = getattr(Simulator, name)

        def counted(self, *args, _original=original, _name=name):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(Simulator, name, counted)
    table = _random_workload(weight_choices=(1.0, 1.6, 2.0))
    for policy in ("vtc", "equinox"):
        _assert_equals_reference(table, policy, cost=KVCost(), kv_capacity_tokens=4096, max_running=64,
                                 max_batch_tokens=512, reserve_full_prompt=False)  # fmt: skip
    assert calls["_decode_step"] > 200 and calls["_general_step"] > 200 and calls["_preempt_for_blocks"] > 5


class KVCost(LinearCost):
    """Steps that also cost per KV token read and per prefill query-key pair (in whole units:
    any order of summing gives the same float)."""

    def __init__(self):
        super().__init__(base=0.01, per_token=1e-5)

    def step_time(self, prefill_tokens, prefill_pairs, decode_tokens, decode_kv_tokens, num_requests):
        base = super().step_time(prefill_tokens, prefill_pairs, decode_tokens, 0, num_requests)
        return base + 1e-7 * decode_kv_tokens + 1e-8 * prefill_pairs

    def step_flops(self, prefill_tokens, prefill_pairs, decode_tokens, decode_kv_tokens):
        return 2.0 * (prefill_tokens + decode_tokens) + 4.0 * prefill_pairs + decode_kv_tokens


def _assert_equals_reference(table, policy, cost=None, **engine):
    import reference_engine

    cost = cost or LinearCost(base=0.01, per_token=1e-5)
    config = EngineConfig(fast_forward=False, **engine)
    requests, steps = Simulator(config, cost, make_policy(policy)).run(table)
    expected_requests, expected_steps = reference_engine.replay(table, config, cost, make_policy(policy))
    got = list(zip(*(requests.column(c).to_pylist() for c in reference_engine.REQUEST_COLUMNS)))
    assert got == expected_requests
    got = list(zip(*(steps.column(c).to_pylist() for c in reference_engine.STEP_COLUMNS)))
    assert got == expected_steps
    # Equinox's memory-aware admission exists to avoid preempting, so only the others must preempt here.
    if config.kv_capacity_tokens == 4096 and config.chunked_prefill and policy != "equinox":
        preemptions = reference_engine.REQUEST_COLUMNS.index("preemptions")
        assert sum(r[preemptions] for r in expected_requests) > 0  # the small cache exercises preemption


def test_every_request_gets_all_its_tokens():
    req, steps = run(_random_workload(), "vtc", max_running=64, max_batch_tokens=512)
    assert (req.status == "finished").all() and req.preemptions.sum() == 0
    assert (req.generated_tokens == req.output_tokens).all()
    assert (req.first_token_s > req.arrival_s).all()
    assert (req.finish_s >= req.first_token_s).all()
    # Without preemption each request's first token comes from its prefill, the rest from decodes.
    assert steps.decode_tokens.sum() == (req.output_tokens - 1).sum()
    assert steps.prefill_tokens.sum() == req.prompt_tokens.sum()


def test_steps_streamed_to_disk_in_fixed_batches_equal_the_in_memory_table(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from engine import simulator

    monkeypatch.setattr(simulator._StepLog, "FLUSH_ROWS", 500)
    table = _random_workload()
    cost = LinearCost(base=0.01, per_token=1e-5)
    files = []
    for fast in (True, False):
        config = EngineConfig(kv_capacity_tokens=4096, max_running=64, max_batch_tokens=512, fast_forward=fast)
        in_memory = Simulator(config, cost, make_policy("vtc")).run(table)[1]
        path = tmp_path / f"steps-{fast}.parquet"
        assert Simulator(config, cost, make_policy("vtc"), steps_path=path).run(table)[1] is None
        streamed = pq.read_table(path)
        assert streamed.equals(in_memory) and in_memory.num_rows > 2 * 500
        assert pq.ParquetFile(path).metadata.row_group(0).num_rows == 500
        files.append(path.read_bytes())
    assert files[0] == files[1]  # the fast path cuts its batches at the same rows


@pytest.mark.parametrize("policy", ["fcfs", "vtc", "equinox"])
@pytest.mark.parametrize("kv", [4096, 200_000])
def test_stall_free_order_is_what_chunked_prefill_already_does(policy, kv):
    """With chunked prefill a partial prefill takes all the budget left, so no request admitted
    after it runs (or exists) until its prompt is done: the running batch in admission order is
    already decodes first, and stall-free order schedules the same tokens (docs/ENGINE.md)."""
    table = _random_workload(weight_choices=(1.0, 1.6, 2.0))
    cost = LinearCost(base=0.01, per_token=1e-5)
    runs = [run(table, policy, cost, kv_capacity_tokens=kv, max_running=64, max_batch_tokens=256, stall_free=s,
                reserve_full_prompt=r) for s in (False, True) for r in (True, False)]  # fmt: skip
    for default, stall_free in ((runs[0], runs[2]), (runs[1], runs[3])):
        assert pa.Table.from_pandas(default[1]).equals(pa.Table.from_pandas(stall_free[1]))
        assert pa.Table.from_pandas(default[0]).equals(pa.Table.from_pandas(stall_free[0]))
