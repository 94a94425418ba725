"""Token counts against hand values of cl100k_base, and against tiktoken on the same ranks."""

import json
from pathlib import Path

import pytest

from traces import InputError, get_tokenizer

SHAREGPT = Path(__file__).parent / "data" / "sharegpt_20.json"


def test_known_counts_cl100k():
    tok = get_tokenizer("cl100k_base")
    assert tok.name == "cl100k_base"
    assert tok.count("Hello, world!") == 4  # "Hello" "," " world" "!"
    assert tok.count("tiktoken is great!") == 6  # OpenAI cookbook's example
    assert tok.count("hello" + " hello" * 99) == 100
    assert tok.count("") == 0
    assert tok.count("<|endoftext|>") > 1  # special tokens count as plain text


def test_cached_and_o200k_available():
    assert get_tokenizer("cl100k_base") is get_tokenizer()
    assert get_tokenizer("o200k_base").count("Hello, world!") == 4


def test_count_many_matches_count():
    tok = get_tokenizer()
    texts = [m["value"] for c in json.loads(SHAREGPT.read_text()) for m in c["conversations"]]
    assert tok.count_many(texts).tolist() == [tok.count(t) for t in texts]


def test_matches_tiktoken_on_real_text():
    tiktoken = pytest.importorskip("tiktoken")
    import base64
    import gzip

    import bpe_openai
    from bpe_openai import registry

    spec = registry.cl100k_base()
    data = Path(bpe_openai.__file__).parent / "data" / "cl100k_base.tiktoken.gz"
    with gzip.open(data, "rt") as handle:
        ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in handle if line.strip())}
    reference = tiktoken.Encoding("cl100k_ref", pat_str=spec["pat_str"], mergeable_ranks=ranks, special_tokens={})
    texts = [m["value"] for c in json.loads(SHAREGPT.read_text()) for m in c["conversations"]][:40]
    assert get_tokenizer().count_many(texts).tolist() == [len(reference.encode_ordinary(t)) for t in texts]


def test_unknown_tokenizer_lists_names():
    with pytest.raises(InputError, match=r"unknown tokenizer 'llama'.*cl100k_base.*o200k_base"):
        get_tokenizer("llama")


def test_unknown_tokenizer_mentions_llama3_and_local_files():
    with pytest.raises(InputError, match=r"llama3, or a directory holding a Hugging Face tokenizer.json"):
        get_tokenizer("gpt-2")


def test_llama3_from_llama_models():
    pytest.importorskip("llama_models")
    tok = get_tokenizer("llama3")
    assert tok.name == "llama3"
    assert tok.count("Hello, world!") == 4  # Llama 3: "Hello" "," " world" "!"
    assert tok.count("<|begin_of_text|>") > 1  # special tokens count as plain text
    texts = [m["value"] for c in json.loads(SHAREGPT.read_text()) for m in c["conversations"]][:20]
    assert tok.count_many(texts).tolist() == [tok.count(t) for t in texts]


def test_local_hugging_face_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    texts = [m["value"] for c in json.loads(SHAREGPT.read_text()) for m in c["conversations"]]
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = get_tokenizer(str(tmp_path))
    assert tok is get_tokenizer(str(tmp_path / "tokenizer.json"))
    assert str(tmp_path / "tokenizer.json") in tok.name and "sha256" in tok.name
    assert tok.count("hello world") == len(hf.encode("hello world", add_special_tokens=False).ids) > 0
    assert tok.count_many(texts[:10]).tolist() == [tok.count(t) for t in texts[:10]]

    from traces import load_workload, workload_metadata

    table = load_workload(SHAREGPT, tokenizer=str(tmp_path))
    assert workload_metadata(table)["tokenizer"] == tok.name
    assert table["prompt_tokens"].to_pylist() != load_workload(SHAREGPT)["prompt_tokens"].to_pylist()
