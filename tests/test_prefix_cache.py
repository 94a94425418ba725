"""Prefix caching and context limits in the simulator (issue 14)."""

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
    return req.to_pandas(), steps.to_pandas(), sim


def shared(prefix_blocks: int, own: list, group: int = 7) -> list:
    """Mooncake-style hash ids: ``prefix_blocks`` shared ids of ``group``, then the request's own."""
    return [group * 1000 + i for i in range(prefix_blocks)] + own


# -- two requests sharing a 1,024-token prefix ---------------------------------------------------
def test_second_request_computes_only_its_new_tokens_while_the_first_blocks_stay_cached():
    # Both prompts: 1,024 shared tokens (two 512-token hashes) + 200 own.  The first finishes at
    # t = 0.3 (prefill, 2 decodes); the second arrives at 10 s, long after, and hits 64 blocks.
    table = make_table(["a", "b"], [0.0, 10.0], [1224, 1224], [3, 3],
                       prefix_hashes=[shared(2, [1]), shared(2, [2])])  # fmt: skip
    req, steps, _ = run(table)
    assert req.cached_prompt_tokens.tolist() == [0, 1024]
    busy = steps[steps.busy]
    assert busy.prefill_tokens.tolist() == [1224, 0, 0, 200, 0, 0]  # the second computes 200, not 1,224
    assert busy.cached_tokens.tolist() == [0, 0, 0, 1024, 0, 0]
    assert req.prefix_hashes[1].tolist() == shared(2, [2])  # kept as the workload gave them


def test_without_prefix_caching_the_second_request_computes_everything():
    table = make_table(["a", "b"], [0.0, 10.0], [1224, 1224], [3, 3],
                       prefix_hashes=[shared(2, [1]), shared(2, [2])])  # fmt: skip
    req, steps, _ = run(table, prefix_caching=False)
    assert req.cached_prompt_tokens.tolist() == [0, 0]
    assert steps[steps.busy].prefill_tokens.tolist() == [1224, 0, 0, 1224, 0, 0]


def test_cached_blocks_are_gone_once_evicted():
    # A KV cache of 80 blocks (1,280 tokens).  The first request frees 77 blocks: its 1 uncached
    # tail block, then its 76 cached prompt blocks last to first.  An unrelated request then takes
    # blocks from the front of the free queue: the 3 never used, the tail block, then cached ones
    # from the prompt's end.  With 75 blocks it leaves the first 5 (80 tokens) for the third
    # request, which shares the first one's 1,024-token prefix; with 80 it leaves none.
    for filler, hit in ((1199, 80), (1270, 0)):
        table = make_table(["a", "c", "b"], [0.0, 10.0, 20.0], [1224, filler, 1224], [3, 2, 3],
                           prefix_hashes=[shared(2, [1]), [99, 98, 97], shared(2, [2])])  # fmt: skip
        req, steps, _ = run(table, kv_capacity_tokens=80 * 16)
        assert req.cached_prompt_tokens.tolist() == [0, 0, hit]
        assert steps[steps.busy].prefill_tokens.tolist() == [1224, 0, 0, filler, 0, 1224 - hit, 0, 0]


def test_lru_eviction_takes_the_least_recently_freed_blocks_first():
    # 64 blocks.  P and Q (512-token prompts, 32 blocks each, one output token) run one after the
    # other and free their blocks cached, P's first: the free queue is P31..P0, Q31..Q0.  A filler
    # of 8 blocks evicts P31..P24, the least recently freed.  Q comes back and hits 31 blocks (the
    # last prompt token is always computed), taking one new block: P23.  P then hits 23.
    table = make_table(["p", "q", "f", "q", "p"], [0.0, 1.0, 2.0, 3.0, 4.0], [512, 512, 128, 512, 512], [1] * 5,
                       prefix_hashes=[[1], [2], None, [2], [1]])  # fmt: skip
    req, steps, _ = run(table, kv_capacity_tokens=64 * 16)
    assert req.cached_prompt_tokens.tolist() == [0, 0, 0, 31 * 16, 23 * 16]
    assert steps[steps.busy].prefill_tokens.tolist() == [512, 512, 128, 16, 512 - 23 * 16]


