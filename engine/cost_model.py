"""Step-time models for the simulated engine (ALGORITHMS.md section 8).

A step processes ``prefill_tokens`` prompt tokens (possibly chunks of several
requests) and ``decode_tokens`` decode tokens (one per running decode request).
Every model here answers, for one step or for numpy arrays of steps:

* ``step_time(prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens,
  num_requests)``: seconds;
* ``step_flops(...)``: model FLOPs of the step (for MFU = flops / time / peak);
* ``kv_bytes_per_token``: KV-cache bytes one token occupies.

``prefill_attn_pairs`` is the number of query-key pairs of the step's prefill
chunks, ``sum(chunk * (context_before_chunk + (chunk + 1) / 2))`` (causal
attention inside the chunk, full attention to the context before it);
``decode_kv_tokens`` is the sum of the KV lengths the decode requests read.
``prefill_attn_pairs(...)`` computes it.

``RooflineCostModel`` is the physical model, calibrated against Vidur's measured
kernel times (see benchmarks/cost_model_error.py and docs/COST_MODEL.md).
``VTCProfileCostModel`` is the VTC artifact's fitted A10G / Llama-2-7B cost function
turned into a step time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Protocol, Union

import numpy as np

ArrayLike = Union[float, int, np.ndarray]


@dataclass(frozen=True)
class Hardware:
    """One accelerator. Throughputs are datasheet peaks; efficiencies live in the cost model."""

    name: str
    peak_flops: float  # dense fp16/bf16 tensor FLOP/s
    mem_bandwidth: float  # bytes/s
    memory_bytes: float  # device memory, bytes


@dataclass(frozen=True)
class ModelSpec:
    """A dense decoder-only transformer (Llama-2 shape: gated MLP, optional GQA)."""

    name: str
    n_params: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab: int
    bytes_per_param: int = 2
    max_context: int = 4096  # the model's context window (config.json max_position_embeddings)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def layer_params(self) -> int:
        """Weights of the transformer blocks' linear layers (QKV, O, gate/up, down), all layers."""
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        per_layer = d * (d + 2 * kv) + d * d + 3 * d * self.d_ff
        return self.n_layers * per_layer

    @property
    def linear_params(self) -> int:
        """Parameters multiplied with every token: all but the input embedding (a table lookup)."""
        return self.n_params - self.vocab * self.d_model

    @property
    def weight_bytes(self) -> int:
        """All weights resident on the devices."""
        return self.n_params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, fp16."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * 2


class CostModel(Protocol):
    """What the engine needs from a step-time model."""

    @property
    def kv_bytes_per_token(self) -> int: ...

    @property
    def peak_flops(self) -> float: ...  # MFU = step_flops / step_time / peak_flops

    def step_time(
        self,
        prefill_tokens: ArrayLike,
        prefill_attn_pairs: ArrayLike,
        decode_tokens: ArrayLike,
        decode_kv_tokens: ArrayLike,
        num_requests: ArrayLike,
    ) -> ArrayLike: ...

    def step_flops(
        self,
        prefill_tokens: ArrayLike,
        prefill_attn_pairs: ArrayLike,
        decode_tokens: ArrayLike,
        decode_kv_tokens: ArrayLike,
    ) -> ArrayLike: ...


def prefill_attn_pairs(chunk_len: ArrayLike, context_before: ArrayLike = 0) -> ArrayLike:
    """Query-key pairs of one prefill chunk: ``chunk * (context + (chunk + 1) / 2)``.

    Sum the result over a step's chunks to get ``step_time``'s ``prefill_attn_pairs``.
    """
    c = np.asarray(chunk_len, dtype=float)
    out = c * (np.asarray(context_before, dtype=float) + (c + 1.0) / 2.0)
    return _ret(out)


_PLAIN = (int, float)


def _scalars(*values) -> bool:
    """All plain Python numbers: the step path evaluates one step in plain floats, the same
    operations in the same order as the numpy path (numpy's overhead would dominate a step)."""
    for v in values:
        if type(v) not in _PLAIN:
            return False
    return True


