"""The `equinox` command: exit codes, one-line errors, no partial output."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from equinox_cli.main import app

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "runs"
    result = invoke("replay", "--workload", "overload", "--scheduler", "fcfs,vtc", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_replay_then_audit_json(runs):
    result = invoke("audit", runs, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {r["name"] for r in report["runs"]} == {"fcfs", "vtc"}


def test_audit_gates_exit_1_naming_run_and_metric(runs):
    result = invoke("audit", runs, "--max-discrepancy", "1", "--format", "markdown")
    assert result.exit_code == 1
    assert "fcfs" in result.output and "pair_service_diff" in result.output
    assert "FAIL vtc" not in result.output  # VTC holds its bound
    assert invoke("audit", runs / "vtc", "--max-discrepancy", "1", "--format", "json").exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["replay", "--scheduler", "vtc,nope"], "unknown scheduler 'nope'"),
        (["replay", "--workload", "no-such-workload"], "no-such-workload"),
        (["replay", "--workload", "missing.parquet"], "missing.parquet"),
        (["replay", "--workload", "truncated.json"], "truncated JSON"),
        (["replay", "--preset", "tpu-v9"], "tpu-v9"),
        (["audit", "nowhere"], "nowhere"),
        (["traces", "synth", "overlode", "--out", "x.parquet"], "overlode"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "truncated.json").write_bytes((DATA / "sharegpt_20.json").read_bytes()[:5000])
    result = invoke(*args, *(["--out", tmp_path / "out"] if args[0] == "replay" else []))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.parquet").exists()


def test_traces_synth_and_convert(tmp_path):
    result = invoke("traces", "synth", "on-off-less", "--out", tmp_path / "w.parquet")
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "w.parquet").num_rows == 150 + 1200
    result = invoke("traces", "convert", DATA / "azure_conv_50.csv", "--clients", 4, "--out", tmp_path / "a.parquet")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.num_rows == 50 and set(table.column("client_id").to_pylist()) <= {f"client-{i}" for i in range(4)}


def test_listings_name_every_scheduler_and_preset():
    out = invoke("schedulers").output
    assert all(name in out for name in ("fcfs", "vtc", "lcf", "vtc-predict", "vtc-oracle", "rpm"))
    assert "vtc-a10g-llama2-7b" in invoke("presets").output


def test_audit_first_screen_says_in_words_who_kept_the_bound(runs):
    result = invoke("audit", runs)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "VTC bound kept by vtc; broken by fcfs."
    text = " ".join(result.output.split())
    assert "fcfs: broke the bound: largest service gap between two backlogged clients" in text
    assert "vtc: kept the bound" in text and "mean TTFT from" in text


def test_replay_into_an_out_holding_another_workload_says_so_and_the_audit_refuses(tmp_path):
    out = tmp_path / "m"
    assert invoke("replay", "--workload", "overload", "-s", "fcfs", "--out", out).exit_code == 0
    result = invoke("replay", "--workload", "on-off-less", "-s", "vtc", "--out", out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"warning: {out} already holds runs of another workload: fcfs (overload, fingerprint " in text
    audit = invoke("audit", out)
    assert audit.exit_code == 2 and "the runs replayed different workloads, fcfs: overload" in audit.output
    assert invoke("audit", out, "--allow-mixed").exit_code == 0
