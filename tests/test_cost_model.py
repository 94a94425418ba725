"""Step-time models (engine/cost_model.py) and engine presets (engine/presets.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cost_model import RooflineCostModel, VTCProfileCostModel, prefill_attn_pairs, vtc_kv_coefficient_ms
from engine.presets import (
    A100_80GB,
    DEFAULT_PRESET,
    LLAMA2_7B,
    LLAMA2_13B,
    LLAMA2_70B,
    PRESETS,
    get_preset,
    kv_capacity_tokens,
)
from traces.errors import InputError

DATA = Path(__file__).parent / "data"
INPUTS = ("prefill_tokens", "prefill_attn_pairs", "decode_tokens", "decode_kv_tokens", "num_requests")


def plain_a100_7b(**kw) -> RooflineCostModel:
    """A100 / Llama-2-7B with round efficiencies and no overheads, for hand computations."""
    args = dict(compute_efficiency=0.5, attention_efficiency=0.25, memory_efficiency=0.8)
    args.update(kw)
    return RooflineCostModel(A100_80GB, LLAMA2_7B, **args)


def random_steps(n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    prefill = rng.integers(0, 2048, n).astype(float)
    decode = rng.integers(0, 256, n).astype(float)
    return {
        "prefill_tokens": prefill,
        "prefill_attn_pairs": prefill * (rng.integers(0, 4000, n) + (prefill + 1) / 2),
        "decode_tokens": decode,
        "decode_kv_tokens": decode * rng.integers(1, 4000, n),
        "num_requests": decode + rng.integers(0, 8, n),
    }


ALL_MODELS = [p.cost_model for p in PRESETS.values()] + [plain_a100_7b()]


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("field", INPUTS)
def test_step_time_is_monotone_in_each_input(model, field):
    steps = random_steps()
    base = np.asarray(model.step_time(**steps))
    for delta in (1.0, 100.0, 10_000.0):
        more = dict(steps, **{field: steps[field] + delta})
        if field == "decode_tokens":  # every decode token is a request of the step
            more["num_requests"] = steps["num_requests"] + delta
        assert np.all(np.asarray(model.step_time(**more)) >= base)


@pytest.mark.parametrize("field", INPUTS)
def test_roofline_is_monotone_in_each_input_alone(field):
    steps = random_steps()
    for model in [p.cost_model for p in PRESETS.values() if isinstance(p.cost_model, RooflineCostModel)]:
        more = dict(steps, **{field: steps[field] + 1.0})
        assert np.all(np.asarray(model.step_time(**more)) >= np.asarray(model.step_time(**steps)))


SCALAR_CHECK_MODELS = {
    **{name: preset.cost_model for name, preset in PRESETS.items()},
    "roofline-max-overheads": plain_a100_7b(roofline_p=np.inf, step_overhead_s=1e-3, request_overhead_s=1e-5),
    "roofline-p3": plain_a100_7b(roofline_p=3.0),
}


@pytest.mark.parametrize("name", sorted(SCALAR_CHECK_MODELS))
def test_vectorised_call_equals_scalar_calls_bit_for_bit(name):
    """The simulator's step path evaluates one step in plain floats and its fast path whole
    stretches in numpy: the two must agree to the last bit, or fast and slow runs would differ."""
    model = SCALAR_CHECK_MODELS[name]
    steps = random_steps(2000, seed=1)
    vec = model.step_time(**steps)
    flops = model.step_flops(**{k: v for k, v in steps.items() if k != "num_requests"})
    assert isinstance(vec, np.ndarray) and vec.shape == (2000,)
    for i in range(2000):
        one = {k: v[i].item() for k, v in steps.items()}
        t = model.step_time(**one)
        assert isinstance(t, float)
        assert t == vec[i], (i, one)
        one.pop("num_requests")
        assert model.step_flops(**one) == flops[i]


def test_empty_step_takes_no_time():
    for model in ALL_MODELS:
        assert model.step_time(0, 0, 0, 0, 0) == 0.0


def test_decode_at_batch_1_is_a_weight_read():
    # 6,738,415,616 params, less the 32000 x 4096 input embedding, 2 bytes each, at 80% of 2.039 TB/s
    weights = (6_738_415_616 - 32000 * 4096) * 2
    hand = weights / (2.039e12 * 0.8)
    assert hand == pytest.approx(8.10e-3, rel=0.01)
    model = plain_a100_7b()
    kv = 1000  # + 1000 tokens x 512 KiB of KV cache, same bandwidth
    kv_hand = 1000 * (2 * 32 * 32 * 128 * 2) / (2.039e12 * 0.8)
    assert model.step_time(0, 0, 1, kv, 1) == pytest.approx(hand + kv_hand, rel=1e-9)
    assert model.step_time(0, 0, 1, kv, 1) == pytest.approx(hand, rel=0.05)  # KV is minor at batch 1
    # the calibrated preset adds its fixed overheads to the same weight read (its rounded roofline
    # knee, sqrt(compute^2 + memory^2), adds nothing visible: compute is 1/300 of memory here)
    preset = get_preset("a100-llama2-7b").cost_model
    hand_preset = weights / (2.039e12 * preset.memory_efficiency) + preset.step_overhead_s + preset.request_overhead_s
    assert preset.step_time(0, 0, 1, 0, 1) == pytest.approx(hand_preset, rel=1e-4)


def test_long_prefill_is_compute_bound():
    model = plain_a100_7b()
    n = 4096
    linear_params = 6_738_415_616 - 32000 * 4096
    hand = 2 * linear_params * n / (312e12 * 0.5)
    assert hand == pytest.approx(0.3465, rel=0.01)
    assert model.step_time(n, 0, 0, 0, 1) == pytest.approx(hand, rel=1e-9)
    # with causal attention over the prompt: 4 * d_model * n_layers FLOPs per query-key pair
    pairs = prefill_attn_pairs(n, 0)
    assert pairs == n * (n + 1) / 2
    attn = 4 * 4096 * 32 * pairs / (312e12 * 0.25)
    assert model.step_time(n, pairs, 0, 0, 1) == pytest.approx(hand + attn, rel=1e-9)


def test_tensor_parallel_divides_the_work():
    one = RooflineCostModel(A100_80GB, LLAMA2_70B, tp=1)
    four = RooflineCostModel(A100_80GB, LLAMA2_70B, tp=4)
    steps = random_steps(20)
    assert np.allclose(np.asarray(four.step_time(**steps)) * 4, one.step_time(**steps))


def test_step_flops_hand_computation():
    model = plain_a100_7b()
    linear_params = 6_738_415_616 - 32000 * 4096
    hand = 2 * linear_params * (100 + 10) + 4 * 4096 * 32 * (5050 + 10 * 300)
    assert model.step_flops(100, 5050, 10, 3000) == pytest.approx(hand, rel=1e-12)


def test_prefill_attn_pairs_counts_query_key_pairs():
    # chunk of 3 after 2 context tokens: queries see 3, 4, 5 keys
    assert prefill_attn_pairs(3, 2) == 3 + 4 + 5
    assert np.array_equal(prefill_attn_pairs(np.array([1, 2]), np.array([0, 10])), [1.0, 2 * 10 + 3])


@pytest.mark.parametrize("spec", [LLAMA2_7B, LLAMA2_13B, LLAMA2_70B], ids=lambda s: s.name)
def test_model_parameter_counts_match_their_shapes(spec):
    # blocks + two RMSNorm weights per layer + final norm + input embedding + LM head
    norms = spec.n_layers * 2 * spec.d_model + spec.d_model
    count = spec.layer_params + norms + 2 * spec.vocab * spec.d_model
    assert spec.n_params == count


def test_kv_bytes_per_token():
    assert LLAMA2_7B.kv_bytes_per_token == 2 * 32 * 4096 * 2 == 524_288
    assert LLAMA2_70B.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680  # GQA: 8 KV heads
    assert get_preset("a100-llama2-7b").cost_model.kv_bytes_per_token == 524_288


def test_kv_capacity_hand_computation():
    # (80 GiB * 0.9 - 6,738,415,616 * 2 bytes) / 524,288 bytes per token
    hand = int((80 * 2**30 * 0.9 - 6_738_415_616 * 2) // 524_288)
    assert hand == 121_750
    assert get_preset("a100-llama2-7b").kv_capacity_tokens == hand
    # 70B on 4 GPUs: (4 * 80 GiB * 0.9 - 68,976,648,192 * 2) / 327,680
    p70 = get_preset("a100-llama2-70b")
    assert p70.tensor_parallel == 4
    assert p70.kv_capacity_tokens == int((4 * 80 * 2**30 * 0.9 - 68_976_648_192 * 2) // 327_680)
    assert kv_capacity_tokens(A100_80GB, LLAMA2_70B, tp=4) == p70.kv_capacity_tokens
    with pytest.raises(ValueError):
        kv_capacity_tokens(A100_80GB, LLAMA2_70B, tp=1)  # 138 GB of weights on one 80 GB GPU


def test_presets_cover_the_required_names():
    required = {
        "a10g-llama2-7b",
        "a100-llama2-7b",
        "a100-llama2-13b",
        "a100-llama2-70b",
        "h100-llama2-7b",
        "h100-llama2-13b",
        "h100-llama2-70b",
        "vtc-a10g-llama2-7b",
    }
    assert required <= set(PRESETS)
    assert DEFAULT_PRESET == "vtc-a10g-llama2-7b"
    assert get_preset() is PRESETS["vtc-a10g-llama2-7b"]
    for p in PRESETS.values():
        assert p.block_size == 16 and p.max_running > 0 and p.max_batch_tokens > 0
        assert p.kv_capacity_tokens > p.max_batch_tokens


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(InputError) as err:
        get_preset("tpu-llama2-7b")
    message = str(err.value)
    assert "tpu-llama2-7b" in message
    for name in PRESETS:
        assert name in message


def test_vtc_preset_is_the_vtc_papers_engine():
    p = get_preset("vtc-a10g-llama2-7b")
    assert isinstance(p.cost_model, VTCProfileCostModel)
    assert p.kv_capacity_tokens == 10_000
    assert p.max_batch_tokens == max(10_000 // 6, 3072) == 3072
    assert p.merge_interval_steps == 10
    assert p.hardware.name == "A10G" and p.model is LLAMA2_7B


def test_vtc_request_cost_is_the_artifacts_formula():
    model = get_preset("vtc-a10g-llama2-7b").cost_model
    x, y = 256, 256  # 0.21001891 x + 0.10075395 y + 0.0039868 x y + 0.00324733 y^2 + 1.14601454
    hand = 0.21001891 * 256 + 0.10075395 * 256 + 0.0039868 * 65536 + 0.00324733 * 65536 + 1.14601454
    assert model.request_cost_ms(x, y) == pytest.approx(hand, rel=1e-12)
    assert hand == pytest.approx(554.80, abs=0.01)


def test_vtc_steps_add_up_to_the_formula():
    # one request alone (no floor): its prefill step plus its y decode steps ~ h(x, y); not exact,
    # as one KV coefficient k replaces the formula's separate prompt and output context terms
    model = replace(get_preset("vtc-a10g-llama2-7b").cost_model, min_step_s=0.0)
    for x, y in [(64, 128), (256, 256), (512, 64)]:
        i = np.arange(1, y + 1)
        prefill = model.step_time(x, prefill_attn_pairs(x), 0, 0, 1)
        decode = np.sum(model.step_time(0, 0, np.ones(y), x + i - 1, np.ones(y)))
        assert (prefill + decode) * 1000 == pytest.approx(model.request_cost_ms(x, y), rel=0.12)
    assert 0.0039868 < vtc_kv_coefficient_ms() < 2 * 0.00324733


def test_vtc_floor_is_the_a10g_weight_read():
    p = get_preset("vtc-a10g-llama2-7b")
    a10g = get_preset("a10g-llama2-7b").cost_model
    assert p.cost_model.min_step_s == pytest.approx(a10g.linear_time(1))
    assert p.cost_model.step_time(0, 0, 1, 100, 1) == pytest.approx(p.cost_model.min_step_s)


def test_calibrated_linear_layers_match_measured_a100_kernels():
    """a100-llama2-7b against 20 rows of Vidur's measured A100 kernel times (tests/data).

    Measured: 32 layers x the sum of the per-layer linear operators. Model: the same step
    without attention (pairs = KV = 0) and without the LM head, which Vidur did not profile;
    its overhead includes the attention kernels' fixed cost, a slight overestimate.
    """
    df = pd.read_csv(DATA / "gpu_profile_slice.csv")
    assert len(df) == 20 and (df.num_tensor_parallel_workers == 1).all()
    measured = df.filter(like="time_stats.").sum(axis=1).to_numpy() * 32 / 1000.0
    cm = get_preset("a100-llama2-7b").cost_model
    blocks = replace(cm, model=replace(cm.model, vocab=0, n_params=cm.model.layer_params))
    n = df.num_tokens.to_numpy(float)
    predicted = blocks.step_time(n, 0, 0, 0, 1)
    err = np.abs(predicted / measured - 1)
    assert np.median(err) < 0.08  # measured 5.4%
    assert np.max(err) < 0.25  # measured 18% (num_tokens 384, the roofline's knee)
    # the uncalibrated default efficiencies are further off: calibration did something
    default = replace(blocks, compute_efficiency=0.9, memory_efficiency=0.95, step_overhead_s=0.0)
    assert np.median(np.abs(default.step_time(n, 0, 0, 0, 1) / measured - 1)) > np.median(err)