def _ret(x: np.ndarray) -> ArrayLike:
    """Scalars in, float out; arrays in, array out."""
    return float(x) if np.ndim(x) == 0 else x


def roofline(compute_s: ArrayLike, memory_s: ArrayLike, p: float = np.inf) -> np.ndarray:
    """Combine compute and memory times: ``max`` for ``p = inf``, else ``(c^p + m^p)^(1/p)``.

    The textbook roofline is the max; a finite ``p`` rounds its knee, where real kernels are
    neither purely compute- nor memory-bound (``p = 2`` fits Vidur's measured GEMMs, see
    docs/COST_MODEL.md).
    """
    c = np.asarray(compute_s, dtype=float)
    m = np.asarray(memory_s, dtype=float)
    if np.isinf(p):
        return np.maximum(c, m)
    if p == 2.0:
        return np.sqrt(c * c + m * m)
    # numpy's vectorised pow may round differently from one element at a time: go through libm
    # for every element, so a step costs the same alone (the step path) or in a stretch.
    both = np.broadcast_arrays(c, m)
    out = [(x**p + y**p) ** (1.0 / p) for x, y in zip(both[0].ravel().tolist(), both[1].ravel().tolist())]
    return np.array(out, dtype=float).reshape(both[0].shape)


def model_flops(
    model: ModelSpec,
    prefill_tokens: ArrayLike,
    prefill_attn_pairs: ArrayLike,
    decode_tokens: ArrayLike,
    decode_kv_tokens: ArrayLike,
) -> ArrayLike:
    """Model FLOPs of a step: 2 FLOPs per linear weight per token, 4*d_model per layer per query-key pair."""
    if _scalars(prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens):
        tokens = float(prefill_tokens) + float(decode_tokens)
        pairs = float(prefill_attn_pairs) + float(decode_kv_tokens)
        return 2.0 * model.linear_params * tokens + 4.0 * model.d_model * model.n_layers * pairs
    tokens = np.asarray(prefill_tokens, dtype=float) + np.asarray(decode_tokens, dtype=float)
    pairs = np.asarray(prefill_attn_pairs, dtype=float) + np.asarray(decode_kv_tokens, dtype=float)
    out = 2.0 * model.linear_params * tokens + 4.0 * model.d_model * model.n_layers * pairs
    return _ret(out)


