"""Each published format on a small sample written in that format (tests/data), and --map."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from traces import (
    WORKLOAD_SCHEMA,
    InputError,
    detect_format,
    get_tokenizer,
    load_workload,
    workload_metadata,
)

DATA = Path(__file__).parent / "data"
LMSYS_CHAT = DATA / "lmsys_chat_1m_sample.parquet"
MOONCAKE = DATA / "mooncake_sample.jsonl"
BURSTGPT = DATA / "burstgpt_sample.csv"
GATEWAY = DATA / "gateway_log_sample.csv"
GATEWAY_MAP = "arrival=ts,prompt=in_tok,output=out_tok,client=api_key"


@pytest.mark.parametrize(
    "path, fmt",
    [
        (LMSYS_CHAT, "lmsys-chat-1m"),
        (MOONCAKE, "mooncake"),
        (BURSTGPT, "burstgpt"),
        (DATA / "sharegpt_20.json", "sharegpt"),
    ],
)
def test_detect_format(path, fmt):
    assert detect_format(path) == fmt


def test_lmsys_chat_first_turns_with_clients_from_model():
    conversations = pq.read_table(LMSYS_CHAT).to_pylist()
    table = load_workload(LMSYS_CHAT, clients="from:model")
    assert table.schema.equals(WORKLOAD_SCHEMA)
    df = table.to_pandas().sort_values("request_id")
    answered = [c for c in conversations if len(c["conversation"]) > 1]  # one has no reply
    assert list(df.conversation_id) == [c["conversation_id"] for c in answered]
    assert list(df.client_id) == [c["model"] for c in answered]
    count = get_tokenizer().count
    first = answered[0]["conversation"]
    assert (df.prompt.iloc[0], df.prompt_tokens.iloc[0]) == (first[0]["content"], count(first[0]["content"]))
    assert df.output_tokens.iloc[0] == count(first[1]["content"])
    meta = workload_metadata(table)
    assert meta["format"] == "lmsys-chat-1m" and meta["rows_read"] == 8
    assert meta["dropped"] == {"no_user_assistant_turn": 1, "empty_text": 0}
    assert "arrivals_drawn" in meta and "clients_drawn" not in meta


def test_lmsys_chat_all_turns_share_a_drawn_client():
    table = load_workload(LMSYS_CHAT, turns="all", clients=3, seed=5)
    df = table.to_pandas()
    assert len(df) == 2 + 1 + 3 + 1 + 1 + 2 + 1  # user turns answered, per conversation
    assert (df.groupby("conversation_id").client_id.nunique() == 1).all()


def test_mooncake_times_and_prefix_hashes():
    records = [json.loads(line) for line in MOONCAKE.read_text().splitlines()]
    table = load_workload(MOONCAKE)
    df = table.to_pandas()
    assert np.allclose(df.arrival_s, [r["timestamp"] / 1000 for r in records])
    assert list(df.prompt_tokens) == [r["input_length"] for r in records]
    assert [list(h) for h in df.prefix_hashes] == [r["hash_ids"] for r in records]
    assert df.prompt.isna().all()


def test_burstgpt_drops_failed_requests_and_takes_clients_from_model():
    table = load_workload(BURSTGPT, clients="from:Model")
    df = table.to_pandas()
    # 12 rows: two with 0 response tokens (failed), one with 0 request tokens
    assert len(df) == 9 and set(df.client_id) == {"ChatGPT", "GPT-4"}
    assert df.arrival_s.iloc[0] == 0 and df.arrival_s.iloc[-1] == 219 - 5
    meta = workload_metadata(table)
    assert meta["dropped"] == {"failed": 2, "zero_tokens": 1} and meta["first_timestamp"] == 5.0


def test_mapped_gateway_log():
    table = load_workload(GATEWAY, mapping=GATEWAY_MAP)
    df = table.to_pandas()
    assert list(df.client_id[:3]) == ["team-search", "team-ads", "team-search"]
    assert df.arrival_s.iloc[1] == pytest.approx(0.75) and df.arrival_s.iloc[-1] == pytest.approx(5.78)
    assert df.prompt_tokens.iloc[0] == 812 and df.prompt.isna().all()
    assert workload_metadata(table)["first_timestamp"] == "2024-05-02 09:00:00.120000"


def test_mapped_text_is_tokenized_when_no_count_is_given():
    table = load_workload(GATEWAY, mapping="arrival=ts,prompt_text=prompt,output=out_tok,conversation=model")
    df = table.to_pandas()
    assert df.prompt.iloc[2] == "Rank these ten results\nby relevance to the query."
    assert df.prompt_tokens.iloc[2] == get_tokenizer().count(df.prompt.iloc[2])
    assert workload_metadata(table)["tokenizer"] == "cl100k_base"


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_mapping_reads_jsonl_and_parquet(tmp_path, suffix):
    rows = [{"t": 10 * k, "p": 5 + k, "o": 7, "key": f"k{k % 2}"} for k in range(6)]
    path = tmp_path / f"log.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(rows), path)
    df = load_workload(path, mapping="arrival=t:ms,prompt=p,output=o,client=key").to_pandas()
    assert list(df.arrival_s) == pytest.approx([0.01 * k for k in range(6)])
    assert list(df.client_id) == ["k0", "k1"] * 3


@pytest.mark.parametrize(
    "mapping, message",
    [
        ("arrival=ts,prompt=in_tok", "needs output="),
        ("arrival=ts,prompt=in_tok,output=out_tok,user=api_key", "KEY one of"),
        ("arrival=ts,prompt=in_tok,output=tokens_out", "missing column(s) tokens_out"),
    ],
)
def test_bad_mapping(mapping, message):
    with pytest.raises(InputError) as info:
        load_workload(GATEWAY, mapping=mapping)
    assert message in str(info.value)


def test_mapped_bad_cell_names_the_row(tmp_path):
    path = tmp_path / "log.csv"
    lines = GATEWAY.read_text().splitlines()
    lines[1] = lines[1].replace(",812,", ",lots,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        load_workload(path, mapping=GATEWAY_MAP)
    assert info.value.row == 1 and "in_tok must be a non-negative integer, got 'lots'" in str(info.value)


@pytest.mark.parametrize("path", [BURSTGPT, LMSYS_CHAT])
def test_from_column_that_is_missing(path):
    with pytest.raises(InputError, match="missing column.s. api_key"):
        load_workload(path, clients="from:api_key")


def test_shards_of_one_format(tmp_path):
    shards = [tmp_path / f"train-0000{k}-of-00002.parquet" for k in range(2)]
    for shard in shards:
        shutil.copy(LMSYS_CHAT, shard)
    table = load_workload(shards)
    assert table.num_rows == 2 * load_workload(LMSYS_CHAT).num_rows
    assert workload_metadata(table)["source"] == [str(s) for s in shards]


def test_format_override():
    with pytest.raises(InputError, match="missing column.s. timestamp, input_length, output_length"):
        load_workload(BURSTGPT, format="mooncake")