def test_a_hit_cannot_take_the_whole_prompt():
    # Identical prompts of exactly 64 tokens (4 blocks): the second reuses 3 and computes the last 16.
    table = make_table(["a", "b"], [0.0, 5.0], [64, 64], [2, 2], prefix_hashes=[[5], [5]])
    req, steps, _ = run(table, prefix_caching=True, prefix_hash_tokens=64)
    assert req.cached_prompt_tokens.tolist() == [0, 48]
    assert steps[steps.busy].prefill_tokens.tolist() == [64, 0, 16, 0]


def test_turns_of_a_conversation_share_their_history():
    # Without hashes, the turns of one conversation are one token stream: turn 2's prompt (history
    # 300 tokens) starts with turn 1's 100 (6 full blocks), another conversation's shares nothing.
    table = make_table(["a", "a", "b"], [0.0, 5.0, 10.0], [100, 300, 300], [2, 2, 2],
                       conversation_id=["x", "x", "y"])  # fmt: skip
    req, _, _ = run(table)
    assert req.cached_prompt_tokens.tolist() == [0, 96, 0]


def test_policies_see_the_cache_through_prefix_lookup():
    table = make_table(["a", "b"], [0.0, 10.0], [1224, 1224], [3, 3],
                       prefix_hashes=[shared(2, [1]), shared(2, [2])])  # fmt: skip
    policy = make_policy("fcfs")
    seen = []
    original = policy.on_arrival

    def arrival(req, now):
        seen.append(policy.prefix_lookup(req))
        return original(req, now)

    policy.on_arrival = arrival
    Simulator(EngineConfig(kv_capacity_tokens=100_000), LinearCost(), policy).run(table)
    assert seen == [0, 1024]


def test_a_workload_without_prefix_information_builds_no_cache():
    table = make_table(["a"] * 3, [0.0, 1.0, 2.0], [100, 100, 100], [2, 2, 2])
    req, _, sim = run(table)
    assert sim._cache is None and req.cached_prompt_tokens.tolist() == [0, 0, 0]
    assert sim.policy.prefix_lookup(sim.reqs[0]) == 0


# -- the block-by-block reference and the fast paths ---------------------------------------------
def _prefix_workload(n=400, seed=0):
    """Requests from 5 clients over 8 shared system prompts (1-6 hashes of 64 tokens) + own blocks."""
    rng = np.random.default_rng(seed)
    hashes, prompts = [], []
    for i in range(n):
        group = int(rng.integers(0, 8))
        k = 1 + group % 6
        own = int(rng.integers(0, 4))
        hashes.append([group * 100 + j for j in range(k)] + [10_000 + i * 10 + j for j in range(own)])
        prompts.append(int(64 * (k + own) - rng.integers(0, 64)))
    return make_table(
        [f"c{i}" for i in rng.integers(0, 5, n)],
        np.cumsum(rng.exponential(0.05, n)),
        prompts,
        rng.integers(1, 300, n),
        weight=rng.choice((1.0, 1.6, 2.0), n),
        prefix_hashes=hashes,
    )


@pytest.mark.parametrize("policy", ["fcfs", "vtc", "equinox"])
@pytest.mark.parametrize("kv", [4096, 200_000])
@pytest.mark.parametrize("stall_free", [False, True])
@pytest.mark.parametrize("reserve", [True, False])
def test_prefix_cache_equals_the_block_by_block_reference(policy, kv, stall_free, reserve):
    from test_simulator import _assert_equals_reference

    table = _prefix_workload()
    _assert_equals_reference(table, policy, reserve_full_prompt=reserve, kv_capacity_tokens=kv, max_running=64,
                             max_batch_tokens=512, prefix_hash_tokens=64, stall_free=stall_free)  # fmt: skip
    req, _, _ = run(table, policy, kv_capacity_tokens=kv, max_running=64, max_batch_tokens=512,
                    prefix_hash_tokens=64)  # fmt: skip
    assert req.cached_prompt_tokens.sum() > 0.2 * req.prompt_tokens.sum()


