"""VTC's synthetic workload suite (docs/DESIGN.md, Workloads), by exact name.

Semantics follow the VTC artifact (``fair_bench/trace.py``):

* "uniform" (paced) streams send ``int(rate * duration)`` requests exactly ``1/rate`` apart,
  the k-th (k = 1, 2, ...) at ``(phase + k) / rate`` with a random phase in [0, 1); the last
  one may land up to one gap past the duration.
* on/off clients (client 0) are on for 60 s, then off for 60 s, starting on: a request whose
  time falls in an off window is dropped (so an on/off client sends about half its count).
* "poisson" workloads draw ``int(sum(rates) * duration)`` requests with exponential gaps at
  the total rate and give each to client 1 with probability rate_1 / total, else client 0.
* "increase" ramps client 1's rate linearly from 0.2 to 2 req/s over the duration; its k-th
  request arrives where the cumulative rate reaches ``phase + k``.

The seed drives every random draw (phases, client picks, gaps), so a seed fixes the table.
``duration_scale`` stretches each workload's duration (the on/off period stays 60 s).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pyarrow as pa

from traces.arrivals import client_names
from traces.errors import InputError
from traces.schema import make_table

ON_OFF_PERIOD_S = 60.0
LENGTHS = (256, 256)
SHORT_LONG_RATES = (8.0, 1.5)
INCREASE_RATES = (0.5, 2.0)  # client 0's steady rate; client 1's rate at the end of the ramp
RAMP_START_RATE = 0.2


class Stream(NamedTuple):
    """One client's requests: arrival times and (constant) prompt/output lengths."""

    client: int
    arrival_s: np.ndarray
    prompt_tokens: int
    output_tokens: int


Builder = Callable[[np.random.Generator, float], list[Stream]]


def _count(rate: float, duration: float) -> int:
    """Requests a stream sends: int(rate * duration), robust to float round-off."""
    return int(rate * duration + 1e-9)


def _paced(rng: np.random.Generator, rate: float, duration: float, start: float = 0.0):
    """A VTC "uniform" stream: 1/rate apart after a random phase, from ``start``."""
    phase = rng.random()
    return start + (phase + np.arange(1, _count(rate, duration) + 1)) / rate


def _on(times: np.ndarray) -> np.ndarray:
    """Mask of times inside an on window (on first, then alternating every 60 s)."""
    return np.floor(times / ON_OFF_PERIOD_S).astype(np.int64) % 2 == 0


def _uniform(rates, *, on_off: bool = False, start: float = 0.0) -> Builder:
    def build(rng, duration):
        streams = []
        for client, rate in enumerate(rates):
            times = _paced(rng, rate, duration, start)
            if on_off and client == 0:
                times = times[_on(times)]
            streams.append(Stream(client, times, *LENGTHS))
        return streams

    return build


def _short_long(lengths) -> Builder:
    def build(rng, duration):
        total = sum(SHORT_LONG_RATES)
        n = _count(total, duration)
        times = np.cumsum(rng.exponential(1.0 / total, size=n))
        to_client_1 = rng.random(n) > SHORT_LONG_RATES[0] / total
        return [
            Stream(0, times[~to_client_1], *lengths[0]),
            Stream(1, times[to_client_1], *lengths[1]),
        ]

    return build


def _increase(rng, duration):
    """Client 0 paced at 0.5 req/s; client 1 ramping 0.2 -> 2 req/s (inverted cumulative rate)."""
    r0, r1 = RAMP_START_RATE, INCREASE_RATES[1]
    slope = (r1 - r0) / duration
    count = _count(0.5 * (r0 + r1), duration)
    targets = rng.random() + np.arange(1, count + 1)  # cumulative rate r0*t + slope*t^2/2
    ramp = (np.sqrt(r0**2 + 2.0 * slope * targets) - r0) / slope
    return [Stream(0, _paced(rng, INCREASE_RATES[0], duration), *LENGTHS), Stream(1, ramp, *LENGTHS)]


