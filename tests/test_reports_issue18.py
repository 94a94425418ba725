"""Issue 18 on the audit side: mixed workloads refused, the VTC bound over served requests only, the
artifact's window placement, Jain over mean TTFT and over engine-seconds, rejections by reason, the
prefix-cache hit rate, the verdict in words, tables that fit 80 columns, and enough digits in a FAIL."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from rich.console import Console
from test_reports_audit import requests_table, write_run
from typer.testing import CliRunner

from engine.results import atomic_write_parquet
from equinox_cli.main import app
from reports.audit import audit, audit_run, load_runs
from reports.policy import _jain
from reports.tables import render_rich, verdict
from traces.errors import InputError

runner = CliRunner()


def newer_requests() -> pa.Table:
    """The hand-built run plus two rejected requests, with the columns newer engines write.

    The rejected prompt of 1,000 tokens is longer than any served one (10), so a bound over every
    row would be 2 * max(1000, 2 * 100) = 2,000 instead of 400."""
    served = requests_table()
    rejected = {
        name: [None, None] for name in served.schema.names
    } | {
        "request_id": [4, 5], "client_id": ["b", "a"], "arrival_s": [34.0, 35.0], "prompt_tokens": [1000, 3],
        "output_tokens": [5, 5], "weight": [1.0, 1.0], "scheduler": ["vtc"] * 2, "status": ["rejected"] * 2,
        "generated_tokens": [0, 0], "preemptions": [0, 0],
    }  # fmt: skip
    table = pa.concat_tables([served, pa.Table.from_pydict(rejected, schema=served.schema)])
    extra = {
        "reject_reason": pa.array([None] * 4 + ["too_long", "rate_limit"], pa.string()),
        "cached_prompt_tokens": pa.array([5, 0, 0, 2, 0, 0], pa.int64()),
        "prefix_hashes": pa.nulls(6, pa.list_(pa.int64())),
        # a's first request and b's two: 1 engine-second each, b's first 2
        "engine_seconds": pa.array([1.0, 1.0, 2.0, 1.0, None, None], pa.float64()),
    }
    for name, column in extra.items():  # replace the column where the schema already has it
        if name in table.schema.names:
            table = table.set_column(table.schema.get_field_index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table


@pytest.fixture
def newer(tmp_path):
    run = write_run(tmp_path / "new" / "vtc")
    atomic_write_parquet(newer_requests(), run / "requests.parquet")
    return run


def test_bound_counts_served_requests_only(newer):
    summary, _ = audit_run(load_runs([newer])[0])
    assert summary["bound"]["value"] == 400  # 2 * max(10, 2 * 100): the rejected 1,000-token prompt is left out
    assert summary["bound"]["max_prompt_tokens"] == 10 and summary["bound"]["excluded_requests"] == 2


def test_rejections_by_reason_overall_and_per_client(newer):
    summary, _ = audit_run(load_runs([newer])[0])
    assert summary["requests"]["rejected_by_reason"] == {"rate_limit": 1, "too_long": 1}
    assert summary["clients"]["a"]["rejected_by_reason"] == {"rate_limit": 1}
    assert summary["clients"]["b"]["rejected_by_reason"] == {"too_long": 1}


def test_prefix_cache_hit_rate_overall_and_per_client(newer):
    summary, _ = audit_run(load_runs([newer])[0])
    # served prompts: a 10 + 10 with 5 cached, b 4 + 2 with 2 cached
    assert summary["prefix_cache"]["hit_rate"] == pytest.approx(7 / 26)
    assert summary["clients"]["a"]["cache_hit_rate"] == pytest.approx(5 / 20)
    assert summary["clients"]["b"]["cache_hit_rate"] == pytest.approx(2 / 6)


def test_jain_over_mean_ttft(newer):
    fair = audit_run(load_runs([newer])[0])[0]["fairness"]
    # mean TTFT: a (0 + 9) / 2 = 4.5, b (2 + 3) / 2 = 2.5 -> 7^2 / (2 * (4.5^2 + 2.5^2)) = 49 / 53
    assert fair["jain_ttft"] == pytest.approx(49 / 53)


def test_jain_over_engine_seconds_while_backlogged(newer):
    summary, _ = audit_run(load_runs([newer])[0])
    # a is backlogged over [31, 40): its first request's 1 engine-second spreads over [30, 40], 0.9 of it
    # in those 9 s -> 0.1/s.  b is backlogged over [30, 32) and [33, 36): its first request's 2 spread over
    # [32, 36] give 1.5 in [33, 36], in 5 s -> 0.3/s.  Jain (0.4)^2 / (2 * (0.01 + 0.09)) = 0.8
    assert summary["clients"]["a"]["backlogged_engine_rate"] == pytest.approx(0.1)
    assert summary["clients"]["b"]["backlogged_engine_rate"] == pytest.approx(0.3)
    assert summary["fairness"]["jain_resource"] == pytest.approx(0.8)
    assert summary["fairness"]["jain"] == pytest.approx(25 / 26)  # the service rate's Jain is unchanged
    assert summary["notes"] == []


def test_an_older_run_without_the_new_columns_says_what_it_cannot_compute(tmp_path):
    summary, _ = audit_run(load_runs([write_run(tmp_path / "vtc")])[0])
    assert summary["fairness"]["jain_resource"] is None and summary["prefix_cache"] is None
    assert summary["fairness"]["jain_ttft"] == pytest.approx(49 / 53)
    assert [note.split(":")[0] for note in summary["notes"]] == ["jain_resource", "prefix_cache"]


def test_nothing_served_has_no_bound(tmp_path):
    run = write_run(tmp_path / "vtc")
    table = requests_table()
    for name in ("admitted_s", "first_token_s", "finish_s"):
        table = table.set_column(table.schema.get_field_index(name), name, pa.nulls(4, pa.float64()))
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(["rejected"] * 4))
    atomic_write_parquet(table, run / "requests.parquet")
    result = audit([run])
    assert result.runs[0]["bound"]["value"] is None and result.runs[0]["bound"]["held"] is None
    assert "vtc: served nothing, so no bound applies" in verdict(result)[0]


def test_mixed_workloads_are_refused_naming_runs_and_fingerprints(tmp_path):
    write_run(tmp_path / "m" / "fcfs", workload={"name": "on-off-less", "fingerprint": "7d02a871390d3d64"})
    write_run(tmp_path / "m" / "vtc", workload={"name": "overload", "fingerprint": "bb0b34f28e51249f"})
    with pytest.raises(InputError) as err:
        audit([tmp_path / "m"])
    assert str(err.value) == (
        "audit: the runs replayed different workloads, fcfs: on-off-less (fingerprint 7d02a871390d3d64); "
        "vtc: overload (fingerprint bb0b34f28e51249f); audit each workload on its own, or pass --allow-mixed"
    )
    assert [r["workload_fingerprint"] for r in audit([tmp_path / "m"], allow_mixed=True).runs] == [
        "7d02a871390d3d64",
        "bb0b34f28e51249f",
    ]
    json_out = tmp_path / "audit.json"
    result = runner.invoke(app, ["audit", str(tmp_path / "m"), "--json", str(json_out)])
    assert result.exit_code == 2 and not json_out.exists()
    assert [line for line in result.output.splitlines() if line] == ["error: " + str(err.value)]
    assert runner.invoke(app, ["audit", str(tmp_path / "m"), "--allow-mixed"]).exit_code == 0


def test_vtc_windows_places_the_centres_over_30_to_600_s(tmp_path):
    run = write_run(tmp_path / "vtc")
    default = audit([run]).runs[0]["fairness"]
    artifact = audit([run], vtc_windows=True).runs[0]["fairness"]
    # the last served arrival is at 33 s: centres 30 + 3 i / 20; with --vtc-windows 30 + 570 i / 20
    assert default["windowed_diff"]["placement"] == "last-arrival" and default["windowed_diff"]["horizon_s"] == 33
    assert default["series"]["t"][0] == pytest.approx(30.15) and default["series"]["t"][-1] == pytest.approx(32.85)
    assert artifact["windowed_diff"]["placement"] == "vtc-artifact" and artifact["windowed_diff"]["horizon_s"] == 600
    assert artifact["series"]["t"][0] == pytest.approx(58.5) and artifact["series"]["t"][-1] == pytest.approx(571.5)
    out = runner.invoke(app, ["audit", str(run), "--vtc-windows"]).output
    assert "19 centres over [30 s, 600 s], as the VTC artifact's revision tables" in " ".join(out.split())


def test_a_jain_just_below_the_limit_is_printed_with_the_digits_that_show_it():
    assert _jain({"fairness": {"jain": 0.89999}}, 0.9, None) == ("fail", "jain 0.89999 is below 0.9")
    assert _jain({"fairness": {"jain": 0.8999999999}}, 0.9, None)[1] == "jain 0.8999999999 is below 0.9"
    assert _jain({"fairness": {"jain": 0.95}}, 0.9, None) == ("pass", "jain 0.9500 is at least 0.9")


def test_per_client_tables_fit_80_columns_without_truncation(tmp_path):
    base = requests_table().to_pylist()[0]
    rows = [base | {"request_id": i, "client_id": f"tenant-{i:02d}", "arrival_s": 30.0 + i} for i in range(12)]
    run = write_run(tmp_path / "a-rather-long-run-name")
    atomic_write_parquet(pa.Table.from_pylist(rows, schema=requests_table().schema), run / "requests.parquet")
    result = audit([run])
    buffer = io.StringIO()
    render_rich(result, Console(file=buffer, width=80, color_system=None))
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert "Per client (1/2)" in text and "Per client (2/2)" in text
    assert text.count("│ tenant-11 │") == 2  # each part repeats the run and client columns


def test_sweep_cells_named_by_their_paths_may_hold_different_workloads(tmp_path):
    write_run(tmp_path / "s" / "overload" / "seed-1" / "vtc", workload={"name": "overload", "fingerprint": "aa"})
    write_run(tmp_path / "s" / "on-off-less" / "seed-1" / "vtc", workload={"name": "on-off-less", "fingerprint": "bb"})
    names = [r["name"] for r in audit([tmp_path / "s"]).runs]
    assert names == ["on-off-less/seed-1/vtc", "overload/seed-1/vtc"]
    # a run named by its last directory alone ("fcfs") hides which workload it replayed: refused
    write_run(tmp_path / "t" / "fcfs", workload={"name": "overload", "fingerprint": "aa"})
    with pytest.raises(InputError, match="different workloads"):
        audit([tmp_path / "t" / "fcfs", tmp_path / "s" / "on-off-less" / "seed-1" / "vtc"])
