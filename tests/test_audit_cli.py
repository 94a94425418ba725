"""`equinox audit` as CI runs it: exit 0 when every check holds, 1 when one fails, 2 on bad input."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from test_reports_audit import write_run
from typer.testing import CliRunner

from equinox_cli.main import app

runner = CliRunner()

# The hand-built run: pair difference 0.0206x the bound, Jain 0.9615, worst client TTFT p99 8.91 s, starvation 9 s.
HOLDS = "max_service_diff = 1\nmin_jain = 0.9\nmax_ttft_p99_s = 10\nmax_starvation_s = 10\n"


def invoke(*args):
    return runner.invoke(app, ["audit", *(str(a) for a in args)])


@pytest.fixture
def replay(tmp_path):
    for name in ("fcfs", "vtc"):
        write_run(tmp_path / "runs" / name, scheduler=name)
    return tmp_path / "runs"


def policy(tmp_path, text: str):
    path = tmp_path / "audit.toml"
    path.write_text(text)
    return path


def test_policy_holds_exit_0_and_every_report_is_written(replay, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        replay, "--policy", policy(tmp_path, HOLDS), "--junit", out / "audit.xml", "--json", out / "audit.json",
        "--html", out / "report.html", "--markdown", out / "report.md",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output
    checks = json.loads((out / "audit.json").read_text())["checks"]
    assert len(checks) == 8 and {c["status"] for c in checks} == {"pass"}
    junit = ET.parse(out / "audit.xml").getroot()
    assert (junit.get("tests"), junit.get("failures")) == ("8", "0")
    assert (out / "report.html").read_text().count("<img ") == 6  # two comparisons, two figures per run
    assert len(list(out.glob("report-*.png"))) == 6


def test_a_failing_check_exits_1_with_a_one_line_reason_per_failure(replay, tmp_path):
    junit = tmp_path / "audit.xml"
    result = invoke(replay, "--policy", policy(tmp_path, "max_service_diff = 0.02\nmin_jain = 0.9\n"), "--junit", junit)
    assert result.exit_code == 1
    fails = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert fails == [
        "FAIL fcfs: pair_service_diff_max 8.2 is 0.0206x the VTC bound 400, over the allowed 0.02x",
        "FAIL vtc: pair_service_diff_max 8.2 is 0.0206x the VTC bound 400, over the allowed 0.02x",
    ]
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("4", "2")


def test_legacy_flags_and_their_override_of_the_policy(replay, tmp_path):
    assert invoke(replay, "--max-discrepancy", "1", "--min-jain", "0.9").exit_code == 0
    assert invoke(replay, "--max-discrepancy", "0.02").exit_code == 1
    assert invoke(replay, "--min-jain", "0.99").exit_code == 1
    strict = policy(tmp_path, "min_jain = 0.99\n")
    assert invoke(replay, "--policy", strict).exit_code == 1
    assert invoke(replay, "--policy", strict, "--min-jain", "0.9").exit_code == 0


def test_baseline_deltas_and_regression_gate(replay, tmp_path):
    write_run(tmp_path / "new" / "fcfs", busy_s=10.0)  # utilization 0.75 -> 0.5
    result = invoke(tmp_path / "new", "--baseline", replay, "--format", "json")
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.stdout)["runs"]
    assert run["baseline"]["name"] == "fcfs"
    assert run["baseline"]["metrics"]["utilization"]["change_pct"] == pytest.approx(-100 / 3)
    gate = policy(tmp_path, "max_regression_pct = 10\n")
    result = invoke(tmp_path / "new", "--baseline", replay, "--policy", gate)
    assert result.exit_code == 1
    assert "FAIL fcfs: regressed more than 10% against fcfs: utilization -33.3% (0.75 -> 0.5)" in result.output
    assert "Against the baseline" in result.output


@pytest.mark.parametrize(
    "args, policy_text, message",
    [
        ([], "min_jain = 0.9\nmax_jain 1", "audit.toml: expected a TOML policy: Expected '=' after a key"),
        ([], "min_jain = 0.9\nmax_jain = 1", "audit.toml: unknown key 'max_jain'"),
        ([], "min_jain = 'high'", "audit.toml: min_jain: expected a non-negative number"),
        ([], "max_regression_pct = 5", "audit.toml: max_regression_pct needs --baseline DIR"),
        (["--baseline", "nowhere"], "", "nowhere: expected a run directory or a replay output directory"),
        (["missing-run"], "", "missing-run: expected a run directory or a replay output directory, found nothing"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(replay, tmp_path, monkeypatch, args, policy_text, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = invoke(
        replay, *args, "--policy", policy(tmp_path, policy_text), "--junit", out / "a.xml", "--html", out / "r.html"
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_missing_policy_file(replay, tmp_path):
    result = invoke(replay, "--policy", tmp_path / "absent.toml")
    assert result.exit_code == 2 and "absent.toml: missing file; expected a TOML policy" in result.output
