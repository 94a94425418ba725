"""Metrics on tiny hand-built runs; every expected value is worked out in a comment."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reports import metrics as m


def requests(*rows: dict) -> pd.DataFrame:
    """A requests table from partial rows; unspecified columns get neutral values."""
    defaults = {
        "weight": 1.0,
        "status": "finished",
        "prompt_tokens": 0,
        "generated_tokens": 0,
        "admitted_s": np.nan,
        "first_token_s": np.nan,
        "finish_s": np.nan,
        "preemptions": 0,
    }
    return pd.DataFrame([{**defaults, **row} for row in rows])


def req(client, arrival, admitted, first, finish, prompt, generated, **extra) -> dict:
    return {
        "client_id": client,
        "arrival_s": arrival,
        "admitted_s": admitted,
        "first_token_s": first,
        "finish_s": finish,
        "prompt_tokens": prompt,
        "generated_tokens": generated,
        **extra,
    }


# Two clients; service s = prompt + 2 * generated, spread over [first, finish]:
#   a1: arrives 0, admitted 0, serves [0, 10], s = 10 + 2*5 = 20  -> 2/s
#   a2: arrives 1, admitted 10, serves [10, 20], s = 20            -> 2/s   (a waits over [1, 10))
#   b1: arrives 0, admitted 2, serves [2, 6], s = 4 + 2*8 = 20     -> 5/s   (b waits over [0, 2))
#   b2: arrives 3, admitted 6, serves [6, 8], s = 2 + 2*4 = 10     -> 5/s   (b waits over [3, 6))
# A_a(t) = 2t up to 10, then 20 + 2(t - 10);  A_b(t) = 5(t - 2) on [2, 6], 20 + 5(t - 6) on [6, 8], then 30.
CASE = requests(
    req("a", 0, 0, 0, 10, 10, 5),
    req("a", 1, 10, 10, 20, 10, 5),
    req("b", 0, 2, 2, 6, 4, 8),
    req("b", 3, 6, 6, 8, 2, 4),
)
GRID = np.arange(0.0, 21.0)


def test_service_curve_values_at_chosen_times():
    # a: 20 over [2, 6] -> 5/s.  b: 6 (= 4 + 2*1) at once at t = 3 (first token is the last),
    #    and 10 (= 2 + 2*4) over [4, 9] -> 2/s.  c was rejected: nothing.
    run = requests(
        req("a", 0, 1, 2, 6, 10, 5),
        req("b", 0, 1, 3, 3, 4, 1),
        req("b", 0, 1, 4, 9, 2, 4),
        req("c", 0, np.nan, np.nan, np.nan, 100, 0, status="rejected"),
    )
    curves = m.service_curves(run, [0, 2, 3, 4, 6, 9, 10])
    assert list(curves.columns) == ["a", "b", "c"]
    assert curves["a"].tolist() == pytest.approx([0, 0, 5, 10, 20, 20, 20])
    # b at 6: 6 + 2/s * (6 - 4) = 10; at 9: 6 + 10 = 16
    assert curves["b"].tolist() == pytest.approx([0, 0, 6, 6, 10, 16, 16])
    assert curves["c"].tolist() == [0] * 7


def test_service_is_divided_by_weight_and_uses_the_prices():
    # (10 + 2*5) / 2 = 10;  with w_p = 1, w_q = 1: (10 + 5) / 2 = 7.5
    run = requests(req("w", 0, 0, 0, 4, 10, 5, weight=2.0))
    assert m.service_curves(run, [4])["w"].iloc[0] == pytest.approx(10)
    assert m.service_curves(run, [4], w_p=1, w_q=1)["w"].iloc[0] == pytest.approx(7.5)


def test_backlogged_means_arrived_and_not_yet_admitted():
    back = m.backlogged(CASE, GRID)
    # a waits over [1, 10); b over [0, 2) and [3, 6)
    assert back.index[back["a"]].tolist() == list(range(1, 10))
    assert back.index[back["b"]].tolist() == [0, 1, 3, 4, 5]


def test_rejected_requests_are_never_backlogged():
    run = requests(req("c", 0, np.nan, np.nan, np.nan, 5, 0, status="rejected"))
    assert not m.backlogged(run, [0, 1, 2])["c"].any()


def test_accumulated_service_difference_over_backlogged_clients():
    diff = m.accumulated_service_difference(m.service_curves(CASE, GRID), m.backlogged(CASE, GRID))
    # both backlogged at t = 1, 3, 4, 5 only:
    #   t=1: A_a = 2, A_b = 0 -> 2;  t=3: 6 vs 5 -> 1;  t=4: 8 vs 10 -> 2;  t=5: 10 vs 15 -> 5
    expected = pd.Series(0.0, index=GRID)
    expected[[1, 3, 4, 5]] = [2, 1, 2, 5]
    assert diff.tolist() == pytest.approx(expected.tolist())
    assert diff.max() == pytest.approx(5)


def test_accumulated_service_difference_counts_from_the_first_grid_time():
    # from t = 3: A_a - A_a(3) = 2 (t - 3), A_b - A_b(3) = 5 (t - 3); at t = 5: |4 - 10| = 6
    grid = np.arange(3.0, 6.0)
    diff = m.accumulated_service_difference(m.service_curves(CASE, grid), m.backlogged(CASE, grid))
    assert diff.tolist() == pytest.approx([0, 3, 6])


def test_pair_service_difference_over_common_backlogged_intervals():
    value, pair = m.pair_service_difference(m.service_curves(CASE, GRID), m.backlogged(CASE, GRID))
    # common backlogged runs: {1} and {3, 4, 5}.  A_a - A_b at 3, 4, 5 = 1, -2, -5, so over
    # [3, 5]: W_a = 10 - 6 = 4, W_b = 15 - 5 = 10, |4 - 10| = 6 = 1 - (-5).
    assert value == pytest.approx(6)
    assert pair == ("a", "b")


def test_pair_service_difference_without_overlap_is_zero():
    run = requests(req("a", 0, 1, 1, 2, 1, 1), req("b", 5, 6, 6, 7, 1, 1))
    grid = np.arange(0.0, 8.0)
    assert m.pair_service_difference(m.service_curves(run, grid), m.backlogged(run, grid)) == (0.0, None)


def test_pair_service_difference_picks_the_worst_of_three_clients():
    # each client runs one request over [0, 4] (a: 20 + 2*10 = 40 -> 10/s, b: 10 + 2*5 = 20 -> 5/s,
    # c: 2 + 2*1 = 4 -> 1/s) while a second one waits from 0 to its admission at 4.
    run = requests(
        *(req(c, 0, 0, 0, 4, p, g) for c, p, g in (("a", 20, 10), ("b", 10, 5), ("c", 2, 1))),
        *(req(c, 0, 4, 4, 5, 1, 1) for c in "abc"),
    )
    grid = np.arange(5.0)
    value, pair = m.pair_service_difference(m.service_curves(run, grid), m.backlogged(run, grid))
    # all backlogged at grid times 0..3; the worst pair is (a, c) over [0, 3]: |30 - 3| = 27
    assert (value, pair) == (pytest.approx(27), ("a", "c"))


def test_service_and_demand_rates_in_a_window():
    # window [2, 6]: a served A_a(6) - A_a(2) = 12 - 4 = 8 -> 8/4 = 2/s; b 20 - 0 -> 5/s
    y = m.service_rate(CASE, [4], window=4)
    assert y.loc[4].tolist() == pytest.approx([2, 5])
    # arrivals in [2, 6]: a none; b2 (s = 10) at 3 -> 10/4 = 2.5
    r = m.demand_rate(CASE, [4], window=4)
    assert r.loc[4].tolist() == pytest.approx([0, 2.5])


def test_demand_window_includes_both_ends():
    # [0, 4] holds arrivals at 0, 1 (a: 40) and 0, 3 (b: 30); [-1, 3] holds the same
    assert m.demand_rate(CASE, [2, 1], window=4).to_numpy() == pytest.approx(np.array([[10, 7.5], [10, 7.5]]))


def test_windowed_difference_on_a_constructed_case():
    # tick 0: y = (10, 4, 1), r = (10, 8, 0.5), max y = 10:
    #   min(0, 0) + min(6, 4) + min(9, 0.5) = 4.5
    # tick 1: y = (3, 3, 3): every gap is 0 -> 0
    y = pd.DataFrame([[10, 4, 1], [3, 3, 3]], columns=list("abc"), dtype=float)
    r = pd.DataFrame([[10, 8, 0.5], [5, 1, 3]], columns=list("abc"), dtype=float)
    d = m.windowed_difference(y, r)
    assert d.tolist() == pytest.approx([4.5, 0])
    # mean (4.5 + 0) / 2 = 2.25; variance ((2.25)^2 + (2.25)^2) / 2 = 5.0625
    assert (d.max(), d.mean(), np.var(d)) == pytest.approx((4.5, 2.25, 5.0625))


def test_windowed_difference_from_requests():
    # window [2, 6]: y = (2, 5), r = (0, 2.5): a: min(5 - 2, |0 - 2|) = 2; b: min(0, 2.5) = 0
    d = m.windowed_difference(m.service_rate(CASE, [4], window=4), m.demand_rate(CASE, [4], window=4))
    assert d.tolist() == pytest.approx([2])


def test_artifact_ticks():
    # warm-up 30 + (600 - 30) / 20 * i = 30 + 28.5 i, i = 1..19
    ticks = m.artifact_ticks(600)
    assert len(ticks) == 19
    assert (ticks[0], ticks[-1]) == pytest.approx((58.5, 571.5))
    assert m.artifact_ticks(20).size == 0


@pytest.mark.parametrize(
    "x, expected",
    [
        ([1, 1], 1.0),  # (2)^2 / (2 * 2) = 1
        ([1, 3], 0.8),  # (4)^2 / (2 * 10) = 16/20
        ([5, 0, 0, 0], 0.25),  # 25 / (4 * 25) = 1/n
        ([2, 3], 25 / 26),  # 25 / (2 * 13)
    ],
)
def test_jain_index(x, expected):
    assert m.jain_index(x) == pytest.approx(expected)


def test_jain_index_undefined():
    assert math.isnan(m.jain_index([]))
    assert math.isnan(m.jain_index([0, 0]))


def test_backlogged_service_rate_and_total_service():
    per = m.backlogged_service(m.service_curves(CASE, GRID), m.backlogged(CASE, GRID))
    # a: backlogged at the start of [1,2] .. [9,10]: 9 s; received A_a(10) - A_a(1) = 18 -> 2/s
    # b: at the start of [0,1], [1,2], [3,4], [4,5], [5,6]: 5 s; received 0 + 0 + 5 + 5 + 5 = 15 -> 3/s
    assert per["seconds"].tolist() == pytest.approx([9, 5])
    assert per["service"].tolist() == pytest.approx([18, 15])
    assert per["rate"].tolist() == pytest.approx([2, 3])
    assert m.jain_index(per["rate"]) == pytest.approx(25 / 26)
    # totals: a 20 + 20 = 40, b 20 + 10 = 30
    assert m.total_service(CASE).tolist() == pytest.approx([40, 30])


# Latency case:
#   a1: arrival 0, admitted 1, first 2, finish 12, 11 tokens: ttft 2, tpot 10/10 = 1, e2e 12, queue 1
#   a2: arrival 1, admitted 1, first 3, finish 3, 1 token:    ttft 2, tpot -,         e2e 2,  queue 0
#   b1: arrival 2, admitted 4, first 6, finish 8, 5 tokens:   ttft 4, tpot 2/4 = 0.5, e2e 6,  queue 2
#   b2: arrival 3, admitted 5, first 11, finish 15, 3 tokens: ttft 8, tpot 4/2 = 2,   e2e 12, queue 2
#   c1: rejected at 4 (prompt 50): in no latency or throughput figure
LAT = requests(
    req("a", 0, 1, 2, 12, 10, 11),
    req("a", 1, 1, 3, 3, 20, 1),
    req("b", 2, 4, 6, 8, 30, 5),
    req("b", 3, 5, 11, 15, 40, 3),
    req("c", 4, np.nan, np.nan, np.nan, 50, 0, status="rejected"),
)


def test_latencies_per_request():
    lat = m.latencies(LAT)
    assert lat["ttft"].tolist() == [2, 2, 4, 8]
    assert lat["tpot"].tolist()[0] == 1 and math.isnan(lat["tpot"].tolist()[1])
    assert lat["tpot"].tolist()[2:] == [0.5, 2]
    assert lat["e2e"].tolist() == [12, 2, 6, 12]
    assert lat["queue"].tolist() == [1, 0, 2, 2]


def test_latency_percentiles_overall_and_per_client():
    stats = m.latency_stats(m.latencies(LAT))
    ttft = stats["overall"]["ttft"]
    # sorted 2, 2, 4, 8; linear interpolation at (n-1) q: p50 at 1.5 -> 3; p90 at 2.7 -> 4 + 0.7*4 = 6.8;
    # p99 at 2.97 -> 4 + 0.97*4 = 7.88; mean 16/4 = 4
    assert (ttft["mean"], ttft["p50"], ttft["p90"], ttft["p99"]) == pytest.approx((4, 3, 6.8, 7.88))
    # tpot over 1, 0.5, 2 (the one-token request has none): mean 3.5/3, p50 1
    assert (stats["overall"]["tpot"]["mean"], stats["overall"]["tpot"]["p50"]) == pytest.approx((3.5 / 3, 1))
    assert set(stats["per_client"]) == {"a", "b"}
    # b: ttft 4, 8 -> p50 6, p90 4 + 0.9*4 = 7.6
    b_ttft = stats["per_client"]["b"]["ttft"]
    assert (b_ttft["p50"], b_ttft["p90"]) == pytest.approx((6, 7.6))
    assert stats["per_client"]["a"]["queue"]["mean"] == pytest.approx(0.5)


def test_throughput():
    t = m.throughput(LAT)
    # makespan = last finish 15 - first arrival 0 = 15; tokens = prompts 100 + outputs 20 = 120
    assert t["makespan_s"] == 15
    assert t["tokens_per_s"] == pytest.approx(120 / 15)
    assert t["output_tokens_per_s"] == pytest.approx(20 / 15)
    assert t["requests_per_s"] == pytest.approx(4 / 15)


STEPS = pd.DataFrame(
    {
        "duration_s": [1.0, 2.0, 3.0, 4.0],
        "busy": [True, False, True, True],
        "flops": [1e12, 0.0, 2e12, 5e12],
    }
)


def test_utilization_busy_fraction_and_mfu():
    u = m.utilization(STEPS, peak_flops=2e12)
    # busy 1 + 3 + 4 = 8 of 10 s -> 0.8; MFU = 8e12 / (8 s * 2e12) = 0.5
    assert (u["busy_s"], u["total_s"], u["busy_fraction"], u["mfu"]) == pytest.approx((8, 10, 0.8, 0.5))
    assert math.isnan(m.utilization(STEPS)["mfu"])


def test_vtc_bound():
    # 2 * max(1 * 512, 2 * 10000) = 40000; 2 * max(30000, 20000) = 60000; weights >= 2 halve it
    assert m.vtc_bound(512, 10_000) == 40_000
    assert m.vtc_bound(30_000, 10_000) == 60_000
    assert m.vtc_bound(512, 10_000, min_weight=2.0) == 20_000
    assert m.vtc_bound(512, 10_000, w_p=1, w_q=1) == 20_000


def test_pair_service_difference_series_runs_up_to_the_value():
    series = m.pair_service_difference_series(m.service_curves(CASE, GRID), m.backlogged(CASE, GRID))
    # common backlogged runs {1} and {3, 4, 5}; A_a - A_b = 1, -2, -5 at 3, 4, 5 -> running range 0, 3, 6
    expected = [0.0] * len(GRID)
    expected[4:6] = [3, 6]
    assert series.tolist() == pytest.approx(expected)
    assert series.max() == m.pair_service_difference(m.service_curves(CASE, GRID), m.backlogged(CASE, GRID))[0]


def test_pair_service_difference_series_restarts_with_each_backlogged_run():
    # a serves 10/s and b 5/s over [0, 10]; a waits throughout, b over [0, 3) and [5, 8)
    run = requests(
        req("a", 0, 0, 0, 10, 0, 50),  # 100 over [0, 10]: 10/s
        req("a", 0, 10, 10, 11, 0, 1),  # waits over [0, 10)
        req("b", 0, 0, 0, 10, 0, 25),  # 50 over [0, 10]: 5/s
        req("b", 0, 3, 10, 11, 0, 1),  # waits over [0, 3)
        req("b", 5, 8, 10, 11, 0, 1),  # waits over [5, 8)
    )
    series = m.pair_service_difference_series(m.service_curves(run, GRID), m.backlogged(run, GRID))
    # A_a - A_b = 5t; runs {0, 1, 2} and {5, 6, 7}: ranges 0, 5, 10 then 0, 5, 10 again
    assert series.tolist()[:9] == pytest.approx([0, 5, 10, 0, 0, 0, 5, 10, 0])


def test_requested_and_demanded_service_count_rejected_requests():
    run = requests(
        req("a", 0, 0, 1, 2, 10, 5, output_tokens=5),  # 10 + 2*5 = 20
        req("a", 3, np.nan, np.nan, np.nan, 4, 0, output_tokens=8, status="rejected"),  # 4 + 2*8 = 20, never served
        req("b", 1, 1, 2, 3, 6, 2, output_tokens=2, weight=2.0),  # (6 + 2*2) / 2 = 5
    )
    assert m.requested_service(run).tolist() == [20, 20, 5]
    assert m.demanded_service(run).tolist() == [40, 5]
    assert m.total_service(run).tolist() == [20, 5]
    # demand counts at arrival: a has 20 at 0 and 20 more at 3; b 5 at 1
    assert m.demand_curves(run, [0, 1, 2, 3]).to_numpy().tolist() == [[20, 0], [20, 5], [20, 5], [40, 5]]


def test_starvation_of_one_request_at_a_time_is_its_queueing_delay():
    # a's second request waits over [1, 10); b's over [0, 2) and [3, 6)
    assert m.starvation(CASE).to_numpy().tolist() == [[9, 1], [3, 3]]


def test_starvation_restarts_at_each_admission_of_the_client():
    # c: three requests arrive at 0, admitted at 2, 5 and 6 (queueing delays 2, 5, 6): backlogged over
    # [0, 6) with progress at 2 and 5 -> waits 2, 3, 1 -> 3 from 2.  d is admitted on arrival (0 from 1);
    # e's only request is rejected (never waits: 0, no start); c's rejected request changes nothing.
    run = requests(
        req("c", 0, 2, 3, 4, 1, 1),
        req("c", 0, 5, 6, 7, 1, 1),
        req("c", 0, 6, 7, 8, 1, 1),
        req("c", 4, np.nan, np.nan, np.nan, 1, 0, status="rejected"),
        req("d", 1, 1, 2, 3, 1, 1),
        req("e", 1, np.nan, np.nan, np.nan, 1, 0, status="rejected"),
    )
    out = m.starvation(run)
    assert out["starvation_s"].tolist() == [3, 0, 0]
    assert out["from_s"].tolist()[:2] == [2, 1] and math.isnan(out["from_s"].iloc[2])
    assert m.latencies(run)["queue"].max() == 6


def test_starvation_waits_across_overlapping_requests():
    # f: arrivals at 0 and 1, admissions at 4 and 9: backlogged over [0, 9) with progress at 4 -> 5 from 4
    run = requests(req("f", 0, 4, 5, 6, 1, 1), req("f", 1, 9, 10, 11, 1, 1))
    assert m.starvation(run).to_numpy().tolist() == [[5, 4]]
