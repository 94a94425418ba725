"""Loaders on small slices of the real traces (tests/data), and the load_workload pipeline."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from traces import (
    DEFAULT_CLIENTS,
    WORKLOAD_SCHEMA,
    assign_arrivals,
    assign_clients,
    detect_format,
    get_tokenizer,
    load_sharegpt,
    load_workload,
    synthesize,
    workload_metadata,
)

DATA = Path(__file__).parent / "data"
AZURE = DATA / "azure_conv_50.csv"
VTC = DATA / "vtc_lmsys_30.csv"
SHAREGPT = DATA / "sharegpt_20.json"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_detect_format():
    assert detect_format(AZURE) == "azure"
    assert detect_format(VTC) == "vtc-lmsys"
    assert detect_format(SHAREGPT) == "sharegpt"


def test_azure_slice():
    table = load_workload(AZURE)
    assert table.schema.equals(WORKLOAD_SCHEMA)
    df = table.to_pandas()
    assert len(df) == 50
    # rows 1-2: 18:15:46.6805900 and 18:15:50.9951690 -> 0 and 4.314579 s
    assert df.arrival_s.iloc[0] == 0.0
    assert df.arrival_s.iloc[1] == pytest.approx(4.314579, abs=1e-6)
    # last row 18:16:13.1417340 is 26.461144 s after the first
    assert df.arrival_s.iloc[-1] == pytest.approx(26.461144, abs=1e-6)
    assert (df.prompt_tokens.iloc[0], df.output_tokens.iloc[0]) == (374, 44)
    assert set(df.client_id) <= {f"client-{k}" for k in range(DEFAULT_CLIENTS)}
    meta = workload_metadata(table)
    assert meta["format"] == "azure" and meta["clients_drawn"]["count"] == DEFAULT_CLIENTS
    assert meta["dropped"] == {"zero_tokens": 0}


def test_azure_zero_tokens_are_dropped_and_counted(tmp_path):
    rows = AZURE.read_text().splitlines()
    rows[3] = rows[3].rsplit(",", 1)[0] + ",0"  # data row 3: GeneratedTokens 0
    path = tmp_path / "zero.csv"
    path.write_text("\n".join(rows) + "\n")
    table = load_workload(path)
    assert table.num_rows == 49
    assert workload_metadata(table)["dropped"] == {"zero_tokens": 1}


def test_vtc_slice():
    df = load_workload(VTC).to_pandas()
    assert len(df) == 30
    assert df.client_id.iloc[1] == "dummy-lora-7b-rank-8-2"
    assert df.arrival_s.iloc[1] == 0.20793754160099873
    assert (df.prompt_tokens.iloc[2], df.output_tokens.iloc[2]) == (456, 156)
    assert df.client_id.nunique() == 7 and (df.client_id == "dummy-lora-7b-rank-8-0").sum() == 17


def test_lmsys_name_loads_the_vtc_trace():
    table = load_workload("lmsys")
    df = table.to_pandas()
    assert len(df) == 1500 and df.client_id.nunique() == 27
    assert df.arrival_s.min() == 0 and df.arrival_s.max() <= 600
    assert Path(workload_metadata(table)["source"]).name == "vtc_lmsys_real_trace.csv"


def test_bundled_lmsys_copy_matches_shared():
    bundled = Path(__file__).resolve().parents[1] / "traces" / "data" / "vtc_lmsys_real_trace.csv"
    assert load_workload(bundled).num_rows == 1500
    shared = SHARED / "vtc-lmsys" / "vtc_lmsys_real_trace.csv"
    if not shared.exists():
        pytest.skip("../shared/data not present")
    assert bundled.read_bytes() == shared.read_bytes()


def test_sharegpt_first_turns():
    conversations = json.loads(SHAREGPT.read_text())
    table = load_workload(SHAREGPT)
    df = table.to_pandas().sort_values("request_id")
    # 19 conversations have a human -> gpt turn; the 20th is empty
    assert len(df) == 19
    assert list(df.conversation_id) == [c["id"] for c in conversations[:19]]
    # conversation 5 opens with a gpt message: its turn is messages 2 and 3
    turns = conversations[4]["conversations"]
    assert turns[0]["from"] == "gpt"
    row = df[df.conversation_id == conversations[4]["id"]].iloc[0]
    count = get_tokenizer().count
    assert row.prompt == turns[1]["value"]
    assert (row.prompt_tokens, row.output_tokens) == (count(turns[1]["value"]), count(turns[2]["value"]))
    meta = workload_metadata(table)
    assert meta["dropped"] == {"no_human_gpt_turn": 1, "empty_text": 0}
    assert meta["tokenizer"] == "cl100k_base"
    assert meta["arrivals_drawn"] == {"rate": 1.0, "process": "poisson", "cv": 1.0}


def _words(n):
    return "hello" + " hello" * (n - 1)  # n tokens in cl100k_base


def _turn(prompt_tokens, output_tokens):
    return [
        {"from": "human", "value": _words(prompt_tokens)},
        {"from": "gpt", "value": _words(output_tokens)},
    ]


def test_sharegpt_vllm_filter(tmp_path):
    sizes = [(3, 10), (10, 3), (4, 4), (1025, 10), (1024, 10), (1000, 1049), (1000, 1048)]
    data = [{"id": f"c{k}", "conversations": _turn(p, o)} for k, (p, o) in enumerate(sizes)]
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps(data))
    assert load_sharegpt(path).num_rows == len(sizes)
    table = load_sharegpt(path, vllm_filter=True)
    assert table["conversation_id"].to_pylist() == ["c2", "c4", "c6"]
    assert table["prompt_tokens"].to_pylist() == [4, 1024, 1000]
    assert workload_metadata(table)["dropped"]["vllm_filter"] == 4


def test_sharegpt_limit_keeps_the_first_turns_in_file_order():
    table = load_workload(SHAREGPT, limit=5)
    ids = [c["id"] for c in json.loads(SHAREGPT.read_text())[:5]]
    assert table.sort_by("request_id")["conversation_id"].to_pylist() == ids


def test_sharegpt_full_file_loads():
    path = SHARED / "sharegpt" / "ShareGPT_V3_unfiltered_cleaned_split.first2000.json"
    if not path.exists():
        pytest.skip("../shared/data not present")
    table = load_sharegpt(path)
    assert table.num_rows > 1900


def test_azure_full_file_loads():
    path = SHARED / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
    if not path.exists():
        pytest.skip("../shared/data not present")
    table = load_workload(path)
    assert table.num_rows == 19366


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_canonical_round_trip(tmp_path, suffix):
    original = load_workload(SHAREGPT)
    path = tmp_path / f"w.{suffix}"
    if suffix == "parquet":
        pq.write_table(original, path)
    else:
        original.to_pandas().to_csv(path, index=False)
    assert detect_format(path) == "canonical"
    loaded = load_workload(path)
    assert loaded.equals(original)
    meta = workload_metadata(loaded)
    assert meta["format"] == "canonical"
    if suffix == "parquet":
        assert meta["upstream"]["format"] == "sharegpt"


def test_weights_survive_a_canonical_file(tmp_path):
    path = tmp_path / "weighted.parquet"
    pq.write_table(synthesize("overload-weighted"), path)
    assert set(load_workload(path)["weight"].to_pylist()) == {1.0, 2.0, 3.0, 4.0}


def test_seed_and_options():
    first, again = load_workload(SHAREGPT, seed=1), load_workload(SHAREGPT, seed=1)
    assert first.equals(again)
    other = load_workload(SHAREGPT, seed=2)
    assert first["client_id"].to_pylist() != other["client_id"].to_pylist()
    assert first["arrival_s"].to_pylist() != other["arrival_s"].to_pylist()
    vtc = load_workload(VTC)
    slow = load_workload(VTC, time_scale=2.0)
    assert np.allclose(slow["arrival_s"].to_numpy(), 2 * vtc["arrival_s"].to_numpy())
    redrawn = load_workload(VTC, clients=3, rate=2.0, arrival="gamma", cv=2.0)
    assert set(redrawn["client_id"].to_pylist()) <= {"client-0", "client-1", "client-2"}
    assert workload_metadata(redrawn)["arrivals_drawn"] == {"rate": 2.0, "process": "gamma", "cv": 2.0}


def test_synthetic_names_go_through_load_workload():
    table = load_workload("overload", seed=3)
    assert table.equals(load_workload("overload", seed=3))
    assert table["arrival_s"].to_pylist() == synthesize("overload", seed=3)["arrival_s"].to_pylist()
    assert workload_metadata(table)["workload"] == "overload"


def test_assign_clients_zipf_proportions():
    picks = assign_clients(100_000, 4, "zipf", seed=0, zipf_s=1.0)
    share = [np.mean(picks == f"client-{k}") for k in range(4)]
    expected = np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (1 + 1 / 2 + 1 / 3 + 1 / 4)
    assert np.allclose(share, expected, atol=0.01)
    uniform = assign_clients(100_000, 4, "uniform", seed=0)
    assert np.allclose([np.mean(uniform == f"client-{k}") for k in range(4)], 0.25, atol=0.01)


@pytest.mark.parametrize("process, cv", [("poisson", 1.0), ("gamma", 3.0), ("gamma", 0.5)])
def test_assign_arrivals_rate_and_burstiness(process, cv):
    times = assign_arrivals(50_000, 4.0, process, seed=0, cv=cv)
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_infinite_rate_sends_everything_at_once():
    assert np.all(assign_arrivals(10, float("inf")) == 0)
