"""Fairness and performance metrics of one run, as pure functions on its tables.

Inputs are the ``requests`` and ``steps`` DataFrames of a run directory
(:mod:`engine.results`).  Everything is vectorised over requests (cumulative sums
evaluated with ``np.searchsorted``), so a million-request run is cheap.

Service follows the VTC artifact (``fair_bench/plot/visualize.py``): a finished
request's service ``w_p * prompt + w_q * output`` (VTC's 1 and 2) is spread
uniformly over ``[first_token_s, finish_s]``; rejected requests receive and
demand nothing (the artifact drops aborted responses before every metric).  Two
deliberate differences, both invisible on the artifact's own workloads: service
is divided by the request's weight (all weights are 1 there), and a request whose
first token is its last (``first_token_s == finish_s``) counts at once at
``finish_s`` instead of being skipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WINDOW_S = 60.0  # the artifact's window for rates
WARMUP_S = 30.0  # the artifact's warm-up, excluded from fairness metrics
NUM_TICKS = 20  # the artifact's num_x: window centres at i / 20 of the horizon, i = 1..19
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
LATENCIES = ("ttft", "tpot", "e2e", "queue")


# -- helpers ----------------------------------------------------------------------------


def client_codes(requests: pd.DataFrame) -> tuple[np.ndarray, pd.Index]:
    """Integer code of each request's client, and the sorted client names."""
    codes, clients = pd.factorize(requests["client_id"], sort=True)
    return codes.astype(np.int64), pd.Index(clients, name="client_id")


def _cumulative(codes, times, values, n_clients: int, at, inclusive: bool = True) -> np.ndarray:
    """``M[j, k]`` = sum of ``values`` of client ``j`` with time <= ``at[k]`` (< if not inclusive).

    ``at`` must be ascending; NaN or infinite times never count.
    """
    at = np.asarray(at, dtype=np.float64)
    width = len(at) + 1
    times = np.where(np.isfinite(times), times, np.inf)
    k = np.searchsorted(at, times, side="left" if inclusive else "right")
    sums = np.bincount(codes * width + k, weights=values, minlength=n_clients * width)
    return np.cumsum(sums.reshape(n_clients, width), axis=1)[:, :-1]


def _frame(values: np.ndarray, index, clients: pd.Index) -> pd.DataFrame:
    """A (time x client) frame from a (client x time) array."""
    return pd.DataFrame(values.T, index=pd.Index(np.asarray(index, dtype=np.float64), name="t"), columns=clients)


def request_service(requests: pd.DataFrame, w_p: float = 1.0, w_q: float = 2.0) -> np.ndarray:
    """Normalised service of each request: ``(w_p * prompt + w_q * generated) / weight``; 0 unless finished."""
    done = (requests["status"] == "finished").to_numpy()
    raw = w_p * requests["prompt_tokens"].to_numpy(np.float64) + w_q * requests["generated_tokens"].to_numpy(np.float64)
    return np.where(done, raw / requests["weight"].to_numpy(np.float64), 0.0)


# -- service curves and backlog ---------------------------------------------------------


def service_curves(requests: pd.DataFrame, grid, w_p: float = 1.0, w_q: float = 2.0, values=None) -> pd.DataFrame:
    """Cumulative normalised service ``A_j(t)`` of every client at each (ascending) grid time.

    Each request contributes ``s * clip((t - first_token_s) / (finish_s - first_token_s), 0, 1)``,
    evaluated as ramps: ``sum rate * (t - start)`` over started pieces minus the same over ended ones.
    ``values`` replaces each request's ``s`` (e.g. its engine-seconds / weight; 0 for unserved ones).
    """
    codes, clients = client_codes(requests)
    n = len(clients)
    s = request_service(requests, w_p, w_q) if values is None else np.asarray(values, dtype=np.float64)
    start = requests["first_token_s"].to_numpy(np.float64)
    end = requests["finish_s"].to_numpy(np.float64)
    span = end - start
    ramp = (s > 0) & (span > 0)
    rate = np.where(ramp, s / np.where(ramp, span, 1.0), 0.0)
    g = np.asarray(grid, dtype=np.float64)
    slope = _cumulative(codes, start, rate, n, g) - _cumulative(codes, end, rate, n, g)
    offset = _cumulative(codes, start, rate * np.nan_to_num(start), n, g) - _cumulative(
        codes, end, rate * np.nan_to_num(end), n, g
    )
    jumps = _cumulative(codes, end, np.where(ramp, 0.0, s), n, g)
    return _frame(g * slope - offset + jumps, g, clients)


