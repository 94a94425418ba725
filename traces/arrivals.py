"""Seeded rules that give a trace the clients or arrival times its source lacks.

Each helper seeds its own generator with ``(seed, stream)`` so that assigning clients and
assigning arrivals with the same seed draw independent numbers.
"""

from __future__ import annotations

import math

import numpy as np

from traces.errors import InputError

CLIENT_DISTS = ("uniform", "zipf")
ARRIVAL_PROCESSES = ("poisson", "gamma")
_CLIENT_STREAM, _ARRIVAL_STREAM = 1, 2


def client_names(num_clients: int) -> np.ndarray:
    """``client-0`` .. ``client-{num_clients-1}`` as an object array."""
    return np.array([f"client-{k}" for k in range(num_clients)], dtype=object)


def assign_clients(
    n: int, num_clients: int, dist: str = "uniform", seed: int = 42, zipf_s: float = 1.0
) -> np.ndarray:
    """Draw a client for each of ``n`` requests, i.i.d.: uniform, or zipf with P(k) ∝ 1/(k+1)^s."""
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise InputError(f"must be an integer >= 1, got {num_clients!r}", source="clients")
    if dist not in CLIENT_DISTS:
        raise InputError(
            f"unknown client distribution {dist!r}; expected one of {', '.join(CLIENT_DISTS)}",
            source="client_dist",
        )
    if not (math.isfinite(zipf_s) and zipf_s >= 0):
        raise InputError(f"must be a number >= 0, got {zipf_s!r}", source="zipf_s")
    ranks = np.arange(num_clients)
    probs = np.ones(num_clients) if dist == "uniform" else 1.0 / (ranks + 1.0) ** zipf_s
    rng = np.random.default_rng([seed, _CLIENT_STREAM])
    picks = rng.choice(num_clients, size=n, p=probs / probs.sum())
    return client_names(num_clients)[picks]


def assign_arrivals(
    n: int, rate: float, process: str = "poisson", seed: int = 42, cv: float = 1.0
) -> np.ndarray:
    """Arrival times (s) of ``n`` requests at ``rate`` req/s, the first at 0.

    ``poisson`` draws exponential gaps; ``gamma`` draws gamma gaps with shape 1/cv^2 (mean
    1/rate, coefficient of variation ``cv``).  An infinite rate puts every request at 0.
    """
    if not (rate > 0):
        raise InputError(f"must be a number > 0 (requests/s), got {rate!r}", source="rate")
    if process not in ARRIVAL_PROCESSES:
        raise InputError(
            f"unknown arrival process {process!r}; expected one of {', '.join(ARRIVAL_PROCESSES)}",
            source="arrival",
        )
    if not (math.isfinite(cv) and cv > 0):
        raise InputError(f"must be a number > 0, got {cv!r}", source="cv")
    if math.isinf(rate):
        return np.zeros(n)
    shape = 1.0 if process == "poisson" else 1.0 / cv**2
    rng = np.random.default_rng([seed, _ARRIVAL_STREAM])
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=max(n - 1, 0))
    return np.concatenate([[0.0], np.cumsum(gaps)])[:n]
