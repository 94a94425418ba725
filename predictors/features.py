"""What a predictor may know before execution, computed the same way from logs and from a Request.

Request features (``REQUEST_FEATURES``), in order:

* ``prompt_tokens``;
* the engine's state at arrival: ``waiting_at_arrival``, ``waiting_tokens_at_arrival``,
  ``running_at_arrival``, ``kv_used_at_arrival`` (``Request.arrival_state``);
* the client's history: ``client_mean_output``, the mean output length of the client's
  requests that finished before this one arrived (the training prior when none did), and
  ``client_finished``, how many did;
* the prompt text, as a hashed bag of words (the lower-cased UTF-8 text split at whitespace
  and ASCII punctuation other than ``_``; each word's CRC-32 modulo ``TEXT_BUCKETS``, present
  or not; the row scaled to unit length): ``text_words``, the
  number of distinct buckets, and ``text_score``, an expert's ridge regression of
  log(1 + output tokens) on the bag.  Without text both are what an empty prompt gives.

Step features (``STEP_FEATURES``): ``prefill_tokens``, ``decode_tokens``, ``running`` and
``kv_used`` (fraction of the KV cache in use).  Matrices are float32 (see forest.py).
"""

from __future__ import annotations

import string
import zlib
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

TEXT_BUCKETS = 2**14
_SEPARATORS = bytes(32 if chr(b) in string.punctuation and chr(b) != "_" else b for b in range(256))

STATE_FEATURES = ("waiting_at_arrival", "waiting_tokens_at_arrival", "running_at_arrival", "kv_used_at_arrival")
REQUEST_FEATURES = (
    "prompt_tokens",
    *STATE_FEATURES,
    "client_mean_output",
    "client_finished",
    "text_words",
    "text_score",
)
STEP_FEATURES = ("prefill_tokens", "decode_tokens", "running", "kv_used")


def text_buckets(text: str | None) -> np.ndarray:
    """The sorted distinct hash buckets of a prompt's words (empty without text)."""
    if not text:
        return np.zeros(0, dtype=np.intp)
    words = set(text.lower().encode().translate(_SEPARATORS).split())
    return np.array(sorted({zlib.crc32(w) % TEXT_BUCKETS for w in words}), dtype=np.intp)


def bag_of_words(buckets: list[np.ndarray]) -> sp.csr_matrix:
    """The bags of words of prompts given by their ``text_buckets``: rows of unit length."""
    lengths = np.array([len(b) for b in buckets])
    values = np.concatenate([np.full(len(b), 1.0 / np.sqrt(len(b))) for b in buckets if len(b)] or [np.zeros(0)])
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    indices = np.concatenate(buckets) if buckets else np.zeros(0, dtype=np.intp)
    return sp.csr_matrix((values, indices, indptr), shape=(len(buckets), TEXT_BUCKETS))


def text_score(buckets: np.ndarray, weights: np.ndarray, bias: float) -> float:
    """The ridge model's score of one prompt's buckets; logs and Requests are both scored here."""
    if not len(buckets):
        return bias
    return bias + weights[buckets].sum() / np.sqrt(len(buckets))


def running_by_client(
    client: np.ndarray,
    arrival: np.ndarray,
    finish: np.ndarray,
    values: np.ndarray,
    running: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: ``running`` over the values of the client's rows finished by its arrival, in
    finish order (its last element; NaN when none), and how many there were."""
    stat = np.full(len(client), np.nan)
    count = np.zeros(len(client), dtype=np.int64)
    for rows in pd.Series(np.arange(len(client))).groupby(client, sort=True).indices.values():
        order = rows[np.argsort(finish[rows], kind="stable")]
        k = np.searchsorted(finish[order], arrival[rows], side="right")
        seen = running(values[order].astype(np.float64))
        count[rows] = k
        stat[rows] = np.where(k > 0, seen[np.maximum(k - 1, 0)], np.nan)
    return stat, count


def cumulative_mean(values: np.ndarray) -> np.ndarray:
    """The mean of the first 1, 2, ... values."""
    return np.cumsum(values) / np.arange(1, len(values) + 1)


def request_matrix(requests: pd.DataFrame, prior: float, text_words: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Request features of logged requests (columns of requests.parquet plus ``client_mean``/``client_finished``)."""
    mean = requests["client_mean"].to_numpy()
    columns = [requests["prompt_tokens"].to_numpy(np.float64)]
    columns += [requests[name].to_numpy(np.float64) for name in STATE_FEATURES]
    columns += [np.where(np.isnan(mean), prior, mean), requests["client_finished"].to_numpy(np.float64)]
    columns += [text_words.astype(np.float64), score]
    return np.column_stack(columns).astype(np.float32)


def step_matrix(steps: pd.DataFrame) -> np.ndarray:
    """Step features of logged steps (columns of steps.parquet)."""
    kv_used = steps["kv_used_tokens"].to_numpy(np.float64) / steps["kv_capacity_tokens"].to_numpy(np.float64)
    columns = [steps[name].to_numpy(np.float64) for name in ("prefill_tokens", "decode_tokens", "running")]
    return np.column_stack([*columns, kv_used]).astype(np.float32)