@dataclass(frozen=True)
class RooflineCostModel:
    """Roofline step time with fitted efficiencies.

    ``step_time = linear + attention + step_overhead_s + request_overhead_s * num_requests``

    * linear layers (one fused pass over all the step's tokens): the roofline (``roofline``,
      a max for ``roofline_p = inf``) of compute ``2 * linear_params * tokens / (P * compute_eff)``
      and weight reads ``bytes_per_param * linear_params / (B * memory_eff)`` (once per step);
    * attention, which runs as separate kernels after the linear layers: prefill attention
      is compute-bound, ``4 * d_model * n_layers * pairs / (P * attention_eff)``; decode
      attention is memory-bound, ``kv_bytes_per_token * decode_kv_tokens / (B * memory_eff)``;

    with ``P = tp * peak_flops`` and ``B = tp * mem_bandwidth`` (tensor parallelism splits
    every weight and head evenly; its all-reduces are not modelled).  A step with no token
    takes no time.
    """

    hardware: Hardware
    model: ModelSpec
    tp: int = 1
    compute_efficiency: float = 0.7
    attention_efficiency: float = 0.3
    memory_efficiency: float = 0.75
    step_overhead_s: float = 0.0
    request_overhead_s: float = 0.0
    roofline_p: float = np.inf  # inf: max(compute, memory); the calibrated presets use 2

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model.kv_bytes_per_token

    @property
    def peak_flops(self) -> float:
        """Aggregate dense peak of the ``tp`` devices (the MFU denominator)."""
        return self.tp * self.hardware.peak_flops

    def linear_time(self, tokens: ArrayLike) -> ArrayLike:
        """Linear layers (QKV, O, MLP, LM head) over ``tokens`` tokens; no overhead."""
        n = np.asarray(tokens, dtype=float)
        compute = 2.0 * self.model.linear_params * n / (self.peak_flops * self.compute_efficiency)
        memory = (
            self.model.linear_params
            * self.model.bytes_per_param
            / (self.tp * self.hardware.mem_bandwidth * self.memory_efficiency)
        )
        return _ret(np.where(n > 0, roofline(compute, memory, self.roofline_p), 0.0))

    def attention_time(self, prefill_attn_pairs: ArrayLike, decode_kv_tokens: ArrayLike) -> ArrayLike:
        """Prefill attention (compute) plus decode attention (KV reads); no overhead."""
        m = self.model
        pairs = np.asarray(prefill_attn_pairs, dtype=float)
        kv = np.asarray(decode_kv_tokens, dtype=float)
        prefill = 4.0 * m.d_model * m.n_layers * pairs / (self.peak_flops * self.attention_efficiency)
        decode = m.kv_bytes_per_token * kv / (self.tp * self.hardware.mem_bandwidth * self.memory_efficiency)
        return _ret(prefill + decode)

    def step_time(
        self,
        prefill_tokens: ArrayLike,
        prefill_attn_pairs: ArrayLike,
        decode_tokens: ArrayLike,
        decode_kv_tokens: ArrayLike,
        num_requests: ArrayLike,
    ) -> ArrayLike:
        if _scalars(prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens, num_requests):
            return self._step_time_scalar(prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens,
                                          num_requests)  # fmt: skip
        tokens = np.asarray(prefill_tokens, dtype=float) + np.asarray(decode_tokens, dtype=float)
        t = (
            np.asarray(self.linear_time(tokens))
            + np.asarray(self.attention_time(prefill_attn_pairs, decode_kv_tokens))
            + self.step_overhead_s
            + self.request_overhead_s * np.asarray(num_requests, dtype=float)
        )
        return _ret(np.where(tokens > 0, t, 0.0))

    @cached_property
    def _terms(self) -> tuple:
        """The constant factors of the scalar path, each evaluated as the array path evaluates it
        (left to right), so that the results agree bit for bit."""
        m, hw = self.model, self.hardware
        return (
            2.0 * m.linear_params,  # FLOPs per token of the linear layers
            self.peak_flops * self.compute_efficiency,
            m.linear_params * m.bytes_per_param / (self.tp * hw.mem_bandwidth * self.memory_efficiency),
            4.0 * m.d_model * m.n_layers,  # FLOPs per query-key pair
            self.peak_flops * self.attention_efficiency,
            m.kv_bytes_per_token,
            self.tp * hw.mem_bandwidth * self.memory_efficiency,
        )

    def _linear_scalar(self, tokens: float) -> float:
        """The linear layers' time for ``tokens`` tokens: the roofline of their FLOPs and the weight read."""
        linear_flops, compute_rate, memory, *_ = self._terms
        compute = linear_flops * tokens / compute_rate
        p = self.roofline_p
        if p == 2.0:
            return math.sqrt(compute * compute + memory * memory)
        if math.isinf(p):
            return max(compute, memory)
        return (compute**p + memory**p) ** (1.0 / p)

    def _step_time_scalar(self, prefill_tokens, pairs, decode_tokens, decode_kv, num_requests) -> float:
        """``step_time`` of one step in plain floats, operation for operation."""
        tokens = float(prefill_tokens) + float(decode_tokens)
        if not tokens > 0:
            return 0.0
        linear = self._linear_scalar(tokens)
        _, _, _, pair_flops, attention_rate, kv_bytes, bandwidth = self._terms
        prefill = pair_flops * float(pairs) / attention_rate
        decode = kv_bytes * float(decode_kv) / bandwidth
        return linear + (prefill + decode) + self.step_overhead_s + self.request_overhead_s * float(num_requests)

    def step_flops(
        self,
        prefill_tokens: ArrayLike,
        prefill_attn_pairs: ArrayLike,
        decode_tokens: ArrayLike,
        decode_kv_tokens: ArrayLike,
    ) -> ArrayLike:
        if _scalars(prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens):  # as model_flops
            linear_flops, _, _, pair_flops, *_ = self._terms
            tokens = float(prefill_tokens) + float(decode_tokens)
            pairs = float(prefill_attn_pairs) + float(decode_kv_tokens)
            return linear_flops * tokens + pair_flops * pairs
        return model_flops(self.model, prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens)

    def split(self, prefill_tokens, prefill_pairs, decode_tokens, decode_kv, num_requests) -> tuple:
        """``step_split``'s coefficients: the linear layers' time per token, attention per pair and
        per KV token read, the overheads per request (the per-step one shared evenly)."""
        tokens = float(prefill_tokens) + float(decode_tokens)
        if not tokens > 0:
            return (0.0,) * 6
        linear = self._linear_scalar(tokens)
        _, _, _, pair_flops, attention_rate, kv_bytes, bandwidth = self._terms
        per_token = linear / tokens
        per_request = self.request_overhead_s + self.step_overhead_s / max(float(num_requests), 1.0)
        return (per_token, per_token, pair_flops / attention_rate, kv_bytes / bandwidth, per_request, per_request)

    def decode_split(self, duration_s, decode_tokens, decode_kv) -> tuple:
        """A pure decode step of ``decode_tokens`` requests reading ``decode_kv`` keys in all, that took
        ``duration_s`` (floats or arrays of steps): ``(common, kv)``, each decode's share being
        ``common + kv * (its context + 1)``."""
        *_, kv_bytes, bandwidth = self._terms
        kv = kv_bytes / bandwidth
        return (duration_s - kv * decode_kv) / decode_tokens, kv


