"""What a predictor may know before execution, computed the same way from logs and from a Request.

Request features (``REQUEST_FEATURES``), in order:

* ``prompt_tokens``;
* the engine's state at arrival: ``waiting_at_arrival``, ``waiting_tokens_at_arrival``,
  ``running_at_arrival``, ``kv_used_at_arrival`` (``Request.arrival_state``);
* the client's history: ``client_mean_output``, the mean output length of the client's
  requests that finished before this one arrived (the training prior when none did), and
  ``client_finished``, how many did;
* the conversation's history: ``conv_last_output``, ``conv_mean_output``, ``conv_max_output``
  (lengths of the replies of the same conversation that finished before this one arrived;
  -1 when none did) and ``conv_finished``, how many did;
* the prompt text's ``SIGNALS`` (predictors/text.py: sizes, explicit length asks, what it
  asks for, the language) and ``text_score``, a ridge regression of log(1 + output tokens)
  on TF-IDF word and word-pair n-grams (``text.tfidf_score``).  Without text these are what
  an empty prompt gives.

Step features (``STEP_FEATURES``): ``prefill_tokens``, ``decode_tokens``, ``running`` and
``kv_used`` (fraction of the KV cache in use).  Matrices are float32 (see forest.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from predictors.text import SIGNALS

NO_HISTORY = -1.0  # a conversation feature when no earlier reply of the conversation finished
CONVERSATION_FEATURES = ("conv_last_output", "conv_mean_output", "conv_max_output", "conv_finished")
STATE_FEATURES = ("waiting_at_arrival", "waiting_tokens_at_arrival", "running_at_arrival", "kv_used_at_arrival")
REQUEST_FEATURES = (
    "prompt_tokens",
    *STATE_FEATURES,
    "client_mean_output",
    "client_finished",
    *CONVERSATION_FEATURES,
    *SIGNALS,
    "text_score",
)
STEP_FEATURES = ("prefill_tokens", "decode_tokens", "running", "kv_used")


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


def running_max(values: np.ndarray) -> np.ndarray:
    """The largest of the first 1, 2, ... values."""
    return np.maximum.accumulate(values)


def request_matrix(requests: pd.DataFrame, prior: float, signals: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Request features of logged requests: columns of requests.parquet plus ``client_mean``,
    ``client_finished`` and the ``CONVERSATION_FEATURES`` (NaN where none), the prompts'
    ``SIGNALS`` (n, len(SIGNALS)) and their text scores."""
    mean = requests["client_mean"].to_numpy()
    columns = [requests["prompt_tokens"].to_numpy(np.float64)]
    columns += [requests[name].to_numpy(np.float64) for name in STATE_FEATURES]
    columns += [np.where(np.isnan(mean), prior, mean), requests["client_finished"].to_numpy(np.float64)]
    conv = requests[list(CONVERSATION_FEATURES)].to_numpy(np.float64)
    columns += [np.where(np.isnan(conv), NO_HISTORY, conv), signals.reshape(len(requests), len(SIGNALS)), score]
    return np.column_stack(columns).astype(np.float32)


def step_matrix(steps: pd.DataFrame) -> np.ndarray:
    """Step features of logged steps (columns of steps.parquet)."""
    kv_used = steps["kv_used_tokens"].to_numpy(np.float64) / steps["kv_capacity_tokens"].to_numpy(np.float64)
    columns = [steps[name].to_numpy(np.float64) for name in ("prefill_tokens", "decode_tokens", "running")]
    return np.column_stack([*columns, kv_used]).astype(np.float32)
