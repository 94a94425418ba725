"""What the schedulers are for, shown on VTC's synthetic workloads (ALGORITHMS.md sections 2 and 6)."""

import numpy as np
import pandas as pd
import pytest

from engine.replay import replay
from reports import metrics as m
from reports.audit import audit
from traces import synthesize


@pytest.fixture(scope="module")
def overload(tmp_path_factory):
    out = tmp_path_factory.mktemp("overload")
    runs = replay(synthesize("overload"), ["fcfs", "vtc", "rpm:5"], out, workload_name="overload")
    return {r["name"]: r for r in audit(runs).runs}, out


def _accumulated_difference(run_dir, times):
    req = pd.read_parquet(run_dir / "requests.parquet")
    curves = m.service_curves(req, times)
    return m.accumulated_service_difference(curves, m.backlogged(req, times)).to_numpy()


def test_vtc_stays_under_the_bound_on_overload_while_fcfs_keeps_growing(overload):
    result, out = overload
    vtc, fcfs = result["vtc"], result["fcfs"]
    bound = 2 * max(1 * 256, 2 * 10_000)  # 2 * max(w_p * L_input, w_q * M), VTC's 10,000-token pool
    assert vtc["bound"]["value"] == bound
    assert vtc["fairness"]["pair_service_diff_max"] <= bound
    assert vtc["fairness"]["acc_service_diff_max"] <= bound
    # FCFS serves client 1 (3 req/s) twice as often as client 0 (1.5 req/s): the gap grows all run.
    times = np.array([60.0, 120.0, 180.0, 240.0, 300.0, 360.0])
    growth = _accumulated_difference(out / "fcfs", times)
    assert np.all(np.diff(growth) > 0)
    assert growth[-1] > 4 * growth[0] and growth[-1] > bound
    assert fcfs["fairness"]["pair_service_diff_max"] > 5 * bound
    assert _accumulated_difference(out / "vtc", times).max() <= bound


def test_rpm_rejects_requests_and_lowers_throughput(overload):
    result, _ = overload
    rpm, fcfs = result["rpm-5"], result["fcfs"]
    # 5 per client per minute for 6 minutes: at most 2 clients * 5 * 7 windows are accepted.
    assert rpm["requests"]["rejected"] >= rpm["requests"]["total"] - 2 * 5 * 7
    assert fcfs["requests"]["rejected"] == 0
    assert rpm["throughput"]["output_tokens_per_s"] < 0.5 * fcfs["throughput"]["output_tokens_per_s"]


def test_weighted_vtc_splits_service_by_weight(tmp_path):
    (run,) = replay(synthesize("overload-weighted"), ["vtc"], tmp_path)
    req = pd.read_parquet(run / "requests.parquet")
    # Every client is backlogged from about 60 s until arrivals stop at 360 s: raw service there.
    t = np.array([60.0, 360.0])
    raw = m.service_curves(req.assign(weight=1.0), t).diff().iloc[-1]
    share = raw / raw.sum()
    expected = pd.Series([1, 2, 3, 4], index=[f"client-{i}" for i in range(4)]) / 10
    assert np.allclose(share.sort_index(), expected, atol=0.03), share.to_dict()


def test_lcf_gives_a_returning_client_a_burst_that_vtc_does_not(tmp_path):
    # on-off-less: client 0 sends 0.5 req/s for 60 s, then nothing for 60 s; client 1 sends 2 req/s.
    # A burst needs the returning client to want more than its fair share, so the engine is capped
    # at 2 running requests (about 0.77 req/s in all, a fair share of 0.38 < 0.5).
    runs = replay(synthesize("on-off-less"), ["vtc", "lcf"], tmp_path, preset="a100-llama2-7b", max_running=2)
    share = {}
    for run in runs:
        req = pd.read_parquet(run / "requests.parquet")
        share[run.name] = [
            (req.loc[req.admitted_s.between(t, t + 30, inclusive="left"), "client_id"] == "client-0").mean()
            for t in (120, 240, 360, 480)
        ]
    # LCF kept client 0's counter low while it was away and spends it on return; VTC lifted it.
    assert all(lcf > vtc + 0.1 for lcf, vtc in zip(share["lcf"], share["vtc"])), share
    assert all(v <= 0.5 for v in share["vtc"]), share
