"""Scheduling policies, engine-agnostic, each in its own module.

``make_policy("vtc-oracle:0.2")`` builds one from a spec string: a name and an
optional parameter after ``:`` (or in parentheses, as the papers write it).
"""

from __future__ import annotations

import re
from dataclasses import replace

from schedulers.base import Policy, ServiceWeights
from schedulers.dlpm import DEFAULT_QUANTUM, DLPM
from schedulers.equinox import Equinox, EquinoxKnobs
from schedulers.fcfs import FCFS
from schedulers.lcf import LCF
from schedulers.rpm import RPM
from schedulers.vtc import VTC
from schedulers.vtc_predict import VTCOracle, VTCPredict
from traces.errors import InputError

POLICIES = {
    "fcfs": (FCFS, "first come, first served"),
    "vtc": (VTC, "Virtual Token Counter (weighted, with lift)"),
    "lcf": (LCF, "least counter first: VTC without the lift"),
    "vtc-predict": (VTCPredict, "VTC charging predicted output lengths (moving average, or MoPE with --predictors)"),
    "vtc-oracle": (VTCOracle, "VTC with oracle lengths, noise p: vtc-oracle:P (default 0)"),
    "rpm": (RPM, "per-client limit of N requests per minute, FCFS: rpm:N (default 5)"),
    "equinox": (Equinox, "Equinox: user + resource counters, Holistic Fairness (lengths: MoPE or moving average)"),
    "equinox-oracle": (Equinox, "Equinox with oracle output lengths"),
    "dlpm": (DLPM, f"deficit longest prefix match, quantum Q service units: dlpm:Q (default {DEFAULT_QUANTUM:g})"),
}

_SPEC = re.compile(r"^\s*([a-z][a-z0-9-]*)\s*(?::\s*([0-9.]+)|\(\s*([0-9.]+)\s*\))?\s*$")


def parse_spec(spec: str) -> tuple[str, float | None]:
    m = _SPEC.match(spec.lower())
    if not m or m.group(1) not in POLICIES:
        raise InputError(
            f"unknown scheduler {spec!r}; expected one of {', '.join(POLICIES)} "
            "(parameters as rpm:5, vtc-oracle:0.2 or dlpm:2048)",
            source="--scheduler",
        )
    param = m.group(2) or m.group(3)
    return m.group(1), (float(param) if param is not None else None)


def run_name(spec: str) -> str:
    """A directory-safe name for a scheduler spec: ``rpm:5`` -> ``rpm-5``."""
    name, param = parse_spec(spec)
    if param is None:
        return name
    return f"{name}-{param:g}"


def make_policy(
    spec: str,
    *,
    seed: int = 42,
    service: ServiceWeights = ServiceWeights(),
    equinox: EquinoxKnobs = EquinoxKnobs(),
    predictor=None,
) -> Policy:
    """Build a policy; ``equinox`` knobs and a ``predictor`` session apply to the policies that use them."""
    name, param = parse_spec(spec)
    cls = POLICIES[name][0]
    if param is not None and name not in ("rpm", "vtc-oracle", "dlpm"):
        raise InputError(f"scheduler {name!r} takes no parameter", source="--scheduler")
    if name.startswith("equinox"):
        lengths = "oracle" if name == "equinox-oracle" else ("predictor" if predictor is not None else "average")
        return Equinox(replace(equinox, lengths=lengths), predictor=predictor, service=service)
    if name == "rpm":
        if param is not None and (param < 1 or param != int(param)):
            raise InputError(f"rpm:N needs a whole number N >= 1, got {param:g}", source="--scheduler")
        return RPM(limit=int(param) if param is not None else 5, service=service)
    if name == "vtc-oracle":
        return VTCOracle(p=param or 0.0, seed=seed, service=service)
    if name == "dlpm":
        if param is not None and not param > 0:
            raise InputError(f"dlpm:Q needs a quantum Q > 0, got {param:g}", source="--scheduler")
        return DLPM(quantum=param if param is not None else DEFAULT_QUANTUM, service=service)
    if name == "vtc-predict":
        return VTCPredict(predictor=predictor, service=service)
    return cls(service=service)


__all__ = [
    "DLPM",
    "Equinox",
    "EquinoxKnobs",
    "POLICIES",
    "Policy",
    "ServiceWeights",
    "make_policy",
    "parse_spec",
    "run_name",
]
