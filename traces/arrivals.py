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
_CLIENT_STREAM, _ARRIVAL_STREAM, SHUFFLE_STREAM = 1, 2, 3


def client_names(num_clients: int) -> np.ndarray:
    """``client-0`` .. ``client-{num_clients-1}`` as an object array."""
    return np.array([f"client-{k}" for k in range(num_clients)], dtype=object)


def client_probs(num_clients: int, dist: str = "uniform", zipf_s: float = 1.0) -> np.ndarray:
    """Probabilities of client-0..N-1: uniform, or zipf with P(k) ∝ 1/(k+1)^s."""
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
    return probs / probs.sum()


def parse_clients(spec, dist: str = "uniform", zipf_s: float = 1.0) -> tuple[str | None, np.ndarray | None]:
    """(column, probabilities) of a client rule: ``from:COLUMN`` takes the client from a source
    column; ``N`` (drawn by ``dist``), ``uniform:N``, ``zipf:N`` and ``shares:0.5,0.3,0.2`` (fixed
    shares, normalised) give the probabilities of client-0, client-1, ...; None keeps the source's."""
    if spec is None:
        return None, None
    if isinstance(spec, (int, np.integer)):
        return None, client_probs(spec, dist, zipf_s)
    kind, _, value = str(spec).strip().partition(":")
    try:
        if not value and kind.isdigit():
            return None, client_probs(int(kind), dist, zipf_s)
        if kind == "from" and value:
            return value, None
        if kind in CLIENT_DISTS:
            return None, client_probs(int(value), kind, zipf_s)
        if kind == "shares":
            shares = np.array([float(v) for v in value.split(",")])
            if len(shares) and np.all(np.isfinite(shares)) and np.all(shares > 0):
                return None, shares / shares.sum()
    except ValueError:
        pass
    raise InputError(
        f"expected N, uniform:N, zipf:N, shares:A,B,... (each > 0) or from:COLUMN, got {spec!r}", source="clients"
    )


def draw_clients(n: int, probs: np.ndarray, seed: int = 42) -> np.ndarray:
    """Draw a client (client-k with probability ``probs[k]``) for each of ``n`` requests, i.i.d."""
    rng = np.random.default_rng([seed, _CLIENT_STREAM])
    return client_names(len(probs))[rng.choice(len(probs), size=n, p=probs)]


def assign_clients(n: int, num_clients: int, dist: str = "uniform", seed: int = 42, zipf_s: float = 1.0) -> np.ndarray:
    """Draw a client for each of ``n`` requests, i.i.d.: uniform, or zipf with P(k) ∝ 1/(k+1)^s."""
    return draw_clients(n, client_probs(num_clients, dist, zipf_s), seed)


def assign_arrivals(n: int, rate: float, process: str = "poisson", seed: int = 42, cv: float = 1.0) -> np.ndarray:
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
