"""Engine presets: a GPU, a model, a step-time model and the engine's limits.

``get_preset(name)`` returns one; ``PRESETS`` holds them all; ``DEFAULT_PRESET`` is the
project's default.  The efficiency constants are fitted by
``benchmarks/cost_model_error.py`` against real measurements (docs/COST_MODEL.md has the
error table); rerun it after changing a model or a hardware constant and paste what it prints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine.cost_model import CostModel, Hardware, ModelSpec, RooflineCostModel, VTCProfileCostModel
from traces.errors import InputError

GiB = 1024**3

# --- Hardware (datasheet peaks; dense, i.e. without 2:4 sparsity) -----------------------
# A100 SXM4 80GB: NVIDIA A100 datasheet: FP16/BF16 tensor 312 TFLOPS dense, HBM2e 2,039 GB/s, 80 GB.
A100_80GB = Hardware("A100-SXM4-80GB", peak_flops=312e12, mem_bandwidth=2.039e12, memory_bytes=80 * GiB)
# H100 SXM5 80GB: NVIDIA H100 datasheet: FP16/BF16 tensor 989 TFLOPS dense (1,979 sparse),
# HBM3 3.35 TB/s, 80 GB.  (Vidur's H100 weight reads reach 2.6 TB/s, so it is the SXM part.)
H100_80GB = Hardware("H100-SXM5-80GB", peak_flops=989e12, mem_bandwidth=3.35e12, memory_bytes=80 * GiB)
# A10G (AWS g5): 24 GB GDDR6, 600 GB/s, like the A10.  Its tensor rate is NOT the A10's: the A10
# datasheet gives 125 TFLOPS dense FP16 tensor, but AWS's A10G variant is reported at about
# 70 TFLOPS FP16 tensor (half rate with FP32 accumulate, like other GA102 parts; Baseten,
# "NVIDIA A10 vs A10G for ML model inference").  We use 70 TFLOPS: VTC's own A10G profile
# reaches 55-64 TFLOP/s on Llama-2-7B prefill, i.e. 80-90% of 70 (or an implausibly low ~50%
# of 125).  Only MFU depends on this choice; the fitted efficiency absorbs it in step times.
A10G = Hardware("A10G", peak_flops=70e12, mem_bandwidth=600e9, memory_bytes=24 * GiB)

HARDWARE = {"a10g": A10G, "a100": A100_80GB, "h100": H100_80GB}

# --- Models (Hugging Face config.json of meta-llama/Llama-2-*-hf; n_params = exact count) -----
LLAMA2_7B = ModelSpec(
    "Llama-2-7b", n_params=6_738_415_616, n_layers=32, d_model=4096, n_heads=32, n_kv_heads=32, d_ff=11008, vocab=32000
)
LLAMA2_13B = ModelSpec(
    "Llama-2-13b",
    n_params=13_015_864_320,
    n_layers=40,
    d_model=5120,
    n_heads=40,
    n_kv_heads=40,
    d_ff=13824,
    vocab=32000,
)
LLAMA2_70B = ModelSpec(
    "Llama-2-70b", n_params=68_976_648_192, n_layers=80, d_model=8192, n_heads=64, n_kv_heads=8, d_ff=28672, vocab=32000
)

# Llama-3.1-8B (Hugging Face config.json of meta-llama/Llama-3.1-8B): grouped-query attention
# with 8 KV heads, so a token's KV is a quarter of Llama-2-7B's; a 131,072-token context.
LLAMA31_8B = ModelSpec(
    "Llama-3.1-8b",
    n_params=8_030_261_248,
    n_layers=32,
    d_model=4096,
    n_heads=32,
    n_kv_heads=8,
    d_ff=14336,
    vocab=128256,
    max_context=131_072,
)

MODELS = {"llama2-7b": LLAMA2_7B, "llama2-13b": LLAMA2_13B, "llama2-70b": LLAMA2_70B, "llama3.1-8b": LLAMA31_8B}

# Tensor-parallel degree per model (70B: 4 GPUs; weights 138 GB do not fit one 80 GB GPU, and
# 4 leave room for a large KV cache).  The Vidur profiles are read at this degree.
TENSOR_PARALLEL = {"llama2-7b": 1, "llama2-13b": 1, "llama2-70b": 4, "llama3.1-8b": 1}

# --- Fitted constants -------------------------------------------------------------------------
# Produced by `python benchmarks/cost_model_error.py` (least squares on relative error) from
#  * ../shared/data/gpu-profiles (Vidur, MIT): linear-layer kernel times -> compute_efficiency,
#    memory_efficiency and the linear part of step_overhead_s, per (GPU, model, TP);
#    Llama-2-70B attention on A100 (TP 2) -> attention_efficiency, the attention part of
#    step_overhead_s and request_overhead_s, used for every A100 preset; H100 has no
#    attention data: attention_efficiency there assumes 1.5x the A100's attention throughput.
#  * the VTC artifact's A10G profile (fair_bench/cost_profile.json) -> the A10G constants, except
#    memory_eff (the A100's: that profile cannot tell bandwidth from fixed overhead) and
#    attention_eff (the A100's fraction of peak).
# 13B and Llama-3.1-8B have no profile: they use the Llama-2-7B constants of the same GPU (the same
# layer widths, 4,096; the 8B's linear layers and its GQA attention enter through the model shape).
CALIBRATION = {
    # (gpu, model): (compute_eff, attention_eff, memory_eff, step_overhead_s, request_overhead_s)
    ("a100", "llama2-7b"): (0.635, 0.2825, 0.765, 0.001367, 0.0),
    ("a100", "llama2-70b"): (0.6475, 0.2825, 0.728, 0.003659, 0.0),
    ("h100", "llama2-7b"): (0.5975, 0.1337, 0.795, 0.001374, 0.0),
    ("h100", "llama2-70b"): (0.5975, 0.1337, 0.791, 0.003079, 0.0),
    ("a10g", "llama2-7b"): (0.855, 0.2825, 0.765, 0.0, 4.71e-05),
}
CALIBRATION[("a100", "llama2-13b")] = CALIBRATION[("a100", "llama2-7b")]
CALIBRATION[("h100", "llama2-13b")] = CALIBRATION[("h100", "llama2-7b")]
CALIBRATION[("a100", "llama3.1-8b")] = CALIBRATION[("a100", "llama2-7b")]
CALIBRATION[("h100", "llama3.1-8b")] = CALIBRATION[("h100", "llama2-7b")]

# The calibrated presets round the roofline's knee: linear = (compute^2 + memory^2)^(1/2) instead of
# max(compute, memory); on Vidur's linear-layer kernels this lowers the median error from 4.5-8.6%
# to 2.3-5.5% and the p90 from 11-20% to 7-15% (docs/COST_MODEL.md compares both).
ROOFLINE_P = 2.0

GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization


@dataclass(frozen=True)
class EnginePreset:
    """Everything the simulated engine needs to know about the machine it imitates."""

    name: str
    hardware: Hardware
    model: ModelSpec
    cost_model: CostModel
    kv_capacity_tokens: int  # KV-cache pool, tokens
    max_running: int  # max_num_seqs: requests in the running batch
    max_batch_tokens: int  # token budget of one step (prefill + decode tokens)
    block_size: int = 16  # KV-cache block, tokens
    tensor_parallel: int = 1  # GPUs the model is split over (hardware is one of them)
    merge_interval_steps: int = 1  # new requests join the batch every this many decode steps
    mode: str = "vllm"  # "slora": replayed by engine/slora.py (VTC's S-LoRA router), not the simulator
    max_model_len: int | None = None  # context limit (vLLM's max_model_len); None: the model's

    def __post_init__(self):
        if self.max_model_len is None:
            object.__setattr__(self, "max_model_len", self.model.max_context)


def kv_capacity_tokens(
    hardware: Hardware, model: ModelSpec, tp: int = 1, utilization: float = GPU_MEMORY_UTILIZATION
) -> int:
    """KV tokens that fit: ``(tp * memory * utilization - weights) / kv_bytes_per_token``."""
    free = tp * hardware.memory_bytes * utilization - model.weight_bytes
    if free <= 0:
        raise ValueError(f"{model.name} does not fit {tp} x {hardware.name}")
    return int(free // model.kv_bytes_per_token)


def roofline_model(gpu: str, model: str) -> RooflineCostModel:
    """The calibrated roofline model of ``gpu`` running ``model`` at its tensor-parallel degree."""
    ce, ae, me, step, req = CALIBRATION[(gpu, model)]
    return RooflineCostModel(
        HARDWARE[gpu],
        MODELS[model],
        tp=TENSOR_PARALLEL[model],
        compute_efficiency=ce,
        attention_efficiency=ae,
        memory_efficiency=me,
        step_overhead_s=step,
        request_overhead_s=req,
        roofline_p=ROOFLINE_P,
    )


# vLLM 0.32's defaults for its OpenAI server (EngineArgs._set_default_args): max_num_seqs and
# max_num_batched_tokens are 1024 and 8192 on GPUs of 70 GiB or more other than the A100, else
# 256 and 2048.
VLLM_SERVER_LIMITS = {"h100": (1024, 8192)}
VLLM_SERVER_DEFAULT_LIMITS = (256, 2048)


def _vllm_preset(gpu: str, model: str) -> EnginePreset:
    """vLLM's server defaults for the GPU (``VLLM_SERVER_LIMITS``), chunked prefill, block 16."""
    hw, spec, tp = HARDWARE[gpu], MODELS[model], TENSOR_PARALLEL[model]
    max_running, max_batch_tokens = VLLM_SERVER_LIMITS.get(gpu, VLLM_SERVER_DEFAULT_LIMITS)
    return EnginePreset(
        name=f"{gpu}-{model}",
        hardware=hw,
        model=spec,
        cost_model=roofline_model(gpu, model),
        kv_capacity_tokens=kv_capacity_tokens(hw, spec, tp),
        max_running=max_running,
        max_batch_tokens=max_batch_tokens,
        tensor_parallel=tp,
    )


