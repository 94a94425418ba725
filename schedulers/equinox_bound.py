"""The discrepancy bound Equinox's guard gives, and a check of a run against it (docs/EQUINOX.md).

For two clients f, g backlogged throughout [t1, t2]:

    |dUFC_f - dUFC_g| <= 2 * (1 + kappa) * U        |dRFC_f - dRFC_g| <= 2 * (1 + kappa_r) * R

with U = max(w_p * L_input, w_q * M) / min weight (VTC's unit: L_input the longest prompt, M the
KV capacity in tokens) and R the largest engine time of one request (/ weight).  With gamma = 0
UFC is VTC's weighted service, so the first is a service bound: with kappa = 1 (the default) it
is 4U, twice VTC's 2U.

``check_run(run_dir)`` reads a run's ``counters.parquet`` (every client's counters, sampled when
they change) and ``run.json`` (the knobs and the final U and R) and returns the largest pair
difference of each counter over the sampled intervals in which both clients stayed backlogged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

PAIRWISE_CLIENTS = 64  # more clients: the pair difference is bounded by twice the largest spread


def equinox_bound(kappa: float, kappa_r: float | None, u: float, r: float) -> dict[str, float]:
    """The bound on the pair difference of UFC and of RFC (inf when a guard is off)."""
    kappa_r = kappa if kappa_r is None else kappa_r
    return {"ufc": 2.0 * (1.0 + kappa) * u, "rfc": 2.0 * (1.0 + kappa_r) * r}


def _grid(counters: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every client's UFC and RFC at every sample time (carried forward from its last sample) and
    whether it was backlogged then (its HF not null): arrays (times, clients)."""
    times = np.unique(counters["time_s"].to_numpy())
    clients = pd.Index(counters["client_id"].unique())
    t = np.searchsorted(times, counters["time_s"].to_numpy())
    c = clients.get_indexer(counters["client_id"])
    out = []
    for column in ("ufc", "rfc"):
        grid = np.full((len(times), len(clients)), np.nan)
        grid[t, c] = counters[column].to_numpy(dtype=float)
        out.append(pd.DataFrame(grid).ffill().to_numpy())
    backlogged = np.zeros((len(times), len(clients)))
    backlogged[:] = np.nan
    backlogged[t, c] = counters["hf"].notna().to_numpy(dtype=float)
    out.append(pd.DataFrame(backlogged).ffill().fillna(0).to_numpy() > 0)
    return out[0], out[1], out[2]


def pair_difference(counters: pd.DataFrame) -> dict[str, float]:
    """The largest ``|dC_f - dC_g|`` over pairs of clients and sample intervals in which both were
    backlogged, for C = UFC and RFC (with more than PAIRWISE_CLIENTS clients, twice the largest
    spread of C over backlogged clients at a sample: an upper bound of it)."""
    if counters.empty:
        return {"ufc": 0.0, "rfc": 0.0}
    ufc, rfc, backlogged = _grid(counters)
    n = backlogged.shape[1]
    result = {}
    for name, grid in (("ufc", ufc), ("rfc", rfc)):
        if n > PAIRWISE_CLIENTS:
            inside = np.where(backlogged, grid, np.nan)
            with np.errstate(invalid="ignore"):
                spread = np.nanmax(inside, axis=1) - np.nanmin(inside, axis=1)
            result[name] = float(2 * np.nanmax(spread)) if np.isfinite(spread).any() else 0.0
            continue
        worst = 0.0
        for f in range(n):
            for g in range(f + 1, n):
                both = backlogged[:, f] & backlogged[:, g]
                if both.sum() < 2:
                    continue
                d = grid[:, f] - grid[:, g]
                # maximal runs of consecutive samples with both backlogged
                edges = np.flatnonzero(np.diff(np.concatenate(([0], both.astype(np.int8), [0]))))
                for start, end in zip(edges[::2], edges[1::2]):
                    if end - start >= 2:
                        run = d[start:end]
                        worst = max(worst, float(run.max() - run.min()))
        result[name] = worst
    return result


def check_run(run_dir) -> dict:
    """Equinox's bound for the run in ``run_dir`` and whether its counters stayed within it."""
    run_dir = Path(run_dir)
    policy = json.loads((run_dir / "run.json").read_text())["policy"]
    guard = policy.get("guard") or {}
    inf = float("inf")
    kappa = inf if policy.get("kappa") is None else policy["kappa"]
    kappa_r = policy.get("kappa_r")
    u = inf if guard.get("U") is None else guard["U"]
    r = inf if guard.get("R") is None else guard["R"]
    bound = equinox_bound(kappa, kappa_r, u, r)  # kappa_r None: the same guard as kappa
    path = run_dir / "counters.parquet"
    counters = (
        pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["time_s", "client_id", "ufc", "rfc", "hf"])
    )
    diff = pair_difference(counters)
    held = all(diff[k] <= bound[k] * (1 + 1e-9) for k in bound)
    return {"bound": bound, "pair_difference": diff, "held": held}
