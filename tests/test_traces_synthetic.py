"""The synthetic suite against hand-computed counts, rates and lengths (ALGORITHMS.md section 6)."""

import numpy as np
import pytest

from traces import SYNTHETIC_WORKLOADS, InputError, synthesize, workload_metadata


def _times(table, client):
    df = table.to_pandas()
    return df.loc[df.client_id == f"client-{client}", "arrival_s"].to_numpy()


def _counts(table):
    return table.to_pandas().groupby("client_id").size().to_dict()


# int(rate * duration) per paced client; on/off clients worked out in the comments below.
HAND_COUNTS = {
    "overload": [540, 1080],  # 1.5 and 3 req/s x 360 s
    "overload-multi": [144] * 3 + [216] * 5,  # 0.4 and 0.6 x 360
    "overload-weighted": [288, 288, 432, 576],  # 0.8, 0.8, 1.2, 1.6 x 360
    "proportional": [150, 300, 900],  # 0.25, 0.5, 1.5 x 600
    # client 0: 300 requests 2 s apart at 2(k+u), k=1..300; the on windows [0,60), [120,180),
    # ..., [480,540) hold 29 + 4 x 30, and [600,660) holds k=300: 150 in all.
    "on-off-less": [150, 1200],
    # client 0: 1200 requests at 0.5(k+u): 119 + 4 x 120 + 1 = 600 in on windows.
    "on-off-overload": [600, 1800],
    "increase": [300, 660],  # 0.5 x 600; (0.2 + 2) / 2 x 600
    # phase 1: client 0 sends 150 at 2(k+u), 29 + 30 + 30 = 89 on; client 1 sends 600;
    # phase 2: 300 + 300; phase 3: 150 + 450.
    "dist-shift": [89 + 300 + 150, 600 + 300 + 450],
}


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
@pytest.mark.parametrize("seed", [42, 7])
def test_paced_counts_match_hand_calculation(name, seed):
    counts = _counts(synthesize(name, seed=seed))
    assert counts == {f"client-{k}": n for k, n in enumerate(HAND_COUNTS[name])}


@pytest.mark.parametrize(
    "name, rates",
    [
        ("overload", [1.5, 3]),
        ("overload-weighted", [0.8, 0.8, 1.2, 1.6]),
        ("proportional", [0.25, 0.5, 1.5]),
    ],
)
def test_uniform_arrivals_are_exactly_one_over_rate_apart(name, rates):
    table = synthesize(name)
    for client, rate in enumerate(rates):
        times = _times(table, client)
        assert np.allclose(np.diff(times), 1 / rate)
        assert 1 / rate <= times[0] < 2 / rate  # random phase in [0, 1/rate), then one gap


@pytest.mark.parametrize("name", ["on-off-less", "on-off-overload"])
def test_on_off_client_is_silent_in_off_windows(name):
    times = _times(synthesize(name), 0)
    window = np.floor(times / 60).astype(int)
    assert np.all(window % 2 == 0)
    assert set(window) == {0, 2, 4, 6, 8, 10}  # on for every on window, starting on


def test_on_off_other_client_is_steady():
    times = _times(synthesize("on-off-less"), 1)
    assert np.allclose(np.diff(times), 0.5)


def test_dist_shift_phases():
    table = synthesize("dist-shift")
    c0, c1 = _times(table, 0), _times(table, 1)
    # phase 1: client 0 on/off at 0.5 req/s, client 1 at 2 req/s
    p1 = c0[c0 < 300]
    assert np.all(np.floor(p1 / 60) % 2 == 0)
    assert abs(len(p1) - 89) <= 1 and abs(np.sum(c1 < 300) - 600) <= 1
    # phase 2: 1 vs 1 req/s for 300 s
    assert abs(np.sum((c0 >= 300) & (c0 < 600)) - 300) <= 1
    assert abs(np.sum((c1 >= 300) & (c1 < 600)) - 300) <= 1
    # phase 3: 0.5 vs 1.5 req/s
    assert abs(np.sum(c0 >= 600) - 150) <= 1 and abs(np.sum(c1 >= 600) - 450) <= 1
    assert c1.max() < 900 + 1 / 1.5


def test_increase_ramps_client_1_from_0_2_to_2():
    table = synthesize("increase")
    ramp = _times(table, 1)
    # cumulative rate L(t) = 0.2 t + 0.0015 t^2; request k (k >= 1) arrives at L = k + phase.
    # L(60) = 17.4 -> 16 or 17 requests; L(540) = 545.4, L(600) = 660 -> 114 or 115.
    assert np.sum(ramp < 60) in (16, 17)
    assert np.sum((ramp >= 540) & (ramp < 600)) in (114, 115)
    # the rate is linear, so one gap holds exactly one request: rate(midpoint) * gap == 1
    mid, gaps = (ramp[1:] + ramp[:-1]) / 2, np.diff(ramp)
    assert np.allclose((0.2 + (2 - 0.2) / 600 * mid) * gaps, 1.0)
    assert np.allclose(np.diff(_times(table, 0)), 2.0)


@pytest.mark.parametrize(
    "name, short, long",
    [("poisson-short-long", (64, 64), (256, 256)), ("poisson-short-long-2", (512, 32), (32, 512))],
)
def test_poisson_short_long(name, short, long):
    df = synthesize(name).to_pandas()
    assert len(df) == int(9.5 * 600)
    share = np.mean(df.client_id == "client-0")
    sd = np.sqrt(8 / 9.5 * 1.5 / 9.5 / len(df))
    assert abs(share - 8 / 9.5) < 5 * sd
    for client, lengths in (("client-0", short), ("client-1", long)):
        rows = df[df.client_id == client]
        assert set(zip(rows.prompt_tokens, rows.output_tokens)) == {lengths}
    gaps = np.diff(df.arrival_s.to_numpy())
    assert gaps.mean() == pytest.approx(1 / 9.5, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: cv 1


def test_weights_and_default_lengths():
    df = synthesize("overload-weighted").to_pandas()
    weights = df.groupby("client_id").weight.unique().to_dict()
    assert {k: list(v) for k, v in weights.items()} == {f"client-{k}": [k + 1.0] for k in range(4)}
    assert set(synthesize("overload").to_pandas().weight) == {1.0}
    assert set(df.prompt_tokens) == {256} and set(df.output_tokens) == {256}


@pytest.mark.parametrize("name", sorted(SYNTHETIC_WORKLOADS))
def test_seeded_determinism(name):
    assert synthesize(name, seed=42).equals(synthesize(name, seed=42))
    assert not synthesize(name, seed=42).equals(synthesize(name, seed=43))
    meta = workload_metadata(synthesize(name, seed=5))
    assert meta["workload"] == name and meta["seed"] == 5


def test_duration_scale_shortens_the_workload():
    table = synthesize("overload", duration_scale=0.5)
    assert _counts(table) == {"client-0": 270, "client-1": 540}
    assert workload_metadata(table)["duration_s"] == 180


def test_suite_names_match_the_spec():
    assert set(SYNTHETIC_WORKLOADS) == {
        "overload",
        "overload-multi",
        "overload-weighted",
        "proportional",
        "on-off-less",
        "on-off-overload",
        "poisson-short-long",
        "poisson-short-long-2",
        "increase",
        "dist-shift",
    }


def test_unknown_name_lists_the_names():
    with pytest.raises(InputError, match="unknown synthetic workload 'overlaod'.*overload-multi"):
        synthesize("overlaod")
