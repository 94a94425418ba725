"""What a step costs, as Equinox learns it from the steps the engine reports.

``split`` divides one measured step among its requests by the engine's cost model (``StepCost``,
handed over by ``Equinox.bind_engine``): a prefill chunk's linear FLOPs and its attention over its
context, a decode's share of the weight read and its own KV read, every request's overhead, all
scaled so that the shares sum to the measured time.  The same scaled coefficients, smoothed over
steps, are the *terms* Equinox predicts with: a request's engine time at admission
(``request_time``), a step's time with more tokens in it (``grown``).  Without a cost model a
step is split per token computed.
"""

from __future__ import annotations

import numpy as np

EMA = 0.05  # smoothing of the measured step terms


class StepTerms:
    def __init__(self) -> None:
        self.step_s = 0.0  # a step's duration
        self.token_s = 0.0  # per prefill token (no cost model: per token computed)
        self.pair_s = 0.0  # per prefill query-key pair
        self.decode_s = 0.0  # per decode, besides its KV read
        self.kv_s = 0.0  # per KV token a decode reads
        self.request_s = 0.0  # per prefill request

    def observe(self, duration_s: float) -> None:
        """A step of ``duration_s`` ran (the smoothed step time)."""
        self.step_s += EMA * (duration_s - self.step_s) if self.step_s else duration_s

    def split(self, cost, duration_s: float, tokens, context, prompt) -> np.ndarray:
        """Each request's share of a step of ``duration_s``: ``tokens`` computed this step, on
        ``context`` tokens computed before it, of ``prompt`` (``cost`` None: per token)."""
        if cost is None:
            per_token = duration_s / float(tokens.sum())
            self.token_s += EMA * (per_token - self.token_s) if self.token_s else per_token
            return per_token * tokens
        decoding = (tokens == 1) & (context >= prompt)
        n_decode = int(np.count_nonzero(decoding))
        m = len(tokens)
        if n_decode == m:
            prefill_tokens, pairs = 0, 0.0
            decode_kv = float(context.sum()) + m
            decoding = True  # (request_seconds: every request decodes)
        else:
            prefill = ~decoding
            chunks, before = tokens[prefill], context[prefill]
            prefill_tokens = int(chunks.sum())
            pairs = float((chunks * (before + (chunks + 1) / 2)).sum())
            decode_kv = float(context[decoding].sum()) + n_decode
        split = cost.split(prefill_tokens, pairs, n_decode, decode_kv, m)
        shares = cost.request_seconds(split, tokens, context, decoding)
        modelled = float(shares.sum())
        scale = duration_s / modelled if modelled > 0 else 0.0
        pt, dt, pair, kv, pr, dr = split
        if self.kv_s or self.token_s:
            e = EMA
            if prefill_tokens:
                self.token_s += e * (pt * scale - self.token_s)
                self.pair_s += e * (pair * scale - self.pair_s)
                self.request_s += e * (pr * scale - self.request_s)
            if n_decode:
                self.decode_s += e * ((dt + dr) * scale - self.decode_s)
                self.kv_s += e * (kv * scale - self.kv_s)
        else:
            self.token_s, self.pair_s, self.request_s = pt * scale, pair * scale, pr * scale
            self.decode_s, self.kv_s = (dt + dr) * scale, kv * scale
        return shares * scale

    def request_time(self, prompt: float, out: float, modelled: bool) -> float:
        """The compute seconds of a request of ``prompt`` tokens and ``out`` output tokens (``modelled``:
        by the cost model's terms, else per token)."""
        if not modelled:
            return (prompt + out) * self.token_s
        compute = prompt * self.token_s + self.pair_s * prompt * (prompt + 1) / 2 + self.request_s
        return compute + out * (self.decode_s + self.kv_s * (prompt + out / 2))

    def grown(self, duration_s: float, extra: int) -> float:
        """A step of ``duration_s`` with ``extra`` more prefill tokens (one chunk)."""
        return duration_s + extra * self.token_s + self.pair_s * extra * (extra + 1) / 2
