"""Issue 18, item 5: bad options, paths and inputs that used to give a traceback (exit 1) or were
accepted silently: each is now one line on stderr, exit code 2, and nothing written."""

from __future__ import annotations

import os

import pytest
from test_reports_audit import write_run
from typer.testing import CliRunner

from equinox_cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def assert_one_line_error(result, message):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0], lines[0]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--kv-capacity", "0"], "--kv-capacity: expected an integer >= 1, got 0"),
        (["--kv-capacity", "-5"], "--kv-capacity: expected an integer >= 1, got -5"),
        (["--kv-capacity", "5"], "expected at least one KV block (16 tokens), got 5"),
        (["--max-running", "0"], "--max-running: expected an integer >= 1, got 0"),
        (["--max-batch-tokens", "0"], "--max-batch-tokens: expected an integer >= 1, got 0"),
        (["--alpha", "nan"], "--alpha: expected a number >= 0, got nan"),
        (["--w-q", "-1"], "--w-q: expected a number >= 0, got -1.0"),
        (["--w-p", "0", "--w-q", "0"], "a request would cost nothing"),
        (["--clients", "from:nope"], "from:nope takes clients from a column of a trace file"),
    ],
)
def test_replay_refuses_bad_engine_and_price_options(tmp_path, options, message):
    result = invoke("replay", "--scheduler", "fcfs", "--out", tmp_path / "out", *options)
    assert_one_line_error(result, message)
    assert files_under(tmp_path) == []


def test_replay_out_at_a_file_or_under_one(tmp_path):
    (tmp_path / "file").write_text("keep")
    result = invoke("replay", "-s", "fcfs", "--out", tmp_path / "file")
    assert_one_line_error(result, "is a file; expected a directory")
    result = invoke("replay", "-s", "fcfs", "--out", tmp_path / "file" / "sub")
    assert_one_line_error(result, f"{tmp_path / 'file'} is a file, so no directory can be created under it")
    assert files_under(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "keep"


def test_traces_convert_and_synth_out_at_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    for args in (["traces", "synth", "overload"], ["traces", "convert", "lmsys"]):
        result = invoke(*args, "--out", tmp_path / "d")
        assert_one_line_error(result, "is a directory; expected a file name")
    assert files_under(tmp_path) == []


def test_traces_inspect_png_under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    result = invoke("traces", "inspect", "overload", "--png", tmp_path / "file" / "x.png")
    assert_one_line_error(result, "is a file, so nothing can be written under it")
    assert files_under(tmp_path) == ["file"]


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "runs" / "vtc")


@pytest.mark.parametrize("option", ["--out", "--json", "--junit", "--html", "--markdown"])
def test_audit_outputs_at_a_directory_or_under_a_file(run, tmp_path, option):
    (tmp_path / "d").mkdir()
    (tmp_path / "file").write_text("")
    before = files_under(tmp_path)
    assert_one_line_error(invoke("audit", run, option, tmp_path / "d"), "is a directory; expected a file name")
    result = invoke("audit", run, option, tmp_path / "file" / "report.x")
    assert_one_line_error(result, "is a file, so nothing can be written under it")
    assert files_under(tmp_path) == before


def test_audit_of_a_parquet_file_with_damaged_pages(run, tmp_path):
    path = run / "requests.parquet"
    data = bytearray(path.read_bytes())
    for i in range(8, len(data) // 4, 7):  # the footer (schema) survives, the pages do not
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    result = invoke("audit", run, "--json", tmp_path / "audit.json")
    assert_one_line_error(result, f"{path}: cannot read its data (damaged Parquet file?)")
    assert not (tmp_path / "audit.json").exists()


def test_serve_with_a_model_path_that_does_not_exist(tmp_path):
    result = invoke("serve", "--model", tmp_path / "nonexistent", "--log-dir", tmp_path / "logs")
    assert_one_line_error(result, "no such model directory")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "body, message",
    [
        ("0,a,0.0,10,10\n0,b,1.0,10,10\n", "row 2: request_id 0 repeats row 1's; request ids must be unique"),
        ("0,a,0.0,1180591620717411303424,10\n", "row 1: prompt_tokens must be a non-negative integer below 2^53"),
    ],
)
def test_canonical_trace_with_duplicate_ids_or_a_huge_token_count(tmp_path, body, message):
    trace = tmp_path / "trace.csv"
    trace.write_text("request_id,client_id,arrival_s,prompt_tokens,output_tokens\n" + body)
    result = invoke("traces", "convert", trace, "--out", tmp_path / "out.parquet")
    assert_one_line_error(result, message)
    assert files_under(tmp_path) == ["trace.csv"]


def test_a_huge_token_count_in_json_lines(tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        '{"request_id": 0, "client_id": "a", "arrival_s": 0, "prompt_tokens": 1180591620717411303424, '
        '"output_tokens": 3}\n'
    )
    result = invoke("replay", "--workload", trace, "--out", tmp_path / "out")
    assert_one_line_error(result, "prompt_tokens must be a non-negative integer below 2^53")
    assert files_under(tmp_path) == ["trace.jsonl"]
