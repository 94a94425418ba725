"""Equinox's fairness claims on runs: engine-seconds, the latency knob, the guard's bound, memory-aware admission."""

import numpy as np
import pytest
from conftest import LinearCost
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.replay import engine_config
from engine.simulator import EngineConfig, Simulator
from schedulers import Equinox, EquinoxKnobs, make_policy
from schedulers.equinox_bound import equinox_bound, pair_difference
from traces import load_workload
from traces.schema import make_table


def jain(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.sum() ** 2 / (len(x) * (x**2).sum()))


def simulate(table, spec="vtc", knobs=EquinoxKnobs(), preset="a100-llama2-7b", **overrides):
    config, engine = engine_config(preset, **overrides)
    policy = make_policy(spec, equinox=knobs)
    requests, steps = Simulator(config, engine.cost_model, policy).run(table)
    return requests.to_pandas(), steps.to_pandas(), policy


def test_engine_seconds_split_every_step_among_its_requests():
    table = load_workload("lmsys").slice(0, 300)
    for preset in ("a100-llama2-7b", "vtc-a10g-llama2-7b"):
        requests, steps, _ = simulate(table, preset=preset)
        assert requests.engine_seconds.sum() == pytest.approx(steps[steps.busy].duration_s.sum(), rel=1e-9)
        assert (requests.engine_seconds > 0).all()
    # Alone on the engine, a request gets every step's time.
    alone = make_table(["a", "b"], [0.0, 100.0], [500, 40], [30, 3])
    requests, steps, _ = simulate(alone)
    first = steps[(steps.start_s < 100.0) & steps.busy]
    assert requests.engine_seconds[0] == pytest.approx(first.duration_s.sum(), rel=1e-12)


def long_and_short(n_long=60, seconds=60.0, long_prompt=32768, short_prompt=4096, output=256):
    """Two clients with equal token rates; one's prompts are 8x the other's (32k vs 4k tokens: long
    enough that attention and KV reads, not the weight read, set what a token costs)."""
    rng = np.random.default_rng(0)
    rate_long = n_long / seconds
    rate_short = rate_long * (long_prompt + output) / (short_prompt + output)
    rows = []
    for client, rate, prompt in (("long", rate_long, long_prompt), ("short", rate_short, short_prompt)):
        times = np.cumsum(rng.exponential(1 / rate, int(rate * seconds)))
        rows += [(client, t, prompt, output) for t in times]
    rows.sort(key=lambda r: r[1])
    clients, times, prompts, outputs = zip(*rows)
    return make_table(list(clients), list(times), list(prompts), list(outputs))


def test_equinox_gives_the_long_context_client_fewer_engine_seconds_than_vtc():
    table = long_and_short()
    seconds = {}
    for spec in ("vtc", "equinox"):
        requests, _, _ = simulate(table, spec, preset="h100-llama3.1-8b")
        both = requests.groupby("client_id").admitted_s.max().min()  # both backlogged until about here
        served = requests[requests.finish_s <= 0.8 * both]
        seconds[spec] = served.groupby("client_id").engine_seconds.sum()
    # VTC's equal tokens give the long-context client twice the short one's engine time (measured:
    # 139 vs 67 s, Jain 0.89); Equinox's RFC equalises engine-seconds.
    assert seconds["equinox"]["long"] < 0.8 * seconds["vtc"]["long"]
    assert jain(seconds["equinox"]) >= 0.95
    assert jain(seconds["vtc"]) <= jain(seconds["equinox"]) - 0.05


def test_gamma_moves_per_client_ttft_equality_on_the_lmsys_trace():
    table = load_workload("lmsys")
    ttft_jain = {}
    # HF on UFC alone (beta 0), every other knob at its default: with beta 0.5 the RFC term pulls the
    # order back and gamma moves TTFT Jain by about 5% (docs/EQUINOX.md, the frontier)
    for gamma in (0.0, 2.0):
        knobs = EquinoxKnobs(beta=0.0, gamma=gamma)
        requests, _, _ = simulate(table, "equinox", knobs, preset="vtc-a10g-llama2-7b")
        ttft = (requests.first_token_s - requests.arrival_s).groupby(requests.client_id).mean()
        ttft_jain[gamma] = jain(ttft)
    assert ttft_jain[2.0] >= 1.10 * ttft_jain[0.0]


@settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    clients=st.integers(2, 5),
    n=st.integers(8, 30),
    rate=st.floats(5.0, 200.0),
    max_prompt=st.integers(8, 400),
    max_output=st.integers(1, 120),
    weights=st.lists(st.sampled_from([1.0, 2.0, 0.5]), min_size=5, max_size=5),
    kappa=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    seed=st.integers(0, 10**6),
)
def test_the_guard_bound_holds_on_random_workloads(clients, n, rate, max_prompt, max_output, weights, kappa, seed):
    rng = np.random.default_rng(seed)
    who = rng.integers(0, clients, n)
    table = make_table(
        [f"c{i}" for i in who],
        np.cumsum(rng.exponential(1 / rate, n)),
        rng.integers(1, max_prompt + 1, n),
        rng.integers(1, max_output + 1, n),
        weight=[weights[i] for i in who],
    )
    policy = Equinox(EquinoxKnobs(kappa=kappa, lengths="oracle", log_interval_s=0.05))
    config = EngineConfig(kv_capacity_tokens=1024, max_running=16, max_batch_tokens=256)
    Simulator(config, LinearCost(base=0.01, per_token=1e-4), policy).run(table)
    u, r = policy.guard_units()
    bound = equinox_bound(kappa, kappa, u, r)
    diff = pair_difference(policy.trajectory.table().to_pandas())
    assert diff["ufc"] <= bound["ufc"] * (1 + 1e-9) + 1e-9
    # The RFC side is not asserted: when no client is inside both guards the smallest UFC goes
    # (docs/EQUINOX.md: the fallback keeps the UFC bound, not the RFC one), and the derandomized
    # examples include one (2 clients, kappa 0) where RFC's pair difference is 3.36 > 3.11.


def test_memory_aware_admission_halves_preemptions_on_long_prompts():
    rng = np.random.default_rng(3)
    n = 400
    table = make_table(
        [f"c{i}" for i in rng.integers(0, 4, n)],
        np.cumsum(rng.exponential(1 / 4.0, n)),
        rng.integers(1000, 3000, n),
        rng.integers(100, 800, n),
    )
    runs = {}
    for memory_aware in (False, True):
        knobs = EquinoxKnobs(memory_aware=memory_aware)
        requests, _, _ = simulate(table, "equinox", knobs, preset="vtc-a10g-llama2-7b")
        tokens = (requests.prompt_tokens + requests.generated_tokens).sum()
        runs[memory_aware] = requests.preemptions.sum(), tokens / requests.finish_s.max()
    (pre_off, thr_off), (pre_on, thr_on) = runs[False], runs[True]
    assert pre_off > 20 and pre_on <= pre_off / 2
    assert thr_on >= thr_off
