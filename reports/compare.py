"""Deltas against a baseline: the headline metrics, which way is better, the change in percent.

A run's baseline is the baseline directory's only run, or else the run whose path ends in the
most of the same directories (``runs/b/vtc`` is compared with ``runs/a/vtc``; in a sweep,
``new/overload/seed-1/alpha-0/equinox`` with ``old/overload/seed-1/alpha-0/equinox``, not with
another cell's ``equinox``); no run when two baseline runs match equally well.  ``change_pct`` is
``(value - baseline) / |baseline|`` in percent; ``regression_pct`` is the same change
signed so that positive means worse.  From a baseline of 0 any change is infinite
(``None`` in JSON); a metric undefined on either side has no change.
"""

from __future__ import annotations

import math
from pathlib import Path

# name: (keys into a run summary, True when higher is better)
METRICS = {
    "tokens_per_s": (("throughput", "tokens_per_s"), True),
    "requests_per_s": (("throughput", "requests_per_s"), True),
    "utilization": (("utilization", "busy_fraction"), True),
    "jain": (("fairness", "jain"), True),
    "service_diff": (("fairness", "pair_service_diff_max"), False),
    "windowed_diff_mean": (("fairness", "windowed_diff", "mean"), False),
    "starvation_s": (("starvation", "max_s"), False),
    "ttft_p50": (("latency", "ttft", "p50"), False),
    "ttft_p99": (("latency", "ttft", "p99"), False),
    "tpot_p99": (("latency", "tpot", "p99"), False),
    "e2e_p99": (("latency", "e2e", "p99"), False),
}


def get(record: dict, keys) -> object:
    """``record[k1][k2]...``, None where a level is missing."""
    for key in keys:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def change(value, base, higher_is_better: bool) -> tuple[float | None, float | None]:
    """``(change_pct, regression_pct)`` of ``value`` against ``base``."""
    if value is None or base is None:
        return None, None
    if base == 0:
        pct = 0.0 if value == 0 else math.copysign(math.inf, value)
    else:
        pct = (value - base) / abs(base) * 100.0
    return pct, -pct if higher_is_better else pct


def against(run: dict, baseline_runs: list[dict]) -> dict:
    """The ``baseline`` entry of a run summary: which baseline run, and every metric's delta."""
    if len(baseline_runs) == 1:
        base = baseline_runs[0]
    else:
        parts = Path(run["path"]).parts
        shared = [_shared_tail(parts, Path(b["path"]).parts) for b in baseline_runs]
        best = max(shared)
        matches = [b for b, k in zip(baseline_runs, shared) if k == best]
        leaf = parts[-1]
        if best == 0:
            names = ", ".join(Path(b["path"]).name for b in baseline_runs)
            return {"name": None, "path": None, "reason": f"no baseline run named {leaf!r} (baseline has {names})"}
        if len(matches) > 1:
            names = ", ".join(b["name"] for b in matches)
            return {"name": None, "path": None, "reason": f"{leaf!r} matches several baseline runs equally ({names})"}
        base = matches[0]
    metrics = {}
    for name, (keys, higher) in METRICS.items():
        value, old = get(run, keys), get(base, keys)
        pct, worse = change(value, old, higher)
        metrics[name] = {"baseline": old, "value": value, "change_pct": pct, "regression_pct": worse}
    return {"name": base["name"], "path": base["path"], "metrics": metrics}


def _shared_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """How many trailing path parts ``a`` and ``b`` have in common."""
    k = 0
    while k < min(len(a), len(b)) and a[-1 - k] == b[-1 - k]:
        k += 1
    return k
