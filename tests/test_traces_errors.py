"""Bad inputs give an InputError naming the file, the 1-based data row and what was expected."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from traces import InputError, load_sharegpt, load_workload, synthesize

DATA = Path(__file__).parent / "data"
AZURE = DATA / "azure_conv_50.csv"
VTC = DATA / "vtc_lmsys_30.csv"
SHAREGPT = DATA / "sharegpt_20.json"


def _edit_csv(tmp_path, source, row, column, value):
    """A copy of ``source`` with data row ``row`` (1-based) cell ``column`` set to ``value``."""
    lines = source.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    path = tmp_path / source.name
    path.write_text("\n".join(lines) + "\n")
    return path


def _error(source, **options) -> InputError:
    with pytest.raises(InputError) as info:
        load_workload(source, **options)
    return info.value


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    err = _error(path)
    assert str(path) in str(err) and "no such file" in str(err)


def test_unknown_name_suggests_the_names():
    err = _error("overlaod")
    assert "not a workload name" in str(err) and "overload" in str(err) and "lmsys" in str(err)


def test_truncated_json(tmp_path):
    path = tmp_path / "cut.json"
    path.write_bytes(SHAREGPT.read_bytes()[:1000])
    err = _error(path)
    assert str(err).startswith(f"{path}: truncated JSON at byte 1000")


def test_invalid_json_names_the_byte(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"id": "a", "conversations": []} oops]')
    err = _error(path)
    assert "invalid JSON at byte 34" in str(err) and "delimiter" in str(err)


def test_sharegpt_bad_conversation_names_the_row(tmp_path):
    path = tmp_path / "shape.json"
    path.write_text('[{"id": "a", "conversations": []}, {"id": "b", "conversations": [{"from": "human"}]}]')
    err = _error(path)
    assert err.row == 2 and "row 2" in str(err) and '"value": <text>' in str(err)
    path.write_text('{"id": "a"}')
    assert "expected a JSON list of conversations" in str(_error(path))


def test_sharegpt_without_any_turn(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text('[{"id": "a", "conversations": [{"from": "gpt", "value": "hi"}]}]')
    assert "no requests" in str(_error(path))


def test_missing_column(tmp_path):
    path = tmp_path / "azure.csv"
    lines = [",".join(line.split(",")[:2]) for line in AZURE.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    err = _error(path, format="azure")
    assert "missing column(s) GeneratedTokens" in str(err) and str(path) in str(err)


def test_wrong_format_override_names_the_missing_columns():
    err = _error(VTC, format="azure")
    assert "missing column(s) TIMESTAMP, ContextTokens, GeneratedTokens" in str(err)


def test_negative_length_names_the_row(tmp_path):
    path = _edit_csv(tmp_path, VTC, 7, "prompt_len", "-5")
    err = _error(path)
    assert err.row == 7
    assert str(err) == f"{path}, row 7: prompt_len must be a non-negative integer, got '-5'"


def test_fractional_tokens_name_the_row(tmp_path):
    path = _edit_csv(tmp_path, AZURE, 20, "GeneratedTokens", "12.5")
    assert "row 20: GeneratedTokens must be a non-negative integer, got '12.5'" in str(_error(path))


def test_non_numeric_time_names_the_row(tmp_path):
    path = _edit_csv(tmp_path, VTC, 12, "req_time", "soon")
    assert "row 12: req_time must be a non-negative number, got 'soon'" in str(_error(path))


def test_bad_timestamp_names_the_row(tmp_path):
    path = _edit_csv(tmp_path, AZURE, 3, "TIMESTAMP", "yesterday")
    err = _error(path)
    assert err.row == 3 and "TIMESTAMP must be a date and time" in str(err) and "'yesterday'" in str(err)


def test_empty_cell_names_the_row(tmp_path):
    path = _edit_csv(tmp_path, VTC, 30, "output_len", "")
    assert "row 30: output_len must be a non-negative integer, got ''" in str(_error(path))


def test_ragged_csv_names_the_row(tmp_path):
    path = tmp_path / "ragged.csv"
    lines = VTC.read_text().splitlines()
    lines[5] += ",extra"
    path.write_text("\n".join(lines) + "\n")
    err = _error(path)
    assert err.row == 5 and "malformed CSV" in str(err)


def test_unrecognised_csv(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    err = _error(path)
    assert "unrecognised workload file" in str(err) and "found header 'a,b'" in str(err)


def test_binary_garbage_is_an_input_error(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes(range(256)) * 4)
    assert "unrecognised workload file" in str(_error(path))
    path = tmp_path / "noise.parquet"
    path.write_bytes(b"PAR1" + bytes(100))
    assert "not a readable Parquet file" in str(_error(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert "empty file" in str(_error(path))


def test_canonical_zero_output_names_the_row(tmp_path):
    table = synthesize("overload").to_pandas()
    table.loc[3, "output_tokens"] = 0
    path = tmp_path / "w.csv"
    table.to_csv(path, index=False)
    err = _error(path)
    assert err.row == 4 and "output_tokens must be an integer >= 1, got 0" in str(err)


def test_canonical_parquet_missing_column(tmp_path):
    path = tmp_path / "w.parquet"
    pq.write_table(synthesize("overload").drop_columns(["arrival_s"]), path)
    assert "missing column(s) arrival_s" in str(_error(path))


@pytest.mark.parametrize(
    "options, source",
    [
        ({"format": "excel"}, "format"),
        ({"clients": 0}, "clients"),
        ({"client_dist": "pareto"}, "client_dist"),
        ({"rate": -1.0}, "rate"),
        ({"arrival": "burst"}, "arrival"),
        ({"cv": 0.0, "arrival": "gamma"}, "cv"),
        ({"time_scale": 0.0}, "time_scale"),
        ({"limit": 0}, "limit"),
        ({"tokenizer": "llama"}, "tokenizer"),
    ],
)
def test_bad_options_name_the_option(options, source):
    assert _error(SHAREGPT, **options).source == source


def test_raw_loader_errors_too(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_sharegpt(tmp_path / "missing.json")


def test_untokenizable_text_names_the_conversation(tmp_path):
    path = tmp_path / "huge.json"
    huge = [{"from": "human", "value": "x " * 600_000}, {"from": "gpt", "value": "ok"}]
    small = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]
    data = [{"id": k, "conversations": turns} for k, turns in (("a", small), ("b", []), ("c", huge))]
    path.write_text(json.dumps(data))
    err = _error(path)
    assert err.row == 3 and "cannot be tokenized" in str(err) and str(path) in str(err)
