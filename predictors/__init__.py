"""MoPE: a deterministic Mixture of Prediction Experts (ALGORITHMS.md section 4).

Predicts, before execution, a request's output length, TTFT, time per output token and
end-to-end latency, and an engine step's time, throughput and utilization, from what is
known then.  Three experts per target, chosen by a fixed router (prompt-length bucket for
requests, prefill-size bucket for steps), each a small gradient-boosted tree model; a
single model of the same family and VTC-predict's moving average are the baselines.

* ``train(run_dirs, out_dir, holdout=0.2, seed=42)`` -> ``Report``; writes a bundle.
* ``evaluate(bundle_dir, run_dirs)`` -> ``Report`` on other logs.
* ``load_bundle(path, preset=None)`` -> ``Bundle``; ``bundle.session()`` -> ``Session``
  with ``predict``, ``predict_one``, ``observe``, ``step`` and ``step_time``.

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