def backlogged(requests: pd.DataFrame, grid) -> pd.DataFrame:
    """Whether each client is backlogged at each grid time: a request with ``arrival_s <= t < admitted_s``.

    Rejected requests never wait.  ``admitted_s`` is the first admission, so a preempted request that
    waits again is not seen as waiting.
    """
    codes, clients = client_codes(requests)
    n = len(clients)
    g = np.asarray(grid, dtype=np.float64)
    waits = (requests["status"] != "rejected").to_numpy(np.float64)
    admitted = requests["admitted_s"].to_numpy(np.float64)
    arrived = _cumulative(codes, requests["arrival_s"].to_numpy(np.float64), waits, n, g)
    left = _cumulative(codes, admitted, waits, n, g)
    return _frame(arrived - left > 0.5, g, clients)


def accumulated_service_difference(curves: pd.DataFrame, backlog: pd.DataFrame) -> pd.Series:
    """``max_j A_j(t) - min_j A_j(t)`` over the clients backlogged at t (0 where fewer than two are).

    ``A_j`` counts service from the grid's first time (the artifact counts from the 30-s warm-up).
    """
    a = curves.to_numpy() - curves.to_numpy()[:1]
    b = backlog.to_numpy()
    hi = np.where(b, a, -np.inf).max(axis=1, initial=-np.inf)
    lo = np.where(b, a, np.inf).min(axis=1, initial=np.inf)
    return pd.Series(np.where(b.sum(axis=1) >= 2, hi - lo, 0.0), index=curves.index)


