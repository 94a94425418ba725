"""The workload of benchmarks/fidelity_vllm.py keys the simulator's prefix cache as vLLM keys its own.

vLLM caches full blocks of a prompt by a hash chain over their token ids; the benchmark gives the
simulator one ``prefix_hashes`` entry per engine block (the hash of that block's tokens, chained by
the simulator).  With every earlier turn finished before the next arrives, each request's cached
prompt tokens are hand-computable: a conversation's first turn hits the full blocks of its system
prompt once another conversation has used that prompt; turn k hits the full blocks of turn k-1's
prompt.  The benchmark's real vLLM run measured 15,616 cached tokens for its default workload: the
same sum as below.
"""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

from engine.simulator import EngineConfig, Simulator
from schedulers import make_policy
from serving.calibrate import CalibratedCostModel

BS = 32


def bench():
    path = Path(__file__).parents[1] / "benchmarks" / "fidelity_vllm.py"
    spec = importlib.util.spec_from_file_location("fidelity_vllm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args(**kw):
    base = dict(conversations=8, turns=4, system_prompts=2, system_tokens=384, user_tokens=64, reply_tokens=48,
                output_tokens=16, conversation_gap=0.5, turn_gap=2.5, seed=0)  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def simulate(workload, prefix_caching=True):
    model = CalibratedCostModel(base_s=0.005, prefill_s=4e-5, decode_s=0.0, request_s=3e-4, attention_s=0.0)
    config = EngineConfig(kv_capacity_tokens=1 << 16, max_running=8, max_batch_tokens=512, block_size=BS,
                          prefix_caching=prefix_caching, prefix_hash_tokens=BS)  # fmt: skip
    requests, _ = Simulator(config, model, make_policy("fcfs")).run(workload)
    return requests.to_pandas()


def expected_cached(a) -> dict:
    """(conversation, turn) -> cached prompt tokens, by hand."""
    out = {}
    for c in range(a.conversations):
        for k in range(a.turns):
            if k == 0:
                out[c, k] = (a.system_tokens // BS) * BS if c >= a.system_prompts else 0
            else:
                previous = a.system_tokens + a.user_tokens + (k - 1) * (a.user_tokens + a.reply_tokens)
                out[c, k] = (previous // BS) * BS
    return out


def test_each_turn_hits_the_full_blocks_of_what_came_before_it():
    a = args()
    workload, tokens = bench().make_workload(a, vocab=1024, block_size=BS)
    assert [len(h) for h in workload.column("prefix_hashes").to_pylist()] == [len(t) // BS for t in tokens]
    sim = simulate(workload)
    assert (sim.status == "finished").all()
    # rows are in arrival order: conversation c's turn k arrives at c * 0.5 + k * 2.5 s
    arrivals = workload.column("arrival_s").to_pylist()
    want = expected_cached(a)
    order = sorted(want, key=lambda ck: ck[0] * a.conversation_gap + ck[1] * a.turn_gap)
    assert sorted(arrivals) == arrivals
    got = dict(zip(order, sim.cached_prompt_tokens.tolist()))
    assert got == want
    assert sum(want.values()) == 15616  # what vLLM's num_cached_tokens summed to on the same workload


def test_without_prefix_caching_nothing_is_cached_and_distinct_text_shares_nothing():
    a = args(conversations=4, turns=2)
    workload, _ = bench().make_workload(a, vocab=1024, block_size=BS)
    assert simulate(workload, prefix_caching=False).cached_prompt_tokens.fillna(0).sum() == 0
    # one system prompt per conversation: first turns share nothing
    workload, _ = bench().make_workload(args(conversations=4, turns=1, system_prompts=4), vocab=1024, block_size=BS)
    assert simulate(workload).cached_prompt_tokens.fillna(0).sum() == 0
