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
    reference = tiktoken.Encoding(
        "cl100k_ref", pat_str=spec["pat_str"], mergeable_ranks=ranks, special_tokens={}
    )
    texts = [m["value"] for c in json.loads(SHAREGPT.read_text()) for m in c["conversations"]][:40]
    assert get_tokenizer().count_many(texts).tolist() == [len(reference.encode_ordinary(t)) for t in texts]


def test_unknown_tokenizer_lists_names():
    with pytest.raises(InputError, match=r"unknown tokenizer 'llama'.*cl100k_base.*o200k_base"):
        get_tokenizer("llama")