# VTC's fitted cost function, Ying1123/VTC-artifact, slora/server/router/req_queue.py,
# ReqQueue.cost_func_profile: h(x, y) = a*x + b*y + c*x*y + d*y^2 + e, in milliseconds, for a
# request with x input and y output tokens.  Fitted (scipy curve_fit) by
# fair_bench/profile_cost_function.py on Llama-2-7B (huggyllama/llama-7b, dummy weights) on an
# A10G with a 10,000-token KV pool: h = (prefill + decode time of a batch of
# bs = pool // (x + y) such requests) / bs, measured data in fair_bench/cost_profile.json.
VTC_A10G_LLAMA2_7B_MS = (0.21001891, 0.10075395, 0.0039868, 0.00324733, 1.14601454)


@lru_cache(maxsize=None)
def vtc_kv_coefficient_ms(
    coef: tuple[float, float, float, float, float] = VTC_A10G_LLAMA2_7B_MS,
    inputs=(8, 64, 256, 512),
    outputs=(64, 128, 196, 256),
) -> float:
    """One per-KV-token decode coefficient (ms) standing in for VTC's ``c*x + 2*d*y`` terms.

    The VTC formula charges the y-th output token ``b + c*x + d*(2y - 1)``: prompt and
    generated context at different rates (c = 0.0040 vs 2d = 0.0065 ms/token). A step only
    knows the total KV length ``x + y - 1``, so we use the k that best reproduces the formula's
    total decode cost ``c*x*y + d*y^2`` by ``k * sum_i (x + i - 1)`` (relative least squares)
    over the grid VTC profiled (fair_bench/profile_cost_function.py: focus inputs, outputs).
    """
    _, _, c, d, _ = coef
    x, y = np.meshgrid(np.asarray(inputs, float), np.asarray(outputs, float))
    target = c * x * y + d * y * y
    basis = x * y + y * (y - 1) / 2.0
    r = basis / target
    return float(np.sum(r) / np.sum(r * r))


