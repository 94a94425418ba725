"""MoPE: a deterministic Mixture of Prediction Experts (ALGORITHMS.md section 4).

Predicts, before execution, a request's output length, TTFT, time per output token and
end-to-end latency, and an engine step's time, throughput and utilization, from what is
known then, and a calibrated high quantile of the output length (``output_quantile``).
Experts chosen by a fixed router (the prompt's category for requests, prefill-size bucket
for steps), each a small gradient-boosted tree model (an output-length expert: the single
model's trees plus its own, fitted to the residuals of its category); the single model,
VTC-predict's moving average and the training mean and median are the baselines.

* ``train(run_dirs, out_dir, holdout=0.2, seed=42)`` -> ``Report``; writes a bundle.
* ``evaluate(bundle_dir, run_dirs)`` -> ``Report`` on other logs.
* ``load_bundle(path, preset=None)`` -> ``Bundle``; ``bundle.session()`` -> ``Session``
  with ``predict``, ``predict_one``, ``observe``, ``arrive``, ``output_tokens``,
  ``output_quantile``, ``step`` and ``step_time``.

docs/PREDICTORS.md describes the features, the router, the bundle format and the numbers.
"""

from predictors.bundle import (
    REQUEST_TARGETS,
    STEP_TARGETS,
    Bundle,
    Prediction,
    Predictions,
    Session,
    StepPrediction,
    load_bundle,
)
from predictors.training import MODELS, Report, evaluate, train

__all__ = [
    "MODELS",
    "REQUEST_TARGETS",
    "STEP_TARGETS",
    "Bundle",
    "Prediction",
    "Predictions",
    "Report",
    "Session",
    "StepPrediction",
    "evaluate",
    "load_bundle",
    "train",
]