@pytest.mark.parametrize("kv", [4096, 200_000])
def test_fast_forward_equals_step_by_step_with_prefix_caching(kv):
    table = _prefix_workload(seed=3)
    cost = LinearCost(base=0.01, per_token=1e-5)
    options = dict(kv_capacity_tokens=kv, max_running=64, max_batch_tokens=512, prefix_hash_tokens=64)
    fast = run(table, "vtc", cost, **options)
    slow = run(table, "vtc", cost, fast_forward=False, **options)
    for a, b in zip(fast[:2], slow[:2]):
        if "engine_seconds" in a:  # sums of the same shares, in another order: equal to rounding
            np.testing.assert_allclose(a.pop("engine_seconds"), b.pop("engine_seconds"), rtol=1e-9)
        assert pa.Table.from_pandas(a).equals(pa.Table.from_pandas(b))


# -- context limits --------------------------------------------------------------------------------
def test_a_request_over_the_context_limit_is_rejected_and_never_computed():
    table = make_table(["a", "b", "c"], [0.0, 0.0, 0.0], [4000, 100, 3000], [97, 50, 500])
    req, steps, _ = run(table, max_model_len=4096, kv_capacity_tokens=3200)
    assert req.status.tolist() == ["rejected", "finished", "rejected"]
    assert req.reject_reason.fillna("-").tolist() == ["too_long", "-", "exceeds_kv"]  # 4,097 > 4,096; 3,500 > 3,200
    assert steps.prefill_tokens.sum() == 100 and req.admitted_s.isna().tolist() == [True, False, True]
    assert req.cached_prompt_tokens.isna().tolist() == [True, False, True]


def test_rate_limited_requests_say_so():
    table = make_table(["a"] * 4, [0.0, 0.1, 0.2, 0.3], [10] * 4, [2] * 4)
    req, _, _ = run(table, "rpm:2")
    assert req.reject_reason.fillna("-").tolist() == ["-", "-", "rate_limit", "rate_limit"]


def test_presets_carry_their_context_limit():
    from engine.presets import PRESETS

    assert PRESETS["a100-llama2-7b"].max_model_len == 4096
    p = PRESETS["h100-llama3.1-8b"]
    assert p.max_model_len == 131_072
    # GQA: 8 KV heads of 128 dims, 32 layers, K and V in fp16: a quarter of Llama-2-7B's bytes.
    assert p.model.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == PRESETS["h100-llama2-7b"].model.kv_bytes_per_token // 4
    assert p.kv_capacity_tokens > 3.5 * PRESETS["h100-llama2-7b"].kv_capacity_tokens


# -- the replay command ------------------------------------------------------------------------------
def _cli(*args):
    from typer.testing import CliRunner

    from equinox_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _write(tmp_path, table, name="w.parquet"):
    import pyarrow.parquet as pq

    path = tmp_path / name
    pq.write_table(table, path)
    return path