@dataclass(frozen=True)
class VTCProfileCostModel:
    """VTC's profiled A10G cost function as a step time.

    The VTC cost ``h(x, y)`` (ms, see ``VTC_A10G_LLAMA2_7B_MS``) splits into a prefill part
    ``a*x + e`` and a per-decode-token part ``b + c*x + d*(2y - 1)``.  Per step:

    ``max(min_step_s, (a * prefill_tokens + e * prefill_requests + b * decode_tokens
    + k * decode_kv_tokens) / 1000)``

    with ``prefill_requests = num_requests - decode_tokens`` (every decode request contributes
    one decode token) and ``k = vtc_kv_coefficient_ms()``.  ``prefill_attn_pairs`` is ignored:
    the VTC fit has no quadratic prompt term.  The costs are per request *amortised over a
    full 10,000-token pool*, so a nearly empty batch would come out far too cheap; ``min_step_s``
    (the preset uses the A10G roofline's weight-read time) is the floor no step goes under.
    """

    model: ModelSpec
    hardware: Hardware
    coefficients_ms: tuple[float, float, float, float, float] = VTC_A10G_LLAMA2_7B_MS
    min_step_s: float = 0.0

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model.kv_bytes_per_token

    @property
    def peak_flops(self) -> float:
        return self.hardware.peak_flops

    @property
    def kv_coefficient_ms(self) -> float:
        return vtc_kv_coefficient_ms(self.coefficients_ms)

    def request_cost_ms(self, input_len: ArrayLike, output_len: ArrayLike) -> ArrayLike:
        """VTC's ``cost_func_profile(x, y)`` exactly, in milliseconds."""
        a, b, c, d, e = self.coefficients_ms
        x = np.asarray(input_len, dtype=float)
        y = np.asarray(output_len, dtype=float)
        return _ret(a * x + b * y + c * x * y + d * y * y + e)

    def step_time(
        self,
        prefill_tokens: ArrayLike,
        prefill_attn_pairs: ArrayLike,
        decode_tokens: ArrayLike,
        decode_kv_tokens: ArrayLike,
        num_requests: ArrayLike,
    ) -> ArrayLike:
        a, b, _, _, e = self.coefficients_ms
        if _scalars(prefill_tokens, decode_tokens, decode_kv_tokens, num_requests):
            p, dec = float(prefill_tokens), float(decode_tokens)
            n_prefill = max(float(num_requests) - dec, 0.0)
            ms = a * p + e * n_prefill + b * dec + self.kv_coefficient_ms * float(decode_kv_tokens)
            return max(self.min_step_s, ms / 1000.0) if p + dec > 0 else 0.0
        p = np.asarray(prefill_tokens, dtype=float)
        dec = np.asarray(decode_tokens, dtype=float)
        kv = np.asarray(decode_kv_tokens, dtype=float)
        n_prefill = np.maximum(np.asarray(num_requests, dtype=float) - dec, 0.0)
        ms = a * p + e * n_prefill + b * dec + self.kv_coefficient_ms * kv
        t = np.maximum(self.min_step_s, ms / 1000.0)
        return _ret(np.where(p + dec > 0, t, 0.0))

    def step_flops(
        self,
        prefill_tokens: ArrayLike,
        prefill_attn_pairs: ArrayLike,
        decode_tokens: ArrayLike,
        decode_kv_tokens: ArrayLike,
    ) -> ArrayLike:
        return model_flops(self.model, prefill_tokens, prefill_attn_pairs, decode_tokens, decode_kv_tokens)

    def split(self, prefill_tokens, prefill_pairs, decode_tokens, decode_kv, num_requests) -> tuple:
        """``step_split``'s coefficients: VTC's terms per prefill token (a), prefill request (e),
        decode (b) and KV token (k), scaled when the step is held at ``min_step_s``."""
        a, b, _, _, e = self.coefficients_ms
        k = self.kv_coefficient_ms
        p, dec = float(prefill_tokens), float(decode_tokens)
        n_prefill = max(float(num_requests) - dec, 0.0)
        ms = a * p + e * n_prefill + b * dec + k * float(decode_kv)
        if not (p + dec > 0 and ms > 0):
            return (0.0,) * 6
        scale = max(self.min_step_s, ms / 1000.0) / ms  # seconds per modelled millisecond
        return (a * scale, b * scale, 0.0, k * scale, e * scale, 0.0)

    def decode_split(self, duration_s, decode_tokens, decode_kv) -> tuple:
        """As ``RooflineCostModel.decode_split``."""
        _, b, _, _, _ = self.coefficients_ms
        k = self.kv_coefficient_ms
        scale = duration_s / (b * decode_tokens + k * decode_kv)
        return b * scale, k * scale


