import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class LinearCost:
    """A hand-computable cost model: base + per_token * tokens scheduled."""

    def __init__(self, base=0.1, per_token=0.0):
        self.base = base
        self.per_token = per_token

    def step_time(self, prefill_tokens, prefill_pairs, decode_tokens, decode_kv_tokens, num_requests):
        return self.base + self.per_token * (prefill_tokens + decode_tokens) + 0.0 * decode_kv_tokens

    def step_flops(self, prefill_tokens, prefill_pairs, decode_tokens, decode_kv_tokens):
        return 2.0 * (prefill_tokens + decode_tokens) + 0.0 * decode_kv_tokens


@pytest.fixture
def linear_cost():
    return LinearCost()
