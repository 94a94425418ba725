"""Equinox: the score, the counters' corrections, adaptive batching, and what the runs show."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import LinearCost

from engine.feedback import Step, Tokens
from engine.replay import replay
from engine.simulator import EngineConfig, Simulator
from reports import metrics as m
from reports.audit import audit
from schedulers import Equinox, EquinoxKnobs, make_policy
from schedulers.equinox_memory import OVERCOMMIT_STEP
from traces import load_workload, synthesize
from traces.request import Request

VTC_LIKE = EquinoxKnobs(
    alpha=1, beta=0, gamma=0, kappa=float("inf"), skip=False, memory_aware=False, adaptive_budget=False
)


def req(i, client, prompt=10, output=10, t=0.0, weight=1.0):
    return Request(i, client, t, prompt, output, weight)


def test_hf_normalises_each_counter_by_its_mean_over_backlogged_clients():
    p = Equinox(EquinoxKnobs(alpha=0.7, beta=0.3))
    for i, c in enumerate("abc"):
        p.on_arrival(req(i, c), 0)
    for client, ufc, rfc in (("a", 10.0, 3.0), ("b", 30.0, 1.0), ("c", 0.0, 2.0)):
        p.set_counters(client, ufc, rfc)
    # means over a, b, c: UFC 40/3, RFC 2 -> a: .7*10*3/40 + .3*3/2 = 0.975; b: .7*30*3/40 + .3/2 = 1.725;
    # c: 0 + .3*2/2 = 0.3
    assert p.hf() == pytest.approx({"a": 0.975, "b": 1.725, "c": 0.3})
    assert p.peek().client == "c"
    for client, rfc in (("a", 3.0), ("b", 1.0), ("c", 2.0)):
        p.set_counters(client, 0.0, rfc)  # an all-zero counter normalises to 0
    assert p.hf() == pytest.approx({"a": 0.45, "b": 0.15, "c": 0.3})


def test_a_client_served_late_is_charged_less_and_goes_first():
    knobs = EquinoxKnobs(alpha=1, beta=0, gamma=1, q_min=0.1, ttft_slo_s=2.0, lengths="oracle")
    for spec in ("equinox", "vtc"):
        p = Equinox(knobs) if spec == "equinox" else make_policy("vtc")
        # Same demand, both backlogged throughout: two 100-token prompts each, one output token.
        reqs = {c: [req(i, c, prompt=100, output=1) for i in (0, 1)] for c in "ab"}
        for c in "ab":
            for r in reqs[c]:
                p.on_arrival(r, 0.0)
        for c, admitted in (("a", 0.5), ("b", 5.0)):  # b's first request waited 10x a's
            r = reqs[c][0]
            p.admit(r, admitted, resumed=False)
            r.first_token_s, r.generated = admitted, 1
            p.on_tokens(Tokens.of([r]), 1)
            p.on_finish(r, admitted)
        if spec == "equinox":
            # a: no typical latency yet, the reference is the SLO (2 s): 0.5 s is under it, q = 1:
            # 100 + 2 = 102.  b: the reference is a's 0.5 s; 5 s is 9 over: q = max(0.1, 1 / (1 + 9))
            # = 0.1: 0.1 * 102 = 10.2
            assert p.ufc == pytest.approx({"a": 102.0, "b": 10.2})
            assert p.peek().client == "b"
        else:
            assert p.counters == {"a": 102.0, "b": 102.0}
            assert p.peek().client == "a"  # a tie, broken by arrival order


def test_gamma_zero_charges_tokens_as_vtc_predict():
    p = Equinox(EquinoxKnobs(alpha=1, beta=0, gamma=0, lengths="oracle"))
    r = req(0, "a", prompt=100, output=7)
    p.on_arrival(r, 0.0)
    p.admit(r, 50.0, resumed=False)  # a long wait changes nothing
    assert p.ufc == {"a": 100 + 2 * 7}


class Threshold:  # the simulator's fits: one threshold on pending tokens, read in one go
    def __init__(self, max_pending):
        self.max_pending = max_pending

    def __call__(self, r):
        return r.pending <= self.max_pending


def guarded(**knobs):
    """Four backlogged clients on an engine with a 1,000-token KV cache: U = max(1 * 900, 2 * 1000) = 2000."""
    p = Equinox(EquinoxKnobs(alpha=1, beta=0, memory_aware=False, **knobs))
    p.bind_engine(kv_capacity_tokens=1000)
    for i, (c, prompt) in enumerate([("a", 900), ("b", 10), ("c", 10), ("d", 10)]):
        p.on_arrival(req(i, c, prompt=prompt), 0)
    p._max_request = 1.0  # R: the largest request's engine time so far
    for client, ufc, rfc in (("a", 100.0, 0.0), ("b", 1000.0, 0.5), ("c", 2500.0, 0.0), ("d", 1200.0, 3.0)):
        p.set_counters(client, ufc, rfc)
    return p


def test_the_guard_keeps_choices_within_kappa_units_of_the_smallest_counters():
    assert guarded().guard_units() == (2000.0, 1.0)
    for fits in (lambda r: r.prompt_tokens < 100, Threshold(99)):
        # a does not fit; b is within 2000 (kappa U) of a's UFC and 1 (kappa R) of the smallest RFC
        assert guarded().select(fits).client == "b"
        # kappa 0.5: b's UFC is 900 over a's, within 1000; d would be too (1100 over) but for its RFC
        assert guarded(kappa=0.5).select(fits).client == "b"
        # kappa 0.4: nobody but a is within 800: skipping stops at the guard
        assert guarded(kappa=0.4).select(fits) is None
        assert guarded(kappa=float("inf")).select(fits).client == "b"
        assert guarded(skip=False).select(fits) is None  # VTC's rule: stop at the first that does not fit
    # When the lowest HF is outside the guard, the lowest HF inside it goes first (fits or not).
    p = guarded(kappa=0.5)
    p.set_counters("b", 1000.0, 1.6)  # b's RFC is 1.6 over the smallest (0): outside kappa R = 0.5
    assert p.select(Threshold(99)) is None  # a does not fit, b is outside the RFC guard, c and d the UFC one
    p = guarded(kappa=1.0)
    p.set_counters("a", 100.0, 5.0)  # a (lowest UFC) is 5 over the smallest RFC: not eligible
    assert p.select(lambda r: True).client == "b"


def test_memory_aware_admission_reserves_the_quantile_output():
    p = Equinox(EquinoxKnobs(alpha=1, beta=0, gamma=0, lengths="oracle", kappa=float("inf"), overcommit=0.0))
    p.bind_engine(kv_capacity_tokens=1000)
    first = req(0, "a", prompt=300, output=300)
    p.on_arrival(first, 0.0)
    assert p.select(Threshold(10**9)) is first  # nothing runs: always admitted
    p.admit(first, 0.0, resumed=False)  # will hold 300 + 300 of the 1,000 tokens
    big, small = req(1, "b", prompt=300, output=200), req(2, "c", prompt=100, output=200)
    p.on_arrival(big, 0.0)
    p.on_arrival(small, 0.0)
    p.set_counters("b", 0.0, 0.0)
    p.set_counters("c", 1.0, 0.0)  # b goes first, but its 500 tokens do not fit the 400 left
    assert p.select(Threshold(10**9)) is small
    # a grows past its quantile: its reservation follows (300 + 301 tokens), 399 left
    first.generated = 301
    p.on_tokens(Tokens.of([first]), 1)
    assert p._memory.room() == 399
    p.on_finish(first, 1.0)
    assert p.select(Threshold(10**9)) is big


def _two_running(overcommit: float):
    """A 1,000-token cache; a holds 500 tokens with 100 to go, b holds 100 with 400 to go.  Their
    reservations sum to 1,100, but a finishes first: the most they hold at once is at a's last
    token, 600 + 200 = 800."""
    p = Equinox(EquinoxKnobs(alpha=1, beta=0, gamma=0, lengths="oracle", kappa=float("inf"), overcommit=overcommit))
    p.bind_engine(kv_capacity_tokens=1000)
    a, b = req(0, "a", prompt=500, output=100), req(1, "b", prompt=100, output=400)
    for r in (a, b):
        p.on_arrival(r, 0.0)
        p.admit(r, 0.0, resumed=False)
    p.on_step(0.0, 0.01, Step.of([(a, 500), (b, 100)]))
    return p, a, b


def test_memory_aware_admission_counts_the_future_peak_not_the_sum_of_reservations():
    p, _, _ = _two_running(0.0)
    assert p._memory.room() == 200  # 1,000 - 800
    fits, too_big = req(2, "c", prompt=150, output=50), req(3, "d", prompt=150, output=51)
    p.on_arrival(too_big, 0.0)
    assert p.select(Threshold(10**9)) is None  # 201 tokens: over the 200 left
    p.on_arrival(fits, 0.0)
    assert p.select(Threshold(10**9)) is fits


def test_memory_aware_overcommit_grows_while_memory_binds_and_resets_at_a_preemption():
    p, a, b = _two_running(0.5)
    assert p._memory.room() == 200  # it starts at no overcommit: 1,000 - 800
    p.on_arrival(req(2, "c", prompt=150, output=100), 0.0)
    assert p.select(Threshold(10**9)) is None  # memory holds c back ...
    a.generated = 100
    p.on_finish(a, 1.0)  # ... so a completion raises the overcommit by OVERCOMMIT_STEP
    assert p._memory.room() == pytest.approx(1000 * (1 + OVERCOMMIT_STEP) - 500)  # b alone: 100 + 400
    p.requeue(b)  # a preemption: back to none
    assert p._memory.overcommit == 0.0


def test_adaptive_budget_grows_when_it_binds_under_the_slo_and_shrinks_over_it():
    p = Equinox(EquinoxKnobs(adaptive_budget=True, budget_min=100, budget_max=1000, tpot_slo_s=0.05))
    assert p.token_budget(400) == 400
    p.on_arrival(req(9, "w"), 0.0)  # a request waits: a step using the whole budget is bound by it
    r = req(0, "a", prompt=400)
    p.on_arrival(r, 0.0)
    p.admit(r, 0.0, resumed=False)
    # bound (400 of 400 tokens), and 101 more tokens at the measured 25 us a token keep the step
    # at 0.0125 s, under the SLO: grow by a quarter
    p.on_step(0.0, 0.01, Step.of([(r, 400)]))
    assert p.token_budget(400) == 501
    p.on_step(0.1, 0.01, Step.of([(r, 10)]))  # 10 of 501 tokens: not bound, no change
    assert p.token_budget(400) == 501
    p.on_step(0.2, 0.2, Step.of([(r, 1)]))  # a step slower than the SLO: shrink by 0.8x
    assert p.token_budget(400) == 400
    p.on_step(0.3, 0.049, Step.of([(r, 400)]))  # bound, but 101 more tokens would pass the SLO: no change
    assert p.token_budget(400) == 400
    for t in range(30):
        p.on_step(1.0 + t, 0.2, Step.of([(r, 1)]))
    assert p.token_budget(400) == 100


def _table(path):
    return pq.read_table(path).drop(["scheduler"])


def test_reduces_to_vtc_oracle_request_for_request(tmp_path):
    workload = load_workload("lmsys")
    (vtc,) = replay(workload, ["vtc-oracle"], tmp_path / "vtc")
    (eq,) = replay(workload, ["equinox-oracle"], tmp_path / "eq", equinox=VTC_LIKE)
    a, b = _table(vtc / "requests.parquet"), _table(eq / "requests.parquet")
    assert a.equals(b)
    order = lambda t: t.to_pandas().sort_values(["admitted_s", "request_id"]).request_id.tolist()  # noqa: E731
    assert order(a) == order(b)
    assert pq.read_table(vtc / "steps.parquet").equals(pq.read_table(eq / "steps.parquet"))


@pytest.mark.parametrize("workload", ["overload", "on-off-overload"])
def test_equinox_keeps_the_service_difference_bounded(tmp_path, workload):
    runs = replay(synthesize(workload), ["equinox", "fcfs"], tmp_path)
    summaries = {s["name"]: s for s in audit(runs).runs}
    bound = summaries["equinox"]["bound"]["value"]
    assert summaries["equinox"]["fairness"]["pair_service_diff_max"] <= bound

    def growth(run):
        """How much the accumulated difference grows over the 330 s of overload (a fitted line)."""
        req = pd.read_parquet(run / "requests.parquet")
        grid = np.arange(30.0, 360.0, 1.0)
        diff = m.accumulated_service_difference(m.service_curves(req, grid), m.backlogged(req, grid))
        return np.polyfit(grid, diff.to_numpy(), 1)[0] * (grid[-1] - grid[0])

    equinox, fcfs = (growth(run) for run in runs)
    assert equinox < 0.25 * bound  # flat: it does not grow with time ...
    assert fcfs > 2 * bound  # ... where FCFS's grows by bounds
    counters = pq.read_table(runs[0] / "counters.parquet").to_pandas()
    assert set(counters.client_id) == {"client-0", "client-1"} and counters.time_s.is_monotonic_increasing


def test_stall_free_steps_never_hold_a_decode_behind_a_prefill():
    # B decodes 30 tokens; A's 2,000-token prompt arrives meanwhile.  Without chunking (vLLM v0's
    # prefill-first engine) A's whole prefill shares a step with B's decode: that step takes
    # 0.01 + 2001e-4 = 0.21 s.  Stall-free steps run B's decode first and chunk A into the rest of
    # a 128-token budget, so no step exceeds 0.01 + 128e-4 s and B decodes in every one of them.
    from traces.schema import make_table

    table = make_table(["b", "a"], [0.0, 0.05], [4, 2000], [30, 2])
    cost = LinearCost(base=0.01, per_token=1e-4)
    runs = {}
    for mode, cfg in (
        ("classic", dict(chunked_prefill=False)),
        ("stall-free", dict(max_batch_tokens=128, stall_free=True)),
    ):
        config = EngineConfig(kv_capacity_tokens=100_000, **{"max_batch_tokens": 4096, **cfg})
        requests, steps = Simulator(config, cost, make_policy("fcfs")).run(table)
        runs[mode] = requests.to_pandas().set_index("client_id"), steps.to_pandas()
    b, steps = runs["stall-free"][0].loc["b"], runs["stall-free"][1]
    while_b = steps[(steps.start_s >= b.first_token_s - 1e-9) & (steps.start_s < b.finish_s - 1e-9)]
    assert (while_b.decode_requests >= 1).all()
    assert while_b.duration_s.max() <= 0.01 + 128e-4 + 1e-12
    tpot = lambda r: (r.finish_s - r.first_token_s) / 29  # noqa: E731
    assert tpot(b) <= 0.01 + 128e-4 + 1e-12
    classic_b, classic_steps = runs["classic"][0].loc["b"], runs["classic"][1]
    assert classic_steps.duration_s.max() == pytest.approx(0.01 + 2001e-4)
    assert tpot(classic_b) > tpot(b)


def test_lowest_hf_search_finds_the_same_order_as_a_full_scan():
    import random

    rnd = random.Random(11)
    p = Equinox(EquinoxKnobs(alpha=0.6, beta=0.4))
    for i in range(700):  # three blocks of clients
        p.on_arrival(req(i, f"c{i}"), 0)
    for i in range(700):
        ufc = rnd.uniform(0, 1000)
        p.set_counters(f"c{i}", ufc, ufc * rnd.uniform(0.5, 1.5) / 100)  # correlated, as in a run
    a, b = p._scales()
    ufc, rfc = p.ufc, p.rfc
    assert a == pytest.approx(0.6 * 700 / sum(ufc.values())) and b == pytest.approx(0.4 * 700 / sum(rfc.values()))
    hf = {c: a * ufc[c] + b * rfc[c] for c in ufc}
    full = sorted(hf, key=lambda c: (hf[c], int(c[1:])))
    floor = hf[full[0]]
    assert list(p.hf()) == full and p.hf() == hf  # every client, in HF order
    assert p.peek().client == full[0]
    fits_only = {full[5], full[-1]}
    assert p.select(lambda r: r.client in fits_only).client == full[5]  # the lowest HF that fits
    assert floor == min(hf.values())


@pytest.mark.parametrize("knobs", [EquinoxKnobs(), EquinoxKnobs(alpha=0.9, beta=0.1, gamma=0.0), VTC_LIKE])
def test_each_admission_takes_the_lowest_hf_of_a_full_scan_as_clients_come_and_go(knobs):
    """Many clients (several blocks), each admission charged to the counters, clients that leave
    the queue and come back lifted: every choice is the lowest HF over the backlogged clients,
    ties to the client seen first, HF computed as Equinox defines it."""
    import random

    rnd = random.Random(5)
    p = Equinox(knobs)
    next_id = 0
    for _ in range(900):
        p.on_arrival(req(next_id, f"c{rnd.randrange(700)}", prompt=rnd.randint(1, 300), output=rnd.randint(1, 300)), 0)
        next_id += 1
    running = []
    for step in range(1500):
        now = 1.0 + step * 0.01
        a, b = p._scales()
        coef = (1.0, 0.0) if a == 0 and b == 0 else (a, b)
        ufc, rfc = p.ufc, p.rfc
        backlogged = [c for c in ufc if p._queues.get(c)]  # first-seen order
        hf = {c: coef[0] * ufc[c] + coef[1] * rfc[c] if coef[1] else coef[0] * ufc[c] for c in backlogged}
        expected = min(backlogged, key=lambda c: hf[c])  # the first seen among equals
        chosen = p.select(lambda _: True)
        assert chosen.client == expected
        p.admit(chosen, now, resumed=False)
        running.append(chosen)
        if rnd.random() < 0.3 and running:  # a step of the running batch, and a completion
            done = running.pop(rnd.randrange(len(running)))
            done.first_token_s, done.generated = now, done.output_tokens
            p.on_step(now, 0.02, Step.of([(r, 1) for r in running[-32:]] + [(done, 1)]))
            p.on_finish(done, now + 0.05)
        for _ in range(rnd.choice([0, 1, 1, 2])):  # arrivals, some from clients that left
            p.on_arrival(req(next_id, f"c{rnd.randrange(800)}", prompt=rnd.randint(1, 300), t=now), now)
            next_id += 1
