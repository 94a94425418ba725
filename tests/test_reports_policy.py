"""The CI gate: policy files, checks with one-line reasons, and their JUnit XML."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

import pytest
from test_reports_audit import write_run

from reports.audit import audit
from reports.junit import to_junit
from reports.policy import Check, Policy, evaluate, load_policy
from traces.errors import InputError

# On the hand-built run (test_reports_audit): pair difference 8.25 against the bound 400 (0.0206x); Jain 25/26;
# TTFT a: 0 and 9 -> p99 0.99 * 9 = 8.91, b: 2 and 3 -> p99 2.99; starvation 9 s (a, from 31 to 40).
ALL = """\
max_service_diff = 0.02
min_jain = 0.9
max_ttft_p99_s = 5
max_starvation_s = 10
"""


@pytest.fixture
def replay(tmp_path):
    for name in ("fcfs", "vtc"):
        write_run(tmp_path / "out" / name, scheduler=name)
    return tmp_path / "out"


def policy_file(tmp_path, text: str):
    path = tmp_path / "audit.toml"
    path.write_text(text)
    return path


def test_load_policy(tmp_path):
    policy = load_policy(policy_file(tmp_path, ALL + 'max_regression_pct = 5.5\nregression_metrics = ["jain"]\n'))
    assert policy == Policy(
        max_service_diff=0.02,
        min_jain=0.9,
        max_ttft_p99_s=5,
        max_starvation_s=10,
        max_regression_pct=5.5,
        regression_metrics=("jain",),
    )
    assert load_policy(policy_file(tmp_path, "")) == Policy()
    assert Policy(min_jain=0.5).override(min_jain=None, max_service_diff=1) == Policy(min_jain=0.5, max_service_diff=1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("min_jain = 0.9\nmax_jain 1", r"audit.toml: expected a TOML policy: .*line 2, column 10"),
        ("max_jain = 0.9", r"audit.toml: unknown key 'max_jain'; expected one of max_service_diff, min_jain"),
        ("[gate]\nmin_jain = 0.9", r"audit.toml: unknown key 'gate'"),
        ('min_jain = "high"', r"audit.toml: min_jain: expected a non-negative number; got 'high'"),
        ("max_starvation_s = true", r"audit.toml: max_starvation_s: expected a non-negative number; got True"),
        ("max_ttft_p99_s = -1", r"audit.toml: max_ttft_p99_s: expected a non-negative number; got -1"),
        ('regression_metrics = ["speed"]', r"audit.toml: regression_metrics: expected a list of tokens_per_s, "),
        ("regression_metrics = [{ jain = 1 }]", r"audit.toml: regression_metrics: expected a list of "),
    ],
)
def test_bad_policy_names_file_and_key(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        load_policy(policy_file(tmp_path, text))


def test_missing_policy_file(tmp_path):
    with pytest.raises(InputError, match="nope.toml: missing file"):
        load_policy(tmp_path / "nope.toml")


def test_checks_pass_fail_and_skip_with_one_line_reasons(replay, tmp_path):
    runs = audit([replay]).runs
    checks = evaluate(runs, load_policy(policy_file(tmp_path, ALL + "max_regression_pct = 10\n")))
    assert [(c.run, c.name, c.status) for c in checks[:5]] == [
        ("fcfs", "service_diff", "fail"),
        ("fcfs", "jain", "pass"),
        ("fcfs", "ttft_p99", "fail"),
        ("fcfs", "starvation", "pass"),
        ("fcfs", "regression", "skip"),
    ]
    assert [c.reason for c in checks[:5]] == [
        "pair_service_diff_max 8.2 is 0.0206x the VTC bound 400, over the allowed 0.02x",
        "jain 0.9615 is at least 0.9",
        "ttft p99 of 1 of 2 clients over 5 s; worst a at 8.910 s",
        "starvation 9.000 s (a, backlogged from 31.000 s to 40.000 s) within 10 s",
        "no baseline given",
    ]
    assert checks[0].line == "fcfs: pair_service_diff_max 8.2 is 0.0206x the VTC bound 400, over the allowed 0.02x"
    assert len(checks) == 10 and checks[5].run == "vtc"
    loose = evaluate(runs, Policy(max_service_diff=1, min_jain=0.99, max_ttft_p99_s=9, max_starvation_s=8))
    assert [c.status for c in loose[:4]] == ["pass", "fail", "pass", "fail"]
    assert loose[1].reason == "jain 0.9615 is below 0.99"
    assert loose[3].reason == "starvation 9.000 s (a, backlogged from 31.000 s to 40.000 s) over 8 s"
    assert evaluate(runs, Policy()) == []


def test_undefined_jain_is_skipped(replay):
    run = copy.deepcopy(audit([replay]).runs[0])
    run["fairness"]["jain"] = None
    [check] = evaluate([run], Policy(min_jain=0.9))
    assert (check.status, check.reason) == ("skip", "jain undefined: no client was ever backlogged")


def test_regression_against_a_baseline(tmp_path):
    write_run(tmp_path / "base" / "fcfs", scheduler="fcfs")
    for name in ("fcfs", "equinox"):
        write_run(tmp_path / "new" / name, scheduler=name, busy_s=10.0)  # utilization 0.75 -> 0.5
    runs = audit([tmp_path / "new"], baseline=tmp_path / "base").runs  # a single baseline run: used for both
    [equinox, fcfs] = evaluate(runs, Policy(max_regression_pct=10))
    assert fcfs.status == "fail"
    assert fcfs.reason == "regressed more than 10% against fcfs: utilization -33.3% (0.75 -> 0.5)"
    assert equinox.status == "fail"
    assert [c.status for c in evaluate(runs, Policy(max_regression_pct=40))] == ["pass", "pass"]
    assert evaluate(runs, Policy(max_regression_pct=40))[0].reason == "no metric regressed more than 40% against fcfs"
    only_latency = Policy(max_regression_pct=10, regression_metrics=("ttft_p99", "jain"))
    assert [c.status for c in evaluate(runs, only_latency)] == ["pass", "pass"]
    write_run(tmp_path / "base" / "vtc")  # two baseline runs: matched by name, equinox has none
    runs = audit([tmp_path / "new"], baseline=tmp_path / "base").runs
    skipped = evaluate(runs, Policy(max_regression_pct=10))[0]
    assert (skipped.status, skipped.reason) == ("skip", "no baseline run named 'equinox' (baseline has fcfs, vtc)")


def test_junit_has_one_testcase_per_check_per_run():
    checks = [
        Check("fcfs", "service_diff", "fail", "pair_service_diff_max 8.2 is 0.0206x the VTC bound 400, over 0.02x"),
        Check("fcfs", "jain", "pass", "jain 0.9615 is at least 0.9"),
        Check("vtc", "service_diff", "pass", "pair_service_diff_max 8.2 is 0.0206x the VTC bound 400, within 1x"),
        Check("vtc", "regression", "skip", "no baseline given"),
    ]
    root = ET.fromstring(to_junit(checks))
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "4",
        "failures": "1",
        "errors": "0",
        "skipped": "1",
    }
    suites = root.findall("testsuite")
    assert [(s.get("name"), s.get("tests"), s.get("failures"), s.get("skipped")) for s in suites] == [
        ("fcfs", "2", "1", "0"),
        ("vtc", "2", "0", "1"),
    ]
    cases = [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]
    assert cases == [("fcfs", "service_diff"), ("fcfs", "jain"), ("vtc", "service_diff"), ("vtc", "regression")]
    failure = suites[0].find("testcase/failure")
    assert failure.get("message") == checks[0].reason and failure.text == checks[0].line
    assert suites[0].findall("testcase")[1].find("system-out").text == "fcfs: jain 0.9615 is at least 0.9"
    assert suites[1].findall("testcase")[1].find("skipped").get("message") == "no baseline given"
    assert ET.fromstring(to_junit([])).get("tests") == "0"
