"""`equinox traces convert | sample | inspect`: options, warnings, exit codes."""

import json
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from equinox_cli.main import app
from traces import workload_metadata

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["traces", *map(str, args)])


def test_convert_burstgpt_says_what_it_dropped(tmp_path):
    out = tmp_path / "burst.parquet"
    result = invoke("convert", DATA / "burstgpt_sample.csv", "--clients", "from:Model", "--out", out)
    assert result.exit_code == 0, result.output
    assert "9 requests, 2 clients" in result.output and "dropped: failed 2, zero_tokens 1" in result.output
    meta = workload_metadata(pq.read_table(out))
    assert meta["format"] == "burstgpt" and meta["options"]["clients"] == "from:Model"


def test_convert_sharegpt_all_turns_and_map(tmp_path):
    out = tmp_path / "sg.parquet"
    result = invoke(
        "convert", DATA / "sharegpt_20.json", "--turns", "all", "--think-time", "5s", "--no-text",
        "--max-prompt", "4000", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table["prompt"].null_count == table.num_rows and max(table["prompt_tokens"].to_pylist()) <= 4000
    assert workload_metadata(table)["options"]["think_time"] == 5.0
    out = tmp_path / "gw.parquet"
    mapping = "arrival=ts,prompt=in_tok,output=out_tok,client=api_key"
    result = invoke("convert", DATA / "gateway_log_sample.csv", "--map", mapping, "--out", out)
    assert result.exit_code == 0, result.output
    assert set(pq.read_table(out)["client_id"].to_pylist()) == {"team-search", "team-ads", "team-chat"}


def test_convert_shards(tmp_path):
    shard = DATA / "lmsys_chat_1m_sample.parquet"
    result = invoke("convert", shard, shard, "--clients", "from:model", "--out", tmp_path / "l.parquet")
    assert result.exit_code == 0, result.output
    assert "14 requests, 4 clients" in result.output


def test_sample_and_inspect(tmp_path):
    whole, part = tmp_path / "whole.parquet", tmp_path / "part.parquet"
    assert invoke("convert", DATA / "sharegpt_20.json", "--out", whole).exit_code == 0
    result = invoke("sample", whole, "--rate", 2, "--duration", "4s", "--clients", 3, "--seed", 1, "--out", part)
    assert result.exit_code == 0, result.output
    table = pq.read_table(part)
    assert max(table["arrival_s"].to_pylist()) < 4 and len(set(table["client_id"].to_pylist())) <= 3
    meta = workload_metadata(table)
    assert meta["options"]["shuffle"] and meta["upstream"]["format"] == "sharegpt"
    png = tmp_path / "part.png"
    result = invoke("inspect", part, "--png", png)
    assert result.exit_code == 0, result.output
    assert f"{table.num_rows} requests" in result.output and "prompt_tokens" in result.output
    assert "provenance" in result.output and png.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads(invoke("inspect", part, "--json").stdout)
    assert summary["rows"] == table.num_rows and summary["provenance"]["options"]["seed"] == 1


def test_truncated_file_warns_and_converts(tmp_path):
    cut = tmp_path / "cut.json"
    cut.write_bytes((DATA / "sharegpt_20.json").read_bytes()[:60_000])
    result = invoke("convert", cut, "--out", tmp_path / "cut.parquet")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "truncated JSON at byte 60000" in result.output


def test_bad_input_exits_2_without_output(tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text("not json at all")
    for args in (
        ["convert", notes, "--out", tmp_path / "x.parquet"],
        ["convert", DATA / "burstgpt_sample.csv", "--clients", "from:user", "--out", tmp_path / "x.parquet"],
        ["convert", DATA / "burstgpt_sample.csv", "--duration", "soon", "--out", tmp_path / "x.parquet"],
        ["sample", DATA / "burstgpt_sample.csv", "--out", tmp_path / "x.parquet"],
        ["inspect", tmp_path / "missing.parquet"],
    ):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "x.parquet").exists()