def test_replay_prints_the_rejections_per_reason(tmp_path):
    # 40 requests, clients a and b alternating every 0.5 s, on the VTC preset (4,096-token context,
    # 10,000-token KV): the last 3 are over the context (4,200, 5,010, 10,500 tokens).  rpm:10 then
    # accepts 10 of each client's other requests (19 of a's, 18 of b's) and refuses 9 + 8.  With
    # --max-model-len 20000 only the last is rejected: 10,500 tokens do not fit the KV cache.
    prompts = [100] * 37 + [4000, 5000, 9000]
    outputs = [50] * 37 + [200, 10, 1500]
    table = make_table(["a", "b"] * 20, [0.5 * i for i in range(40)], prompts, outputs)
    path = _write(tmp_path, table)
    result = _cli("replay", "-w", path, "-s", "fcfs,rpm:10", "-o", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: fcfs: rejected 3 of 40 requests (7.5%): 3 too_long" in text
    assert (
        "warning: rpm-10: rejected 20 of 40 requests (50.0%): 17 rate_limit (refused by the policy), 3 too_long" in text
    )
    result = _cli("replay", "-w", path, "-s", "fcfs", "-o", tmp_path / "runs2", "--max-model-len", 20000)
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "rejected 1 of 40 requests (2.5%): 1 exceeds_kv" in text
    import pyarrow.parquet as pq

    req = pq.read_table(tmp_path / "runs2" / "fcfs" / "requests.parquet")
    assert req.column("reject_reason").to_pylist()[-1] == "exceeds_kv"
    assert req.column("reject_reason").null_count == 39


def test_replay_is_quiet_about_rejections_when_there_are_none(tmp_path):
    table = make_table(["a"] * 30, [0.5 * i for i in range(30)], [100] * 30, [20] * 30)
    result = _cli("replay", "-w", _write(tmp_path, table), "-s", "fcfs", "-o", tmp_path / "runs")
    assert result.exit_code == 0 and "rejected" not in result.output and "offered load" not in result.output


@pytest.mark.parametrize(
    "bad, message",
    [
        (("--max-model-len", 0), "--max-model-len: must be at least 1 token, got 0"),
        (("--max-model-len", -5), "--max-model-len: must be at least 1 token, got -5"),
    ],
)
def test_a_context_limit_below_one_is_one_line_and_writes_nothing(tmp_path, bad, message):
    table = make_table(["a"] * 3, [0.0, 1.0, 2.0], [10] * 3, [5] * 3)
    result = _cli("replay", "-w", _write(tmp_path, table), "-o", tmp_path / "runs", *bad)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {message}"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("values", [pa.array(["x", "y", "z"]), pa.array([1.5, 2.5, 3.5])])
def test_prefix_hashes_of_the_wrong_type_is_one_line_naming_the_column(tmp_path, values):
    table = make_table(["a"] * 3, [0.0, 1.0, 2.0], [10] * 3, [5] * 3)
    table = table.drop_columns(["prefix_hashes"]).append_column("prefix_hashes", values)
    result = _cli("replay", "-w", _write(tmp_path, table), "-o", tmp_path / "runs")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "row 1: prefix_hashes must be a list of integers" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_negative_lengths_are_one_line(tmp_path):
    import pyarrow.csv as pcsv

    table = pa.table({"arrival_s": [0.0, 1.0], "prompt_tokens": [10, -3], "output_tokens": [5, 5],
                      "client_id": ["a", "b"], "request_id": [0, 1]})  # fmt: skip
    path = tmp_path / "w.csv"
    pcsv.write_csv(table, path)
    result = _cli("replay", "-w", path, "-o", tmp_path / "runs")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "prompt_tokens" in result.output and not (tmp_path / "runs").exists()


def test_presets_show_the_context_limit_and_kv_capacity():
    result = _cli("presets")
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if "h100-llama3.1-8b" in line)
    assert "131,072" in row and "467,291" in row


# -- overload ------------------------------------------------------------------------------------------
def test_overload_is_reported_with_the_ratio():
    from engine.replay import run_summary, summary_lines

    # One request at a time, each 1 s of steps (a prefill step and 9 decode steps of 0.1 s).
    # 100 arriving over 9.9 s take 100 s: 10.1x the span; at 9.9 s requests 0-9 have started (at 0,
    # 1, ..., 9 s) and the other 90 wait.
    config = EngineConfig(kv_capacity_tokens=100_000, max_running=1)
    heavy = make_table(["a", "b"] * 50, [0.1 * i for i in range(100)], [8] * 100, [10] * 100)
    req, _ = Simulator(config, LinearCost(), make_policy("fcfs")).run(heavy)
    over = run_summary(req, config)["overload"]
    assert over["overloaded"] and over["ratio"] == pytest.approx(100.0 / 9.9)
    assert over["waiting_at_last_arrival"] == 90
    (warning, text), *_ = [line for line in summary_lines("fcfs", run_summary(req, config)) if "offered" in line[1]]
    assert warning and "10.1x the arrivals' span" in text and "--time-scale 10.1" in text
    # The same requests 2 s apart: the engine keeps up.
    light = make_table(["a", "b"] * 50, [2.0 * i for i in range(100)], [8] * 100, [10] * 100)
    req, _ = Simulator(config, LinearCost(), make_policy("fcfs")).run(light)
    summary = run_summary(req, config)
    assert not summary["overload"]["overloaded"] and not summary_lines("fcfs", summary)
