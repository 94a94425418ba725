"""The CI gate: a TOML policy of thresholds, checked against every audited run.

Every key is optional; a check runs only when its key is set::

    max_service_diff = 1.0      # pair service difference, in multiples of the run's VTC bound
    min_jain = 0.9              # Jain's index (backlogged service rate)
    max_ttft_p99_s = 30.0       # p99 TTFT of every client, seconds
    max_starvation_s = 60.0     # longest wait of a backlogged client, seconds
    max_regression_pct = 10.0   # worst change against --baseline, percent
    regression_metrics = ["tokens_per_s", "jain", "ttft_p99"]  # default: all of reports.compare.METRICS

Each check of each run passes, fails or is skipped (an undefined value, or no
baseline run to compare with), with a one-line reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from reports.compare import METRICS, get
from traces.errors import InputError, read_toml


@dataclass(frozen=True)
class Policy:
    """Thresholds; None turns a check off."""

    max_service_diff: float | None = None
    min_jain: float | None = None
    max_ttft_p99_s: float | None = None
    max_starvation_s: float | None = None
    max_regression_pct: float | None = None
    regression_metrics: tuple[str, ...] = tuple(METRICS)

    def override(self, **values) -> Policy:
        """This policy with the given thresholds replaced where they are not None."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class Check:
    """One check of one run: ``status`` is pass, fail or skip; ``reason`` says what was measured."""

    run: str
    name: str
    status: str
    reason: str

    @property
    def line(self) -> str:
        return f"{self.run}: {self.reason}"


def load_policy(path) -> Policy:
    """Read and validate a policy file; any problem is an InputError naming the file and the key."""
    source = str(path)
    data = read_toml(path, "a TOML policy")
    known = [f.name for f in fields(Policy)]
    values = {}
    for key, value in data.items():
        if key not in known:
            raise InputError(f"unknown key {key!r}; expected one of {', '.join(known)}", source=source)
        if key == "regression_metrics":
            if not isinstance(value, list) or any(not isinstance(v, str) or v not in METRICS for v in value):
                raise InputError(f"{key}: expected a list of {', '.join(METRICS)}; got {value!r}", source=source)
            value = tuple(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise InputError(f"{key}: expected a non-negative number; got {value!r}", source=source)
        values[key] = value
    return Policy(**values)


def evaluate(runs: list[dict], policy: Policy) -> list[Check]:
    """Every check the policy sets, for every run summary, in run order."""
    checks = []
    for run in runs:
        for key, name, check in CHECKS:
            limit = getattr(policy, key)
            if limit is not None:
                status, reason = check(run, limit, policy)
                checks.append(Check(run=run["name"], name=name, status=status, reason=reason))
    return checks


def _service_diff(run: dict, limit: float, _) -> tuple[str, str]:
    diff, bound = run["fairness"]["pair_service_diff_max"], run["bound"]["value"]
    if bound is None:
        return "skip", "no request was served, so no VTC bound applies"
    text = f"pair_service_diff_max {diff:.1f} is {diff / bound:.3g}x the VTC bound {bound:g}"
    if diff > limit * bound:
        return "fail", f"{text}, over the allowed {limit:g}x"
    return "pass", f"{text}, within {limit:g}x"


def _jain(run: dict, limit: float, _) -> tuple[str, str]:
    jain = run["fairness"]["jain"]
    if jain is None:
        return "skip", "jain undefined: no client was ever backlogged"
    if jain < limit:
        return "fail", f"jain {_apart(jain, limit)} is below {limit:g}"
    return "pass", f"jain {_apart(jain, limit)} is at least {limit:g}"


def _apart(value: float, limit: float) -> str:
    """``value`` with 4 decimals, or as many more as it takes not to print it equal to ``limit``
    (0.89999 is not "0.9000 is below 0.9")."""
    for places in range(4, 17):
        text = f"{value:.{places}f}"
        if value == limit or float(text) != limit:
            return text
    return repr(value)


def _ttft_p99(run: dict, limit: float, _) -> tuple[str, str]:
    p99 = {c: get(info, ("latency", "ttft", "p99")) for c, info in run["clients"].items()}
    p99 = {c: v for c, v in p99.items() if v is not None}
    if not p99:
        return "skip", "no client had a finished request"
    over = [c for c, v in p99.items() if v > limit]
    worst, client = max((v, c) for c, v in p99.items())
    if over:
        return "fail", (
            f"ttft p99 of {len(over)} of {len(p99)} clients over {limit:g} s; worst {client} at {worst:.3f} s"
        )
    return "pass", f"ttft p99 of every client within {limit:g} s; worst {client} at {worst:.3f} s"


def _starvation(run: dict, limit: float, _) -> tuple[str, str]:
    s = run["starvation"]
    text = f"starvation {s['max_s']:.3f} s"
    if s["client"] is not None:
        text += f" ({s['client']}, backlogged from {s['from_s']:.3f} s to {s['to_s']:.3f} s)"
    if s["max_s"] > limit:
        return "fail", f"{text} over {limit:g} s"
    return "pass", f"{text} within {limit:g} s"


def _regression(run: dict, limit: float, policy: Policy) -> tuple[str, str]:
    base = run.get("baseline")
    if base is None or base["name"] is None:
        return "skip", base["reason"] if base else "no baseline given"
    deltas = [(name, base["metrics"][name]) for name in policy.regression_metrics]
    worse = [(d["regression_pct"], name, d) for name, d in deltas if (d["regression_pct"] or 0) > limit]
    if not worse:
        return "pass", f"no metric regressed more than {limit:g}% against {base['name']}"
    worst_first = sorted(worse, key=lambda w: w[0], reverse=True)
    parts = [f"{name} {_pct(d['change_pct'])} ({d['baseline']:.4g} -> {d['value']:.4g})" for _, name, d in worst_first]
    return "fail", f"regressed more than {limit:g}% against {base['name']}: " + ", ".join(parts)


def _pct(value: float) -> str:
    return f"{value:+.1f}%" if math.isfinite(value) else "from 0"


# policy key, check name (the JUnit test case), check
CHECKS = (
    ("max_service_diff", "service_diff", _service_diff),
    ("min_jain", "jain", _jain),
    ("max_ttft_p99_s", "ttft_p99", _ttft_p99),
    ("max_starvation_s", "starvation", _starvation),
    ("max_regression_pct", "regression", _regression),
)