def _max_run_range(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row: the largest ``max - min`` of ``values`` over a run of consecutive True in ``mask``
    (-inf for a row without any True)."""
    rows, cols = mask.shape
    before = np.zeros_like(mask)
    before[:, 1:] = mask[:, :-1]
    starts = np.flatnonzero(mask & ~before)
    out = np.full(rows, -np.inf)
    if starts.size:
        flat, keep = values.ravel(), mask.ravel()
        hi = np.maximum.reduceat(np.where(keep, flat, -np.inf), starts)
        lo = np.minimum.reduceat(np.where(keep, flat, np.inf), starts)
        np.maximum.at(out, starts // cols, hi - lo)
    return out


def pair_service_difference(curves: pd.DataFrame, backlog: pd.DataFrame) -> tuple[float, tuple[str, str] | None]:
    """The VTC bound's left side: max of ``|W_f - W_g|`` over pairs and grid intervals ``[t1, t2]``
    in which both f and g are backlogged at every grid time.

    ``W_f = A_f(t2) - A_f(t1)``, so for a pair it is the range of ``A_f - A_g`` over each common
    backlogged run.  Returns the value and the pair (None when no two clients overlap).
    """
    ever = backlog.to_numpy().any(axis=0)
    a = curves.to_numpy()[:, ever].T
    b = backlog.to_numpy()[:, ever].T
    names = curves.columns[ever]
    best, pair = 0.0, None
    for f in range(len(names) - 1):
        ranges = _max_run_range(a[f] - a[f + 1 :], b[f] & b[f + 1 :])
        g = int(np.argmax(ranges))
        if ranges[g] > best or pair is None and ranges[g] == 0.0:
            best, pair = float(ranges[g]), (str(names[f]), str(names[f + 1 + g]))
    return best, pair


def _running_range(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per element: ``max - min`` of ``values`` over its run of consecutive True in ``mask`` so far,
    row by row (-inf where ``mask`` is False).

    A segmented running maximum: run k is lifted by ``k * span`` above every earlier run, so one
    ``np.maximum.accumulate`` over the flattened array never carries a value from run to run.
    """
    keep = mask.ravel()
    if not keep.any():
        return np.full(mask.shape, -np.inf)
    before = np.zeros_like(mask)
    before[:, 1:] = mask[:, :-1]
    v = values.ravel()
    low, high = v[keep].min(), v[keep].max()
    span = high - low + 1.0
    shift = np.cumsum((mask & ~before).ravel()) * span
    top = np.maximum.accumulate(np.where(keep, v - low + shift, -np.inf)) - shift  # running max - low
    bottom = np.maximum.accumulate(np.where(keep, high - v + shift, -np.inf)) - shift  # high - running min
    return np.where(keep, top + bottom - (high - low), -np.inf).reshape(mask.shape)


def pair_service_difference_series(curves: pd.DataFrame, backlog: pd.DataFrame) -> pd.Series:
    """At each grid time t: the largest ``|W_f - W_g|`` over pairs backlogged together at t, with W
    over ``[t1, t2]`` inside their common backlogged run up to t (0 when no two clients are).

    The running form of :func:`pair_service_difference`: its maximum over time is that value.
    """
    ever = backlog.to_numpy().any(axis=0)
    a = curves.to_numpy()[:, ever].T
    b = backlog.to_numpy()[:, ever].T
    out = np.zeros(len(curves))
    for f in range(len(a) - 1):
        out = np.maximum(out, _running_range(a[f] - a[f + 1 :], b[f] & b[f + 1 :]).max(axis=0))
    return pd.Series(out, index=curves.index)


# -- windowed rates (the VTC revision tables) -------------------------------------------


def artifact_ticks(horizon: float, warmup: float = WARMUP_S, num: int = NUM_TICKS) -> np.ndarray:
    """Window centres as the artifact places them: ``warmup + (horizon - warmup) * i / num``, i = 1..num-1."""
    if horizon <= warmup:
        return np.empty(0)
    return warmup + (horizon - warmup) / num * np.arange(1, num)


def service_rate(
    requests: pd.DataFrame, x, window: float = WINDOW_S, w_p: float = 1.0, w_q: float = 2.0
) -> pd.DataFrame:
    """``y_j(x)``: normalised service client j received in ``[x - W/2, x + W/2]``, over W."""
    x = np.asarray(x, dtype=np.float64)
    hi = service_curves(requests, x + window / 2, w_p, w_q).to_numpy()
    lo = service_curves(requests, x - window / 2, w_p, w_q).to_numpy()
    return pd.DataFrame((hi - lo) / window, index=pd.Index(x, name="t"), columns=client_codes(requests)[1])


def demand_rate(
    requests: pd.DataFrame, x, window: float = WINDOW_S, w_p: float = 1.0, w_q: float = 2.0
) -> pd.DataFrame:
    """``r_j(x)``: normalised service of client j's finished requests arriving in ``[x - W/2, x + W/2]``, over W."""
    codes, clients = client_codes(requests)
    x = np.asarray(x, dtype=np.float64)
    arrival = requests["arrival_s"].to_numpy(np.float64)
    s = request_service(requests, w_p, w_q)
    upto = _cumulative(codes, arrival, s, len(clients), x + window / 2)
    before = _cumulative(codes, arrival, s, len(clients), x - window / 2, inclusive=False)
    return _frame((upto - before) / window, x, clients)


def windowed_difference(service: pd.DataFrame, demand: pd.DataFrame) -> pd.Series:
    """``D(x) = sum_j min(max_k y_k(x) - y_j(x), |r_j(x) - y_j(x)|)`` from service and demand rates."""
    y, r = service.to_numpy(), demand.to_numpy()
    gap = y.max(axis=1, keepdims=True, initial=-np.inf) - y
    return pd.Series(np.minimum(gap, np.abs(r - y)).sum(axis=1), index=service.index)


# -- Jain's index -------------------------------------------------------------------------


def request_engine_seconds(requests: pd.DataFrame) -> np.ndarray | None:
    """Each finished request's engine-seconds (its cost-model share of engine time) over its weight;
    None when the run has no ``engine_seconds`` column (older runs) or it is empty."""
    if "engine_seconds" not in requests or not requests["engine_seconds"].notna().any():
        return None
    done = (requests["status"] == "finished").to_numpy()
    seconds = requests["engine_seconds"].to_numpy(np.float64, na_value=np.nan)
    return np.where(done & np.isfinite(seconds), seconds / requests["weight"].to_numpy(np.float64), 0.0)


def jain_index(x) -> float:
    """``(sum x)^2 / (n * sum x^2)``; NaN for no values or all zeros."""
    x = np.asarray(x, dtype=np.float64)
    square = float((x * x).sum())
    return float(x.sum() ** 2 / (x.size * square)) if square > 0 else float("nan")


def backlogged_service(curves: pd.DataFrame, backlog: pd.DataFrame) -> pd.DataFrame:
    """Per client: seconds backlogged and normalised service received meanwhile, and their ratio.

    A grid interval counts when the client is backlogged at its start.  ``rate`` is NaN for a client
    never backlogged.
    """
    dt = np.diff(curves.index.to_numpy())[:, None]
    gained = np.diff(curves.to_numpy(), axis=0)
    b = backlog.to_numpy()[:-1]
    seconds = (dt * b).sum(axis=0)
    service = (gained * b).sum(axis=0)
    rate = np.divide(service, seconds, out=np.full_like(service, np.nan), where=seconds > 0)
    return pd.DataFrame({"seconds": seconds, "service": service, "rate": rate}, index=curves.columns)


def total_service(requests: pd.DataFrame, w_p: float = 1.0, w_q: float = 2.0) -> pd.Series:
    """Normalised service each client received over the whole run."""
    codes, clients = client_codes(requests)
    s = np.bincount(codes, weights=request_service(requests, w_p, w_q), minlength=len(clients))
    return pd.Series(s, index=clients)


# -- demand and starvation -----------------------------------------------------------------


def requested_service(requests: pd.DataFrame, w_p: float = 1.0, w_q: float = 2.0) -> np.ndarray:
    """Normalised service each request asked for, ``(w_p * prompt + w_q * output_tokens) / weight``,
    whether it was served or rejected."""
    raw = w_p * requests["prompt_tokens"].to_numpy(np.float64) + w_q * requests["output_tokens"].to_numpy(np.float64)
    return raw / requests["weight"].to_numpy(np.float64)


def demand_curves(requests: pd.DataFrame, grid, w_p: float = 1.0, w_q: float = 2.0) -> pd.DataFrame:
    """Cumulative normalised service demanded by each client's requests arriving at or before each grid time."""
    codes, clients = client_codes(requests)
    g = np.asarray(grid, dtype=np.float64)
    arrival = requests["arrival_s"].to_numpy(np.float64)
    return _frame(_cumulative(codes, arrival, requested_service(requests, w_p, w_q), len(clients), g), g, clients)


def demanded_service(requests: pd.DataFrame, w_p: float = 1.0, w_q: float = 2.0) -> pd.Series:
    """Normalised service each client asked for over the whole run."""
    codes, clients = client_codes(requests)
    return pd.Series(np.bincount(codes, weights=requested_service(requests, w_p, w_q), minlength=len(clients)), clients)


def starvation(requests: pd.DataFrame) -> pd.DataFrame:
    """Per client: the longest time it was backlogged without progress, and when that wait began.

    A wait runs from the moment the client becomes backlogged (its waiting count goes from 0 to 1),
    or from the admission of one of its requests that leaves others waiting, to the next admission
    of one of its requests: an interval in which the client always had a request waiting and none
    was admitted.  With one request at a time this is that request's queueing delay; a client with
    many waiting requests progresses at each admission, so its starvation can be shorter than its
    longest queueing delay.  Admission means the first admission (as in :func:`backlogged`);
    rejected requests never wait.  A client none of whose requests was admitted gets 0 and a NaN start.
    """
    codes, clients = client_codes(requests)
    waits = (requests["status"] != "rejected").to_numpy()
    c = codes[waits]
    client = np.r_[c, c]
    time = np.r_[requests["arrival_s"].to_numpy(np.float64)[waits], requests["admitted_s"].to_numpy(np.float64)[waits]]
    step = np.r_[np.ones(c.size, np.int64), -np.ones(c.size, np.int64)]  # +1 arrival, -1 admission
    order = np.lexsort((-step, time, client))  # by client, then time, arrivals first on ties
    client, time, step = client[order], time[order], step[order]
    index = np.arange(client.size)
    first = np.maximum.accumulate(np.where(np.r_[True, client[1:] != client[:-1]], index, 0))
    total = np.cumsum(step)
    count = total - total[first] + step[first]  # waiting requests of the client after each event
    starts = ((step > 0) & (count == 1)) | ((step < 0) & (count > 0))
    latest = np.maximum.accumulate(np.where(starts, index, 0))
    admissions = np.flatnonzero(step < 0)
    began = time[latest[admissions - 1]] if admissions.size else np.empty(0)
    wait = time[admissions] - began
    out = pd.DataFrame({"starvation_s": 0.0, "from_s": np.nan}, index=clients)
    if admissions.size:
        pick = np.lexsort((np.nan_to_num(wait, nan=-1.0), client[admissions]))
        last = pick[np.r_[client[admissions][pick][1:] != client[admissions][pick][:-1], True]]
        out.iloc[client[admissions][last]] = np.c_[wait[last], began[last]]
    return out


# -- latency, throughput, utilization -----------------------------------------------------


def latencies(requests: pd.DataFrame) -> pd.DataFrame:
    """Per finished request: ``ttft``, ``tpot`` (NaN for one output token), ``e2e`` and ``queue`` seconds."""
    done = requests[requests["status"] == "finished"]
    arrival, first, finish = done["arrival_s"], done["first_token_s"], done["finish_s"]
    extra = done["generated_tokens"] - 1
    return pd.DataFrame(
        {
            "client_id": done["client_id"],
            "ttft": first - arrival,
            "tpot": ((finish - first) / extra).where(extra > 0),
            "e2e": finish - arrival,
            "queue": done["admitted_s"] - arrival,
        }
    )


def latency_stats(lat: pd.DataFrame) -> dict:
    """Mean, p50, p90, p99 (linear interpolation) of each latency in :func:`latencies`, overall and per client."""
    overall = _stats(lat[list(LATENCIES)].mean(), lat[list(LATENCIES)].quantile(list(QUANTILES.values())))
    groups = lat.groupby("client_id", sort=True)[list(LATENCIES)]
    means, quants = groups.mean(), groups.quantile(list(QUANTILES.values()))
    per_client = {str(c): _stats(means.loc[c], quants.loc[c]) for c in means.index}
    return {"overall": overall, "per_client": per_client}


def _stats(mean: pd.Series, quants: pd.DataFrame) -> dict:
    """``{metric: {mean, p50, p90, p99}}`` from a mean row and a quantile-by-metric frame."""
    out = {}
    for m in LATENCIES:
        row = {"mean": float(mean[m])}
        row.update({name: float(quants[m].get(q, np.nan)) for name, q in QUANTILES.items()})
        out[m] = row
    return out


def throughput(requests: pd.DataFrame) -> dict:
    """Tokens, output tokens and finished requests per second of makespan (last finish - first arrival)."""
    done = requests[requests["status"] == "finished"]
    makespan = float(done["finish_s"].max() - requests["arrival_s"].min()) if len(done) else float("nan")
    output = float(done["generated_tokens"].sum())
    tokens = float(done["prompt_tokens"].sum()) + output
    seconds = makespan if makespan > 0 else float("nan")
    return {
        "makespan_s": makespan,
        "tokens_per_s": tokens / seconds,
        "output_tokens_per_s": output / seconds,
        "requests_per_s": len(done) / seconds,
    }


def utilization(steps: pd.DataFrame, peak_flops: float | None = None) -> dict:
    """Busy fraction of the time line, and MFU = FLOPs / (busy seconds * peak) when the peak is known."""
    duration = steps["duration_s"].to_numpy(np.float64)
    busy_s = float(duration[steps["busy"].to_numpy(bool)].sum())
    total_s = float(duration.sum())
    flops = float(steps["flops"].sum())
    mfu = flops / (busy_s * peak_flops) if peak_flops and busy_s > 0 else float("nan")
    return {
        "busy_s": busy_s,
        "total_s": total_s,
        "busy_fraction": busy_s / total_s if total_s > 0 else float("nan"),
        "mfu": mfu,
    }


def vtc_bound(
    max_prompt: float, kv_capacity: float, w_p: float = 1.0, w_q: float = 2.0, min_weight: float = 1.0
) -> float:
    """``2 * max(w_p * L_input, w_q * M)``, divided by the smallest client weight for normalised service."""
    return 2.0 * max(w_p * max_prompt, w_q * kv_capacity) / min_weight
