"""The tables a run writes, as the engines, the policies and the reports all read them.

* ``REQUEST_SCHEMA``: ``requests.parquet``, one row per request: the workload's columns plus what
  happened to the request (``reject_reason`` is one of ``REJECT_REASONS``).
* ``STEP_SCHEMA``: ``steps.parquet``, one row per engine step; idle gaps between steps are rows
  with ``busy = False`` so that the rows tile the run's time line.
* ``COUNTER_SCHEMA``: ``counters.parquet`` (Equinox runs), per-client UFC, RFC and HF over time.

They live here, below both ``engine/`` and ``schedulers/``, so that neither imports the other
for them; ``engine/results.py`` writes them (file names, atomic writes).
"""

from __future__ import annotations

import pyarrow as pa

REQUEST_SCHEMA = pa.schema(
    [
        ("request_id", pa.int64()),
        ("client_id", pa.string()),
        ("arrival_s", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("weight", pa.float64()),
        ("conversation_id", pa.string()),
        ("prompt", pa.string()),
        ("scheduler", pa.string()),
        ("status", pa.string()),  # finished | rejected
        ("admitted_s", pa.float64()),  # first admission into the running batch (null if rejected)
        ("first_token_s", pa.float64()),  # end of the step that produced the first output token
        ("finish_s", pa.float64()),  # end of the step that produced the last output token
        ("generated_tokens", pa.int64()),
        ("preemptions", pa.int64()),  # times the request was preempted (recompute)
        # Engine state when the request arrived: inputs a predictor may use.
        ("waiting_at_arrival", pa.int64()),  # requests waiting ahead of it
        ("waiting_tokens_at_arrival", pa.int64()),  # prompt tokens waiting ahead of it
        ("running_at_arrival", pa.int64()),
        ("kv_used_at_arrival", pa.float64()),  # fraction of the KV cache in use
        # Appended columns (older runs lack them; readers must tolerate their absence):
        ("reject_reason", pa.string()),  # null when served; too_long | exceeds_kv | rate_limit
        ("cached_prompt_tokens", pa.int64()),  # prompt tokens served from the prefix cache at first admission
        ("prefix_hashes", pa.list_(pa.int64())),  # as the workload gave them (null when none)
        # The request's share of engine time: every step's time split by the cost model (its prefill
        # chunks' FLOPs and attention, its decodes' weight-read share and KV reads); null if not computed.
        ("engine_seconds", pa.float64()),
    ]
)

# Why a request was rejected at arrival (``reject_reason``).
TOO_LONG = "too_long"  # prompt + output over the model's context limit (max_model_len)
EXCEEDS_KV = "exceeds_kv"  # could not fit the KV cache even alone
RATE_LIMIT = "rate_limit"  # the policy refused it (RPM)
REJECT_REASONS = (TOO_LONG, EXCEEDS_KV, RATE_LIMIT)

STEP_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("start_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("busy", pa.bool_()),  # False for an idle gap (no work in the engine)
        ("prefill_tokens", pa.int64()),
        ("decode_tokens", pa.int64()),
        ("prefill_requests", pa.int64()),
        ("decode_requests", pa.int64()),
        ("running", pa.int64()),  # requests in the batch this step
        ("waiting", pa.int64()),  # requests waiting after this step's admissions
        ("admitted", pa.int64()),
        ("finished", pa.int64()),
        ("preempted", pa.int64()),
        ("kv_used_tokens", pa.int64()),  # allocated blocks * block size, after the step
        ("kv_capacity_tokens", pa.int64()),
        ("token_budget", pa.int64()),
        ("flops", pa.float64()),  # model FLOPs the step performed (cost model)
        ("cached_tokens", pa.int64()),  # prompt tokens of this step's admissions served from the prefix cache
    ]
)

# Equinox's per-client counters, sampled during the run (counters.parquet).
COUNTER_SCHEMA = pa.schema(
    [
        ("time_s", pa.float64()),
        ("client_id", pa.string()),
        ("ufc", pa.float64()),
        ("rfc", pa.float64()),
        ("hf", pa.float64()),  # null while the client is not backlogged
    ]
)
