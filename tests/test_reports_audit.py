"""Loading run directories, the audit summary, baselines, counters and the text renderers.

The hand-built run here (``write_run``) is shared by the other report tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from rich.console import Console

from engine.results import atomic_write_json, atomic_write_parquet
from reports.audit import audit, audit_run, load_runs, to_json
from reports.markdown import to_markdown
from reports.tables import render_rich
from traces.errors import InputError
from traces.result_schemas import COUNTER_SCHEMA, REQUEST_SCHEMA, STEP_SCHEMA

# The metrics tests' two-client case, shifted past the 30-s warm-up:
#   a: serves 20 over [30, 40] and 20 over [40, 50]; its second request waits over [31, 40)
#   b: serves 20 over [32, 36] and 10 over [36, 38]; waits over [30, 32) and [33, 36)
ROWS = [
    # client, arrival, admitted, first token, finish, prompt, generated
    ("a", 30, 30, 30, 40, 10, 5),
    ("a", 31, 40, 40, 50, 10, 5),
    ("b", 30, 32, 32, 36, 4, 8),
    ("b", 33, 36, 36, 38, 2, 4),
]


def requests_table(rows=ROWS, scheduler="vtc") -> pa.Table:
    n = len(rows)
    client, arrival, admitted, first, finish, prompt, generated = (list(c) for c in zip(*rows))
    cols = {
        "request_id": list(range(n)),
        "client_id": client,
        "arrival_s": [float(x) for x in arrival],
        "prompt_tokens": prompt,
        "output_tokens": generated,
        "weight": [1.0] * n,
        "conversation_id": [None] * n,
        "prompt": [None] * n,
        "scheduler": [scheduler] * n,
        "status": ["finished"] * n,
        "admitted_s": [float(x) for x in admitted],
        "first_token_s": [float(x) for x in first],
        "finish_s": [float(x) for x in finish],
        "generated_tokens": generated,
        "preemptions": [0, 1, 0, 0],
        "waiting_at_arrival": [0] * n,
        "waiting_tokens_at_arrival": [0] * n,
        "running_at_arrival": [0] * n,
        "kv_used_at_arrival": [0.0] * n,
        "engine_seconds": [None] * n,
    }
    for name in REQUEST_SCHEMA.names:  # the columns appended since (reject_reason, ...): null
        cols.setdefault(name, [None] * n)
    return pa.Table.from_pydict(cols, schema=REQUEST_SCHEMA)


def steps_table(busy_s: float = 15.0) -> pa.Table:
    # busy 15 s of 20 s by default
    frame = pd.DataFrame(
        {name: [0, 0] for name in STEP_SCHEMA.names}
        | {"start_s": [30.0, 30 + busy_s], "duration_s": [busy_s, 20 - busy_s], "busy": [True, False]}
        | {"flops": [3e12, 0.0]}
    )
    return pa.Table.from_pandas(frame, schema=STEP_SCHEMA, preserve_index=False)


def counters_table() -> pa.Table:
    # a's counters rise over [30, 40]; b's hf is unknown (not backlogged) at 30
    rows = [(30.0, "a", 0, 0, 1.0), (30.0, "b", 0, 0, None), (35.0, "a", 10, 1, 1.2), (40.0, "a", 20, 2, 0.8)]
    return pa.Table.from_pylist([dict(zip(COUNTER_SCHEMA.names, r)) for r in rows], schema=COUNTER_SCHEMA)


def write_run(path, scheduler="vtc", kv_capacity=100, busy_s=15.0, counters=False, **config):
    atomic_write_parquet(requests_table(scheduler=scheduler), path / "requests.parquet")
    atomic_write_parquet(steps_table(busy_s), path / "steps.parquet")
    if counters:
        atomic_write_parquet(counters_table(), path / "counters.parquet")
    engine = {"kv_capacity_tokens": kv_capacity, "max_batch_tokens": 64, "block_size": 16, "preset": "test"}
    run = {"scheduler": scheduler, "workload": "hand", "seed": 42, "engine": engine}
    atomic_write_json(run | {"service_weights": {"w_p": 1, "w_q": 2}} | config, path / "run.json")
    return path


@pytest.fixture
def replay(tmp_path):
    for name in ("fcfs", "vtc"):
        write_run(tmp_path / "out" / name, scheduler=name)
    return tmp_path / "out"


def test_load_runs_from_a_replay_directory_and_a_run_directory(replay, tmp_path):
    runs = load_runs([replay])
    assert [r.name for r in runs] == ["fcfs", "vtc"]
    assert len(runs[0].requests) == 4 and runs[0].config["engine"]["kv_capacity_tokens"] == 100
    single = load_runs([replay / "vtc"])
    assert [r.name for r in single] == ["vtc"]


def test_clashing_names_are_qualified_by_the_parent(replay, tmp_path):
    write_run(tmp_path / "other" / "vtc")
    assert [r.name for r in load_runs([replay / "vtc", tmp_path / "other" / "vtc"])] == ["out/vtc", "other/vtc"]


def test_runs_are_found_at_any_depth_and_named_by_the_shortest_unique_path(tmp_path):
    # a sweep's layout: <workload>/seed-<s>/<knobs>/<scheduler>/
    for cell in ("seed-1/alpha-0/equinox", "seed-1/default/vtc", "seed-2/alpha-0/equinox", "seed-2/default/fcfs"):
        write_run(tmp_path / "sweep" / "w" / cell)
    write_run(tmp_path / "sweep" / "w" / "seed-1" / "default" / ".vtc.x1.tmp")  # an interrupted write
    names = [r.name for r in load_runs([tmp_path / "sweep"])]
    assert names == ["seed-1/alpha-0/equinox", "vtc", "seed-2/alpha-0/equinox", "fcfs"]


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="nowhere: expected a run directory or a replay output directory, found no"):
        load_runs([tmp_path / "nowhere"])


def test_file_instead_of_directory(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="x.json: expected a run directory .*, found a file"):
        load_runs([tmp_path / "x.json"])


def test_directory_without_runs(tmp_path):
    with pytest.raises(InputError, match="expected requests.parquet, steps.parquet, run.json"):
        load_runs([tmp_path])


def test_missing_file(replay):
    (replay / "vtc" / "steps.parquet").unlink()
    with pytest.raises(InputError, match=r"vtc/steps.parquet.*missing file"):
        load_runs([replay])


def test_wrong_column_type(tmp_path):
    run = write_run(tmp_path / "vtc")
    table = requests_table()
    table = table.set_column(2, "arrival_s", pa.array([str(x) for x in table["arrival_s"].to_pylist()]))
    atomic_write_parquet(table, run / "requests.parquet")
    with pytest.raises(InputError, match=r"requests.parquet: column 'arrival_s' is string; expected double"):
        load_runs([run])


def test_missing_column(tmp_path):
    run = write_run(tmp_path / "vtc")
    atomic_write_parquet(requests_table().drop_columns(["finish_s"]), run / "requests.parquet")
    with pytest.raises(InputError, match="missing column 'finish_s'"):
        load_runs([run])


def test_not_parquet(tmp_path):
    run = write_run(tmp_path / "vtc")
    (run / "steps.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="steps.parquet: expected a Parquet file"):
        load_runs([run])


def test_run_json_needs_the_kv_capacity(tmp_path):
    run = write_run(tmp_path / "vtc")
    for config in ({"scheduler": "vtc", "engine": {}}, {"engine": [1]}, [1]):
        atomic_write_json(config, run / "run.json")
        with pytest.raises(InputError, match="run.json: expected a number at engine.kv_capacity_tokens"):
            load_runs([run])


def test_audit_run_summary(replay):
    summary, series = audit_run(load_runs([replay / "vtc"])[0])
    json.dumps(summary, allow_nan=False)  # plain JSON
    assert summary["requests"] == {"total": 4, "finished": 4, "rejected": 0, "rejected_by_reason": {}, "preemptions": 1}
    # makespan 50 - 30 = 20; tokens (26 prompt + 22 output) / 20
    assert summary["throughput"]["tokens_per_s"] == pytest.approx(48 / 20)
    assert summary["utilization"]["busy_fraction"] == pytest.approx(0.75)
    assert summary["utilization"]["mfu"] is None  # run.json has no engine.peak_flops
    fair = summary["fairness"]
    # grid 30..50 every 0.25 s.  Backlogged rates: a 18 / 9 s = 2, b 15 / 5 s = 3 -> Jain 25/26.
    assert fair["jain"] == pytest.approx(25 / 26)
    # totals 40 and 30 -> 70^2 / (2 * 2500) = 0.98
    assert fair["jain_total_service"] == pytest.approx(0.98)
    # both backlogged on the grid over [31, 31.75] and [33, 35.75]; at 35.75, A_a = 11.5 and
    # A_b = 18.75 counting from 30 -> acc diff 7.25; A_a - A_b is 1 at 33 and -7.25 at 35.75 -> 8.25
    assert fair["acc_service_diff_max"] == pytest.approx(7.25)
    assert fair["pair_service_diff_max"] == pytest.approx(8.25)
    assert fair["pair_service_diff_clients"] == ["a", "b"]
    assert len(fair["series"]["t"]) == 19 == len(fair["series"]["windowed_diff"])
    # bound: 2 * max(1 * 10, 2 * 100) = 400
    assert summary["bound"]["value"] == 400 and summary["bound"]["held"] is True
    assert summary["clients"]["a"]["backlogged_rate"] == pytest.approx(2)
    assert summary["clients"]["b"]["latency"]["ttft"]["p50"] == pytest.approx(2.5)  # ttft 2 and 3
    # demanded = received: a 20 + 20, b 20 + 10 (everything finished)
    assert summary["service"] == {"demanded": 70, "received": 70, "fraction": 1}
    assert (summary["clients"]["a"]["demanded"], summary["clients"]["b"]["served_fraction"]) == (40, 1)
    # a's second request waits over [31, 40); b's longest wait is [33, 36)
    assert summary["starvation"] == {"max_s": 9, "client": "a", "from_s": 31, "to_s": 40}
    assert summary["clients"]["b"]["starvation_s"] == 3 and summary["clients"]["b"]["starvation_from_s"] == 33
    # the figures' series: the running pair difference peaks at the summary's value
    assert series["pair_diff"].max() == pytest.approx(8.25)
    assert series["acc_diff"].max() == pytest.approx(7.25)
    assert list(series["received"].columns) == ["a", "b"] and series["received"]["a"].iloc[-1] == pytest.approx(40)
    assert series["demanded"]["b"].iloc[-1] == pytest.approx(30)
    # b's TTFTs 2 and 3: p1 = 2.01, median 2.5, p99 = 2.99
    assert series["ttft_by_client"].loc["b"].tolist() == pytest.approx([2.01, 2.25, 2.5, 2.75, 2.99])
    assert series["latency_cdf"]["ttft"].iloc[[0, -1]].tolist() == [0, 9]  # ttft 0, 9 (a), 2, 3 (b)
    assert series["counters"] is None


def test_audit_reports_mfu_and_a_broken_bound(tmp_path):
    run = write_run(tmp_path / "vtc", kv_capacity=1, service_weights={"w_p": 0, "w_q": 2})
    config = json.loads((run / "run.json").read_text())
    config["engine"]["peak_flops"] = 1e12
    atomic_write_json(config, run / "run.json")
    summary = audit([run]).runs[0]
    # 3e12 FLOPs / (15 busy s * 1e12 FLOP/s) = 0.2
    assert summary["utilization"]["mfu"] == pytest.approx(0.2)
    # service 2 * generated: A_a = t - 30, A_b = 4 (t - 32) on [32, 36]; over [33, 35.75]
    # A_a - A_b = 8 - 3 (t - 30) runs from -1 to -9.25 -> 8.25 > bound 2 * max(0 * 10, 2 * 1) = 4
    assert summary["fairness"]["pair_service_diff_max"] == pytest.approx(8.25)
    assert summary["bound"]["value"] == 4 and summary["bound"]["held"] is False


def test_counters_are_loaded_and_thinned(tmp_path):
    run = write_run(tmp_path / "equinox", scheduler="equinox", counters=True)
    assert len(load_runs([run])[0].counters) == 4
    counters = audit([run]).series[0]["counters"]
    assert counters["client_id"].tolist() == ["a", "b", "a", "a"]  # one row per client per time bin, in time order
    assert counters["ufc"].tolist() == [0, 0, 10, 20] and pd.isna(counters["hf"].iloc[1])


def test_bad_counters_file(tmp_path):
    run = write_run(tmp_path / "equinox", counters=True)
    atomic_write_parquet(counters_table().drop_columns(["hf"]), run / "counters.parquet")
    with pytest.raises(InputError, match="counters.parquet: missing column 'hf'"):
        load_runs([run])


def test_baseline_deltas_match_runs_by_directory_name(tmp_path):
    for name in ("fcfs", "vtc"):
        write_run(tmp_path / "base" / name, scheduler=name)
    for name in ("fcfs", "vtc", "equinox"):
        write_run(tmp_path / "new" / name, scheduler=name, busy_s=10.0)  # busy 10 s of 20 instead of 15
    runs = audit([tmp_path / "new"], baseline=tmp_path / "base").runs
    equinox, fcfs = runs[0]["baseline"], runs[1]["baseline"]
    assert equinox["name"] is None and "no baseline run named 'equinox' (baseline has fcfs, vtc)" in equinox["reason"]
    assert fcfs["name"] == "fcfs" and fcfs["path"] == str((tmp_path / "base" / "fcfs").resolve())
    # utilization 0.75 -> 0.5: -33.3%, a regression of 33.3% (higher is better)
    util = fcfs["metrics"]["utilization"]
    assert (util["baseline"], util["value"]) == (0.75, 0.5)
    assert (util["change_pct"], util["regression_pct"]) == pytest.approx((-100 / 3, 100 / 3))
    assert fcfs["metrics"]["ttft_p99"]["change_pct"] == 0
    # a single baseline run is every run's baseline
    single = audit([tmp_path / "new"], baseline=tmp_path / "base" / "vtc").runs
    assert [r["baseline"]["name"] for r in single] == ["vtc"] * 3


def test_baseline_of_a_nested_sweep_is_the_same_cell(tmp_path):
    """Sweeps nest runs (workload/seed/knobs/scheduler): every cell is called 'equinox', so a
    baseline run is the one whose path ends in the most of the same directories."""
    for knobs, busy in (("alpha-0", 12.0), ("alpha-1", 9.0)):
        write_run(tmp_path / "old/overload/seed-1" / knobs / "equinox", scheduler="equinox", busy_s=busy)
        write_run(tmp_path / "new/overload/seed-1" / knobs / "equinox", scheduler="equinox", busy_s=busy)
    runs = audit([tmp_path / "new"], baseline=tmp_path / "old").runs
    for run in runs:
        base = run["baseline"]
        assert Path(base["path"]).parent.name == Path(run["path"]).parent.name  # alpha-0 with alpha-0
        assert base["metrics"]["utilization"]["change_pct"] == 0
    # two baseline cells that match equally well: no guess
    write_run(tmp_path / "c/x/equinox", scheduler="equinox")
    both = tmp_path / "two"
    for side in ("a", "b"):
        write_run(both / side / "x" / "equinox", scheduler="equinox")
    (run,) = audit([tmp_path / "c"], baseline=both).runs
    assert run["baseline"]["name"] is None
    assert "'equinox' matches several baseline runs equally (a/x/equinox, b/x/equinox)" in run["baseline"]["reason"]


def test_renderers(replay):
    result = audit([replay])
    assert json.loads(to_json(result))["runs"][1]["name"] == "vtc"
    md = to_markdown(result)
    assert "| metric | fcfs | vtc |" in md
    for label in ("throughput (tok/s)", "TTFT p99 (s)", "Jain (backlogged rate)", "VTC bound", "bound held?"):
        assert f"| {label} |" in md
    assert "| starvation (s) | 9.00 | 9.00 |" in md and "| service received/demanded | 100.0% | 100.0% |" in md
    assert "| fcfs | a |" in md and "| vtc | b |" in md
    assert "## Against the baseline" not in md and "## Checks" not in md and "![" not in md
    console = Console(record=True, width=240)
    render_rich(result, console)
    text = console.export_text()
    assert "Schedulers" in text and "Per client" in text and "0.9615" in text
