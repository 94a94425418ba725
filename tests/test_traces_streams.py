"""Streaming reads: the incremental JSON parser, JSON Lines, truncated and malformed files."""

import json
import warnings
from pathlib import Path

import pytest

import traces.streams as streams
from traces import InputError, TraceWarning, load_sharegpt, load_workload, workload_metadata
from traces.streams import iter_json_array, iter_jsonl

DATA = Path(__file__).parent / "data"
SHAREGPT = DATA / "sharegpt_20.json"
RECORDS = [
    {"text": "héllo ✓ 𝄞 " * 20, "big": 12345678901234, "small": -1.5e-7, "flags": [True, False, None], "n": {"a": []}}
    for _ in range(30)
] + [12345, "tail", True, None]


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(streams, "CHUNK_BYTES", 7)  # every value and character spans chunk boundaries


def test_incremental_parser_matches_json_load(tmp_path, tiny_chunks):
    path = tmp_path / "records.json"
    path.write_text(json.dumps(RECORDS, ensure_ascii=False, indent=1))
    assert list(iter_json_array(path)) == RECORDS
    path.write_text("  [ ]  ")
    assert list(iter_json_array(path)) == []


def test_incremental_parser_on_sharegpt(tiny_chunks):
    assert list(iter_json_array(SHAREGPT)) == json.loads(SHAREGPT.read_text())


@pytest.mark.parametrize("cut", [1200, 1201, 1203, 2999, 5000])
def test_truncated_array_keeps_whole_records_and_warns(tmp_path, tiny_chunks, cut):
    raw = json.dumps(RECORDS, ensure_ascii=False).encode()
    path = tmp_path / "cut.json"
    path.write_bytes(raw[:cut])
    with pytest.warns(TraceWarning, match=rf"truncated JSON at byte {cut}: .*kept the (\d+) whole records") as caught:
        records = list(iter_json_array(path))
    assert records == RECORDS[: len(records)] and len(records) >= 1
    assert f"kept the {len(records)} whole records" in str(caught[0].message)


def test_truncated_sharegpt_loads_what_precedes_the_cut(tmp_path):
    raw = SHAREGPT.read_bytes()
    path = tmp_path / "cut.json"
    path.write_bytes(raw[:60_000])
    with pytest.warns(TraceWarning, match=f"{path}: truncated JSON at byte 60000"):
        table = load_sharegpt(path)
    whole = sum(1 for _ in json.loads(raw)[: table.num_rows])
    assert table.num_rows == whole and table.num_rows >= 3
    assert table["conversation_id"].to_pylist() == [c["id"] for c in json.loads(raw)[: table.num_rows]]


def test_truncated_before_the_first_record_is_an_error(tmp_path):
    path = tmp_path / "cut.json"
    path.write_bytes(SHAREGPT.read_bytes()[:1000])
    with pytest.raises(InputError, match=r"truncated JSON at byte 1000: the file ends before the end of its first"):
        load_workload(path)


def test_not_json_at_all(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text("these are notes, not a trace")
    with pytest.raises(InputError, match="expected a JSON list of conversations"):
        load_workload(path)
    path.write_bytes(b"[" + bytes(range(128, 256)))
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte 1\)"):
        load_workload(path)


def test_invalid_record_names_record_and_byte(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"id": "a", "conversations": []},\n {"id": "b", "conversations": [} ]')
    with pytest.raises(InputError) as info:
        load_workload(path)
    assert info.value.row == 2 and "invalid JSON at byte 66: Expecting value" in str(info.value)


def test_jsonl_truncated_last_line_warns(tmp_path):
    path = tmp_path / "trace.jsonl"
    lines = (DATA / "mooncake_sample.jsonl").read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:4]) + lines[4][:30])
    with pytest.warns(TraceWarning, match=r"truncated JSON at byte \d+: .*kept the 4 whole records"):
        table = load_workload(path)
    assert table.num_rows == 4 and workload_metadata(table)["rows_read"] == 4
    assert "truncated JSON" in workload_metadata(table)["warnings"][0]


def test_jsonl_bad_line_names_line_and_byte(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n')
    with pytest.raises(InputError) as info:
        list(iter_jsonl(path))
    assert info.value.row == 3 and "invalid JSON (byte 18)" in str(info.value)


def test_progress_reports_bytes(tmp_path):
    seen = []
    table = load_workload(SHAREGPT, progress=lambda done, total: seen.append((done, total)))
    size = SHAREGPT.stat().st_size
    assert table.num_rows == 19 and seen[-1] == (size, size)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_no_warning_for_a_whole_file():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_workload(SHAREGPT)
