"""VTC with predicted output lengths: charge the prediction at admission, then
correct.  At admission charge ``(w_p * prompt + w_q * pred) / w``; during decode
charge only tokens beyond ``pred``; at completion refund ``(pred - actual) * w_q / w``
when positive.

* ``VTCPredict``: ``pred`` is the client's moving average of past output lengths
  (window 5: ``pred = (pred * 4 + actual) / 5``).  ALGORITHMS.md says the first
  request uses its actual length; the VTC artifact charges 0 for it.  We follow
  ALGORITHMS.md: a client with no finished request yet is charged its request's
  actual length, and its average starts at the first finished request's length.
  Given a ``predictor`` (a ``predictors.Session``), ``pred`` is its predicted output
  length instead, and every finished request is passed to its ``observe``.
* ``VTCOracle(p)``: ``pred ~ Uniform(actual * (1 - p), actual * (1 + p))``, seeded;
  p = 0 is a perfect oracle.
"""

from __future__ import annotations

import numpy as np

from schedulers.vtc import VTC
from traces.request import Request

WINDOW = 5


class _PredictedVTC(VTC):
    def predict(self, req: Request) -> float:
        raise NotImplementedError

    def admission_charge(self, req: Request) -> float:
        req.predicted_output = pred = self.predict(req)
        return self.service.w_p * req.prompt_tokens + self.service.w_q * pred

    def token_charges(self, tokens, k: int) -> np.ndarray:
        predicted = np.fromiter((r.predicted_output for r in tokens), dtype=np.float64, count=len(tokens))
        generated = tokens.generated
        return self.service.w_q * np.maximum(0.0, generated - np.maximum(generated - k, predicted))

    def finish_charge(self, req: Request) -> float:
        return -self.service.w_q * max(0.0, req.predicted_output - req.generated)


class VTCPredict(_PredictedVTC):
    name = "vtc-predict"

    def __init__(self, predictor=None, **kwargs):
        super().__init__(**kwargs)
        self.predictor = predictor
        self.average: dict[str, float] = {}

    def predict(self, req: Request) -> float:
        if self.predictor is not None:
            return self.predictor.predict_one(req).output_tokens
        return self.average.get(req.client, float(req.output_tokens))

    def on_finish(self, req: Request, now: float) -> None:
        super().on_finish(req, now)
        if self.predictor is not None:
            self.predictor.observe(req)
            return
        old = self.average.get(req.client)
        actual = float(req.generated)
        self.average[req.client] = actual if old is None else (old * (WINDOW - 1) + actual) / WINDOW

    def describe(self) -> dict:
        if self.predictor is not None:
            return {**super().describe(), "predictor": self.predictor.describe()}
        return {**super().describe(), "predictor": "moving-average", "window": WINDOW}


class VTCOracle(_PredictedVTC):
    name = "vtc-oracle"

    def __init__(self, p: float = 0.0, seed: int = 42, **kwargs):
        super().__init__(**kwargs)
        if p < 0:
            raise ValueError("oracle noise p must be >= 0")
        self.p = p
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def predict(self, req: Request) -> float:
        actual = float(req.output_tokens)
        if self.p == 0:
            return actual
        return float(self._rng.uniform(actual * (1 - self.p), actual * (1 + self.p)))

    def describe(self) -> dict:
        return {**super().describe(), "p": self.p, "seed": self.seed}
