"""Shaping: multi-turn timing, client rules, length filters and caps, time cuts, sampling,
the optional prefix_hashes column, and provenance."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from traces import (
    WORKLOAD_SCHEMA,
    InputError,
    TraceWarning,
    conform,
    get_tokenizer,
    load_workload,
    make_table,
    parse_clients,
    parse_duration,
    summarize,
    synthesize,
    workload_metadata,
)

DATA = Path(__file__).parent / "data"
SHAREGPT = DATA / "sharegpt_20.json"
BURSTGPT = DATA / "burstgpt_sample.csv"
MOONCAKE = DATA / "mooncake_sample.jsonl"


def test_all_turns_grow_the_prompt_and_wait_for_the_answer():
    conversation = json.loads(SHAREGPT.read_text())[0]
    texts = [m["value"] for m in conversation["conversations"]]
    count = get_tokenizer().count
    table = load_workload(SHAREGPT, turns="all", think_time=3.0, answer_speed=20.0, rate=float("inf"))
    df = table.to_pandas()
    turns = df[df.conversation_id == conversation["id"]].sort_values("arrival_s")
    assert len(turns) == len(texts) // 2
    # turn k's prompt is every message before its reply; it arrives after the previous answer
    # (output_tokens / 20 tokens/s) and 3 s of thinking
    expected_prompt = [sum(count(t) for t in texts[: 2 * k + 1]) for k in range(len(turns))]
    assert list(turns.prompt_tokens) == expected_prompt
    assert list(turns.output_tokens) == [count(texts[2 * k + 1]) for k in range(len(turns))]
    gaps = np.diff(turns.arrival_s.to_numpy())
    assert np.allclose(gaps, turns.output_tokens.to_numpy()[:-1] / 20.0 + 3.0)
    assert turns.prompt.iloc[1] == texts[2]  # the turn's own message; the history is in the counts
    assert workload_metadata(table)["turn_timing"] == {"think_time_s": 3.0, "answer_speed_tokens_per_s": 20.0}


def test_turns_keep_their_timing_through_a_canonical_file(tmp_path):
    path = tmp_path / "multi.parquet"
    pq.write_table(load_workload(SHAREGPT, turns="all", seed=1), path)
    original = pq.read_table(path).to_pandas()
    redrawn = load_workload(path, rate=4.0, seed=9).to_pandas()
    for frame in (original, redrawn):
        frame["offset"] = frame.arrival_s - frame.groupby("conversation_id").arrival_s.transform("min")
    key = ["conversation_id", "prompt_tokens"]
    merged = original.merge(redrawn, on=key)
    assert len(merged) == len(original) and np.allclose(merged.offset_x, merged.offset_y)


@pytest.mark.parametrize(
    "spec, probs",
    [
        (3, [1 / 3] * 3),
        ("4", [0.25] * 4),
        ("zipf:2", [2 / 3, 1 / 3]),
        ("shares:0.5,0.3,0.2", [0.5, 0.3, 0.2]),
        ("shares:2,1,1", [0.5, 0.25, 0.25]),
    ],
)
def test_client_rules(spec, probs):
    column, got = parse_clients(spec)
    assert column is None and np.allclose(got, probs)


@pytest.mark.parametrize("spec", ["0", "zipf:", "shares:0.5,-1", "shares:", "from:", "everyone"])
def test_bad_client_rules(spec):
    with pytest.raises(InputError) as info:
        load_workload(SHAREGPT, clients=spec)
    assert info.value.source == "clients"


def test_fixed_shares_proportions():
    table = load_workload("overload", clients="shares:0.6,0.3,0.1", seed=3)
    counts = summarize(table)["per_client"]
    total = table.num_rows
    assert counts["client-0"] / total == pytest.approx(0.6, abs=0.03)
    assert counts["client-2"] / total == pytest.approx(0.1, abs=0.03)
    assert workload_metadata(table)["clients_drawn"]["dist"] == "shares:0.6,0.3,0.1"


def test_length_filters_and_caps():
    base = load_workload(BURSTGPT).to_pandas()
    table = load_workload(BURSTGPT, min_prompt=100, max_output=500, cap_prompt=1000, cap_output=250)
    df = table.to_pandas()
    kept = base[(base.prompt_tokens >= 100) & (base.output_tokens <= 500)]
    assert len(df) == len(kept)
    assert df.prompt_tokens.max() == 1000 and df.output_tokens.max() == 250
    meta = workload_metadata(table)
    assert meta["dropped"]["length_filter"] == len(base) - len(kept)
    assert meta["capped"] == {
        "prompt_tokens": int((kept.prompt_tokens > 1000).sum()),
        "output_tokens": int((kept.output_tokens > 250).sum()),
    }


def test_rate_scale_and_duration():
    base = load_workload(BURSTGPT).to_pandas()
    fast = load_workload(BURSTGPT, rate_scale=2.0, duration=60.0).to_pandas()
    expected = base.arrival_s / 2
    assert np.allclose(fast.arrival_s, expected[expected < 60])
    with pytest.raises(InputError, match="no request arrives within"):
        load_workload(BURSTGPT, duration=0.0)


def test_sample_is_seeded_and_shuffles_conversations():
    first = load_workload(SHAREGPT, rate=2.0, duration=5.0, shuffle=True, seed=1)
    again = load_workload(SHAREGPT, rate=2.0, duration=5.0, shuffle=True, seed=1)
    other = load_workload(SHAREGPT, rate=2.0, duration=5.0, shuffle=True, seed=2)
    assert first.equals(again)
    assert first["conversation_id"].to_pylist() != other["conversation_id"].to_pylist()
    assert max(first["arrival_s"].to_pylist()) < 5.0
    in_order = load_workload(SHAREGPT, rate=2.0, duration=5.0, seed=1)["conversation_id"].to_pylist()
    assert first["conversation_id"].to_pylist() != in_order


def test_sample_that_runs_out_warns():
    with pytest.warns(TraceWarning, match="the source has 19 conversations"):
        table = load_workload(SHAREGPT, rate=1.0, duration=3600.0, shuffle=True)
    assert table.num_rows == 19


def test_sample_needs_a_rate():
    with pytest.raises(InputError) as info:
        load_workload(BURSTGPT, shuffle=True)
    assert info.value.source == "rate"


def test_prefix_hashes_column_is_optional(tmp_path):
    old = synthesize("overload").drop_columns(["prefix_hashes"])
    assert "prefix_hashes" not in old.column_names
    filled = conform(old, source="old")
    assert filled.schema.equals(WORKLOAD_SCHEMA) and filled["prefix_hashes"].null_count == filled.num_rows
    path = tmp_path / "old.parquet"
    pq.write_table(old, path)
    assert load_workload(path)["prefix_hashes"].null_count == old.num_rows
    table = make_table(["a", "b"], [1.0, 0.0], [3, 4], [5, 6], prefix_hashes=[[1, 2], None])
    assert table["prefix_hashes"].to_pylist() == [None, [1, 2]]  # sorted by arrival with the rest


def test_prefix_hashes_survive_canonical_files(tmp_path):
    original = load_workload(MOONCAKE)
    for suffix in ("parquet", "csv"):
        path = tmp_path / f"w.{suffix}"
        if suffix == "parquet":
            pq.write_table(original, path)
        else:
            original.to_pandas().to_csv(path, index=False)
        assert load_workload(path)["prefix_hashes"].equals(original["prefix_hashes"])


def test_provenance_records_source_options_tokenizer_and_seed():
    table = load_workload(SHAREGPT, tokenizer="o200k_base", seed=7, clients="zipf:3", max_prompt=2000)
    meta = workload_metadata(table)
    assert meta["source"] == str(SHAREGPT) and meta["format"] == "sharegpt"
    assert meta["tokenizer"] == "o200k_base"
    assert meta["options"]["seed"] == 7 and meta["options"]["clients"] == "zipf:3"
    assert meta["options"]["max_prompt"] == 2000


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("1.5m", 90), ("10min", 600), ("2h", 7200), ("500ms", 0.5)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "options, source",
    [
        ({"turns": "some"}, "turns"),
        ({"think_time": -1.0}, "think_time"),
        ({"answer_speed": 0.0}, "answer_speed"),
        ({"cap_output": 0}, "cap_output"),
        ({"min_prompt": -2}, "min_prompt"),
        ({"rate_scale": 0.0}, "rate_scale"),
        ({"mapping": "prompt=a"}, "map"),
    ],
)
def test_bad_options_name_the_option(options, source):
    with pytest.raises(InputError) as info:
        load_workload(BURSTGPT, **options)
    assert info.value.source == source
    with pytest.raises(InputError, match="a duration like"):
        parse_duration("ten minutes")


def test_summary():
    table = load_workload(MOONCAKE, clients="shares:0.5,0.5")
    s = summarize(table)
    assert s["rows"] == 10 and s["clients"] == 2 and s["with_prefix_hashes"] == 10
    assert s["duration_s"] == pytest.approx(10.535)
    assert s["lengths"]["prompt_tokens"]["max"] == 12105
    assert sum(s["per_client"].values()) == 10
    assert s["provenance"]["format"] == "mooncake"