def _dist_shift(rng, duration):
    """Three equal phases: on/off 0.5 vs 2, then 1 vs 1, then 0.5 vs 1.5 req/s."""
    third = duration / 3
    phases = [
        _uniform((0.5, 2.0), on_off=True),
        _uniform((1.0, 1.0), start=third),
        _uniform((0.5, 1.5), start=2 * third),
    ]
    return [stream for phase in phases for stream in phase(rng, third)]


# name -> (duration in s, builder, weights by client or None, description)
_SUITE: dict[str, tuple[float, Builder, tuple | None, str]] = {
    "overload": (360, _uniform((1.5, 3.0)), None, "2 clients, uniform 1.5 and 3 req/s, 6 min"),
    "overload-multi": (
        360,
        _uniform((0.4,) * 3 + (0.6,) * 5),
        None,
        "8 clients, uniform 0.4 req/s x3 and 0.6 req/s x5, 6 min",
    ),
    "overload-weighted": (
        360,
        _uniform((0.8, 0.8, 1.2, 1.6)),
        (1.0, 2.0, 3.0, 4.0),
        "4 clients, uniform 0.8, 0.8, 1.2, 1.6 req/s, weights 1-4, 6 min",
    ),
    "proportional": (
        600,
        _uniform((0.25, 0.5, 1.5)),
        None,
        "3 clients, uniform 0.25, 0.5, 1.5 req/s, 10 min",
    ),
    "on-off-less": (
        600,
        _uniform((0.5, 2.0), on_off=True),
        None,
        "client 0 at 0.5 req/s on/off every 60 s, client 1 at 2 req/s, 10 min",
    ),
    "on-off-overload": (
        600,
        _uniform((2.0, 3.0), on_off=True),
        None,
        "client 0 at 2 req/s on/off every 60 s, client 1 at 3 req/s, 10 min",
    ),
    "poisson-short-long": (
        600,
        _short_long(((64, 64), (256, 256))),
        None,
        "poisson 8 req/s of 64/64 tokens vs 1.5 req/s of 256/256, 10 min",
    ),
    "poisson-short-long-2": (
        600,
        _short_long(((512, 32), (32, 512))),
        None,
        "poisson 8 req/s of 512/32 tokens vs 1.5 req/s of 32/512, 10 min",
    ),
    "increase": (
        600,
        _increase,
        None,
        "client 0 uniform 0.5 req/s, client 1 ramping 0.2 -> 2 req/s, 10 min",
    ),
    "dist-shift": (
        900,
        _dist_shift,
        None,
        "three 5-min phases: on/off 0.5 vs 2, 1 vs 1, 0.5 vs 1.5 req/s",
    ),
}

SYNTHETIC_WORKLOADS: dict[str, str] = {name: spec[3] for name, spec in _SUITE.items()}


def synthesize(name: str, seed: int = 42, duration_scale: float = 1.0) -> pa.Table:
    """The synthetic workload ``name`` as a canonical table (all 256/256 tokens unless noted)."""
    if name not in _SUITE:
        raise InputError(
            f"unknown synthetic workload {name!r}; available: {', '.join(_SUITE)}",
            source="workload",
        )
    if not (duration_scale > 0 and np.isfinite(duration_scale)):
        raise InputError(f"must be a number > 0, got {duration_scale!r}", source="duration_scale")
    base, build, weights, description = _SUITE[name]
    duration = base * duration_scale
    streams = build(np.random.default_rng(seed), duration)
    clients = np.concatenate([np.full(len(s.arrival_s), s.client) for s in streams])
    info = {
        "source": "synthetic",
        "workload": name,
        "description": description,
        "seed": seed,
        "duration_s": duration,
        "duration_scale": duration_scale,
    }
    return make_table(
        client_names(max(s.client for s in streams) + 1)[clients],
        np.concatenate([s.arrival_s for s in streams]),
        np.concatenate([np.full(len(s.arrival_s), s.prompt_tokens) for s in streams]),
        np.concatenate([np.full(len(s.arrival_s), s.output_tokens) for s in streams]),
        weight=None if weights is None else np.asarray(weights)[clients],
        metadata=info,
        source=f"synthetic workload {name}",
    )