# -- a step's time split among its requests (Equinox's RFC, requests.parquet's engine_seconds) ----------
# Each request of a step is charged its own terms of the cost model's step time: a prefill chunk of n
# tokens at context c its share of the linear layers (n of the step's tokens) plus its attention pairs
# n * (c + (n + 1) / 2); a decode at context c (c + 1 keys read) one token's share of the linear layers
# plus reading its own KV; every request its per-request overhead and an equal part of the per-step
# one.  ``step_split`` gives the coefficients of those terms for one step, ``request_seconds`` applies
# them; the shares of a step's requests sum to its step time.


def step_split(cost, prefill_tokens, prefill_pairs, decode_tokens, decode_kv, num_requests) -> tuple:
    """``(prefill_token, decode_token, pair, kv, prefill_request, decode_request)``: seconds per
    prefill token, per decode token, per prefill query-key pair, per decode KV token read, and per
    prefill and per decode request, for one step with these totals.  A cost model may define its
    own ``split``; any other is split per token computed."""
    split = getattr(cost, "split", None)
    if split is not None:
        return split(prefill_tokens, prefill_pairs, decode_tokens, decode_kv, num_requests)
    tokens = float(prefill_tokens) + float(decode_tokens)
    if not tokens > 0:
        return (0.0,) * 6
    t = float(cost.step_time(prefill_tokens, prefill_pairs, decode_tokens, decode_kv, num_requests)) / tokens
    return (t, t, 0.0, 0.0, 0.0, 0.0)


def request_seconds(coefficients: tuple, tokens: np.ndarray, context: np.ndarray, decoding: np.ndarray) -> np.ndarray:
    """Each request's share of a step, from ``step_split``'s coefficients: ``tokens`` computed this
    step, ``context`` tokens computed before it, ``decoding`` (bool) for a decode (``True``: every
    request decodes)."""
    pt, dt, pair, kv, pr, dr = coefficients
    c = np.asarray(context, dtype=np.float64)
    if decoding is True:  # every request decodes (one token each): the decode terms alone
        decode = c + 1.0
        decode *= kv
        decode += dt  # (dt * 1 + kv * (c + 1)) + dr, the same operations as below
        decode += dr
        return decode
    n = np.asarray(tokens, dtype=np.float64)
    prefill = pt * n + pair * n * (c + (n + 1.0) / 2.0) + pr
    decode = dt * n + kv * (c + 1.0) + dr
    return np.where(decoding, decode, prefill)


class StepCost:
    """A cost model as a policy sees it (``Policy.bind_engine``): how one step's time splits among
    its requests (``split``, then ``request_seconds``; see ``step_split``).  A policy that charges
    engine time reads this, not ``engine``: the engine hands it over."""

    __slots__ = ("model",)

    def __init__(self, model) -> None:
        self.model = model

    def split(self, prefill_tokens, prefill_pairs, decode_tokens, decode_kv, num_requests) -> tuple:
        """``step_split`` of a step with these totals."""
        return step_split(self.model, prefill_tokens, prefill_pairs, decode_tokens, decode_kv, num_requests)

    request_seconds = staticmethod(request_seconds)


def decode_split(cost, duration_s, decode_tokens, decode_kv) -> tuple:
    """``(common, kv)`` of a pure decode step (see ``RooflineCostModel.decode_split``); a cost model
    without one splits the step evenly."""
    split = getattr(cost, "decode_split", None)
    if split is not None:
        return split(duration_s, decode_tokens, decode_kv)
    return duration_s / decode_tokens, 0.0 * duration_s