def _vtc_preset() -> EnginePreset:
    """The VTC paper's engine (S-LoRA on one A10G, Llama-2-7B), ALGORITHMS.md section 6.

    VTC-artifact fair_bench/launch_server.py and slora/server/api_server.py: --num-token 10000
    (KV pool), batch_max_tokens = max(int(pool / 6), max_req_total_len = 2048 + 1024) = 3072,
    running_max_req_size 1000; new requests are merged every 10 decode steps.
    """
    pool = 10_000
    floor = roofline_model("a10g", "llama2-7b").linear_time(1)  # a step reads all the weights
    cost = VTCProfileCostModel(model=LLAMA2_7B, hardware=A10G, min_step_s=float(floor))
    return EnginePreset(
        name="vtc-a10g-llama2-7b",
        hardware=A10G,
        model=LLAMA2_7B,
        cost_model=cost,
        kv_capacity_tokens=pool,
        max_running=1000,
        max_batch_tokens=max(pool // 6, 2048 + 1024),
        merge_interval_steps=10,
    )


def _slora_preset() -> EnginePreset:
    """S-LoRA mode (engine/slora.py): the VTC paper's server as its router schedules.

    VTC-artifact fair_bench/launch_server.py (--max_total_token_num 10000) and
    slora/server/api_server.py (batch_max_tokens = max(int(10000 / 6), 2048 + 1024) = 3072,
    running_max_req_size 1000, max_wait_tokens 10).  Step times: the A10G roofline fitted on
    VTC's A10G profile, plus the server's own per-step and per-request overheads
    (``SLORA_OVERHEADS``, fitted by benchmarks/fidelity.py --fit on the FCFS synthetic runs).
    """
    pool = 10_000
    step, per_request = SLORA_OVERHEADS
    cost = replace(roofline_model("a10g", "llama2-7b"), step_overhead_s=step, request_overhead_s=per_request)
    return EnginePreset(
        name="slora-a10g-llama2-7b",
        hardware=A10G,
        model=LLAMA2_7B,
        cost_model=cost,
        kv_capacity_tokens=pool,
        max_running=1000,
        max_batch_tokens=max(int(pool / 6), 2048 + 1024),
        merge_interval_steps=10,
        mode="slora",
    )


# S-LoRA's overheads on top of the A10G roofline (step_overhead_s, request_overhead_s): the
# router, RPC and detokenisation work of a real server step, which VTC's kernel-level profile
# does not see.  From `python benchmarks/fidelity.py --fit` (docs/COST_MODEL.md).
SLORA_OVERHEADS = (0.002, 7.5e-05)


PRESETS: dict[str, EnginePreset] = {
    p.name: p
    for p in [
        _vllm_preset("a10g", "llama2-7b"),
        _vllm_preset("a100", "llama2-7b"),
        _vllm_preset("a100", "llama2-13b"),
        _vllm_preset("a100", "llama2-70b"),
        _vllm_preset("h100", "llama2-7b"),
        _vllm_preset("h100", "llama2-13b"),
        _vllm_preset("h100", "llama2-70b"),
        _vllm_preset("a100", "llama3.1-8b"),
        _vllm_preset("h100", "llama3.1-8b"),
        _vtc_preset(),
        _slora_preset(),
    ]
}

# VTC's engine (A10G, Llama-2-7B, a 10,000-token KV pool), so that the synthetic suite
# overloads it as in the VTC paper and our numbers compare with theirs.
DEFAULT_PRESET = "vtc-a10g-llama2-7b"


def get_preset(name: str = DEFAULT_PRESET) -> EnginePreset:
    """The preset called ``name``; an ``InputError`` naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(
            f"unknown engine preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}", source="preset"
        ) from None
