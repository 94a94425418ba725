"""Equinox: holistic fair scheduling with two counters per client (ALGORITHMS.md section 3).

* **UFC**, the User Fairness Counter: service the user perceived.  At admission
  ``UFC += (w_p * prompt * g(ttft_hat) + w_q * out_hat * g(tpot_hat)) / weight`` with
  ``g(lat) = 1 / (1 + gamma * max(0, lat / slo - 1))``: tokens that came late count less,
  so a client whose requests waited moves ahead.  Latency counts from when a request became
  the head of its client's queue: the wait behind the client's own earlier requests is
  self-inflicted (a client that floods the queue must not earn a discount for it); the wait
  at the head is what the scheduler made it wait.  ``ttft_hat`` is that wait so far plus the
  predicted prefill time; ``tpot_hat`` the predicted time per output token.
  Output tokens beyond ``out_hat`` are charged as they come; at completion the charge is
  replaced by the actual one (actual length, TTFT and TPOT).
* **RFC**, the Resource Fairness Counter: engine time the client's requests used.  At
  admission ``RFC += gpu_seconds_hat / weight`` (prompt and predicted output tokens at the
  engine's measured seconds per token); each step's measured time is shared among its
  requests in proportion to the tokens they computed, charged beyond the prediction as
  it accrues, and corrected to the actual at completion.
* **HF** ``= alpha * UFC / mean(UFC) + beta * RFC / mean(RFC)`` over backlogged clients
  (an all-zero counter normalises to 0).  Admission picks the lowest HF; with ``beta = 0``
  (or ``alpha = 0``) the order is that of the one counter, which is VTC's order when
  ``gamma = 0`` and lengths are exact: the reduction test.
* **Adaptive batching**: when the lowest-HF client's next request does not fit, admit the
  head of another client whose HF is within ``delta`` of the minimum; and grow the step
  token budget while the measured time per output token is under its SLO and the step's
  utilization is under target, shrinking it otherwise.

Both counters are lifted like VTC's when a client becomes backlogged.  Output lengths come
from an oracle (the request's actual length), a predictor session (MoPE), or, by default,
the client's moving average (as VTC-predict).  A MoPE session takes each request's features
when it arrives (the client's history then, as training defines them) and predicts output
lengths in batches: the first admission that needs a prediction predicts every request that
arrived since the last batch.  Every knob is in ``EquinoxKnobs``.
"""

from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from engine.request import Request
from engine.results import COUNTER_SCHEMA
from schedulers.client_queues import ClientQueues
from schedulers.counters import ClientCounters

UFC, RFC = 0, 1  # the rows of the counters
WINDOW = 5  # moving average of output lengths, as VTC-predict
EMA = 0.05  # smoothing of the measured seconds per token


@dataclass(frozen=True)
class EquinoxKnobs:
    alpha: float = 0.5  # weight of the user counter in HF
    beta: float = 0.5  # weight of the resource counter in HF
    gamma: float = 1.0  # latency discount strength (0: off)
    ttft_slo_s: float = 2.0  # TTFT SLO of the latency discount
    tpot_slo_s: float = 0.1  # time-per-output-token SLO (discount and budget adaptation)
    delta: float = 0.1  # HF slack for skipping a request that does not fit (0: no skipping)
    adaptive_budget: bool = True  # adapt the step token budget
    budget_min: int = 256
    budget_max: int = 8192
    utilization_target: float = 0.9  # of the step's token budget
    lengths: str = "average"  # "oracle", "average" or "predictor"
    log_interval_s: float = 1.0  # counter trajectory sampling (clients that changed), for the audit

    def __post_init__(self):
        if min(self.alpha, self.beta, self.gamma, self.delta) < 0 or self.alpha + self.beta == 0:
            raise ValueError("alpha, beta, gamma, delta must be >= 0 and alpha + beta > 0")
        if self.ttft_slo_s <= 0 or self.tpot_slo_s <= 0:
            raise ValueError("latency SLOs must be > 0")
        if not 0 < self.budget_min <= self.budget_max:
            raise ValueError("need 0 < budget_min <= budget_max")
        if self.lengths not in ("oracle", "average", "predictor"):
            raise ValueError("lengths must be oracle, average or predictor")


class _Charges:
    """What each admitted, unfinished request has been charged so far, and the predictions
    behind it, as columns indexed by the request's slot (``req.slot``): a step's charges are
    a few array operations over its batch, not a loop over its requests."""

    FLOATS = ("out_hat", "tpot_hat", "discount", "ufc", "rfc_actual", "rfc", "weight")

    def __init__(self, capacity: int = 256) -> None:
        self._columns = np.zeros((len(self.FLOATS), capacity))  # one row per name in FLOATS
        self._views()
        self.client = np.zeros(capacity, dtype=np.int64)  # the client's first-seen index
        self._free = list(range(capacity - 1, -1, -1))

    def _views(self) -> None:
        for row, name in enumerate(self.FLOATS):
            setattr(self, name, self._columns[row])

    def add(self, client: int, weight: float, out_hat: float, tpot_hat: float, discount: float,
            ufc: float, rfc: float) -> int:  # fmt: skip
        """A new request's charge; returns its slot.  ``discount`` is g(tpot_hat), the price
        factor of output tokens beyond ``out_hat``; ``rfc`` the engine time charged at admission."""
        if not self._free:
            n = len(self.client)
            self._columns = np.concatenate((self._columns, np.zeros_like(self._columns)), axis=1)
            self._views()
            self.client = np.concatenate((self.client, np.zeros(n, dtype=np.int64)))
            self._free = list(range(2 * n - 1, n - 1, -1))
        slot = self._free.pop()
        self.client[slot] = client
        self._columns[:, slot] = (out_hat, tpot_hat, discount, ufc, 0.0, rfc, weight)
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)


class Trajectory:
    """Equinox's counter samples (``counters.parquet``) as typed columns: a long replay takes
    millions (every client that changed, every ``log_interval_s``)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names  # client index -> name
        self.time_s, self.ufc, self.rfc, self.hf = array("d"), array("d"), array("d"), array("d")
        self.client = array("q")

    def __len__(self) -> int:
        return len(self.time_s)

    def append(self, now: float, clients: np.ndarray, ufc: np.ndarray, rfc: np.ndarray, hf: np.ndarray) -> None:
        self.time_s.extend([now] * len(clients))
        self.client.frombytes(clients.astype(np.int64).tobytes())
        for column, values in ((self.ufc, ufc), (self.rfc, rfc), (self.hf, hf)):
            column.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())

    def table(self) -> pa.Table:
        hf = np.frombuffer(self.hf, dtype=np.float64)
        names = pa.array(self.names, type=pa.string())
        clients = pa.DictionaryArray.from_arrays(pa.array(np.frombuffer(self.client, dtype=np.int64)), names)
        return pa.table(
            {
                "time_s": np.frombuffer(self.time_s, dtype=np.float64),
                "client_id": clients.cast(pa.string()),
                "ufc": np.frombuffer(self.ufc, dtype=np.float64),
                "rfc": np.frombuffer(self.rfc, dtype=np.float64),
                "hf": pa.array(hf, mask=np.isnan(hf)),  # null: not backlogged
            },
            schema=COUNTER_SCHEMA,
        )


class Equinox(ClientQueues):
    name = "equinox"

    def __init__(self, knobs: EquinoxKnobs = EquinoxKnobs(), predictor=None, **kwargs):
        super().__init__(**kwargs)
        if knobs.lengths == "predictor" and predictor is None:
            raise ValueError("lengths='predictor' needs a predictor session")
        self.knobs = knobs
        self.predictor = predictor
        # A predictor session with the amortised path (predictors.Session) takes each request's
        # features at arrival and predicts output lengths in batches, when an admission needs one;
        # any other predictor is asked at admission (predict_one).
        self._arrive = self._take = self._forget = None
        if knobs.lengths == "predictor":
            self._arrive = getattr(predictor, "arrive", None)
            self._take = getattr(predictor, "output_tokens", None)
            self._forget = getattr(predictor, "forget", None)
            if self._take is None:
                self._take = lambda req: float(predictor.predict_one(req).output_tokens)
        # UFC (row 0) and RFC (row 1) of every client, with their minima and sums over the
        # backlogged clients: the lowest HF is found without scanning every client.
        self._counters = ClientCounters(rows=2)
        self._charges = _Charges()
        self._head_since: dict[int, float] = {}  # request id -> when it became its client's head
        self._average: dict[str, float] = {}
        self._sec_per_step = 0.0  # measured step time, smoothed: a decode's time per token
        self._sec_per_token = 0.0  # measured step time per token computed, smoothed
        self._budget: int | None = None
        self._next_log = 0.0
        self.trajectory = Trajectory(self._counters.names)
        self._changed = np.zeros(0, dtype=bool)  # clients whose counters moved since the last sample
        self._head_pending = np.zeros(0, dtype=np.int64)  # per client column: its head's pending tokens
        # Per-step charging and a budget that moves between steps need every step reported.
        self.exact_under_fast_forward = knobs.beta == 0 and not knobs.adaptive_budget

    # -- counters ----------------------------------------------------------------------
    @property
    def ufc(self) -> dict[str, float]:
        """Every client's User Fairness Counter."""
        return self._counters.as_dict(UFC)

    @property
    def rfc(self) -> dict[str, float]:
        """Every client's Resource Fairness Counter."""
        return self._counters.as_dict(RFC)

    def _add(self, client: str, ufc: float = 0.0, rfc: float = 0.0) -> None:
        i = self._counters.index[client]
        self._counters.add(i, (ufc, rfc))
        self._changed[i] = True

    def set_counters(self, client: str, ufc: float, rfc: float) -> None:
        """Set a known client's counters (for tests and tools)."""
        i = self._counters.index[client]
        self._add(client, ufc - self._counters.value(i, UFC), rfc - self._counters.value(i, RFC))

    def _backlog(self, client: str, req: Request, arrival: bool) -> None:
        i = self._counters.index[client]
        if arrival:
            self._head_since[req.request_id] = req.arrival_s
            self._head_pending[i] = req.pending
            self._lift(i)
        self._counters.backlog(i)

    def _unbacklog(self, client: str) -> None:
        self._counters.unbacklog(self._counters.index[client])

    # -- the score ---------------------------------------------------------------------
    def _scales(self) -> tuple[float, float]:
        """HF = a * UFC + b * RFC for every backlogged client: a = alpha / mean(UFC), b likewise."""
        k, n = self.knobs, len(self._counters)
        total_ufc, total_rfc = self._counters.totals
        a = k.alpha * n / total_ufc if total_ufc > 0 else 0.0
        b = k.beta * n / total_rfc if total_rfc > 0 else 0.0
        return a, b

    def _coefficients(self) -> tuple[tuple[float, float], bool]:
        """HF's coefficients of (UFC, RFC), and whether every HF is 0 (both scales 0: the
        clients are then taken in UFC order, as VTC's)."""
        a, b = self._scales()
        return ((1.0, 0.0), True) if a == 0 and b == 0 else ((a, b), False)

    def hf(self) -> dict[str, float]:
        """The Holistic Fairness score of every backlogged client, lowest first."""
        coef, zero = self._coefficients()
        names = self._counters.names
        return {names[i]: 0.0 if zero else score for i, score in self._counters.within(coef, float("inf"))}

    # -- queue -------------------------------------------------------------------------
    def _new_client(self, client: str) -> None:
        i = self._counters.add_client(client)
        if i == len(self._changed):
            self._changed = np.concatenate((self._changed, np.zeros(max(i, 64), dtype=bool)))
        columns = self._counters.values.shape[1]
        if len(self._head_pending) < columns:
            grown = np.zeros(columns, dtype=np.int64)
            grown[: len(self._head_pending)] = self._head_pending
            self._head_pending = grown

    def _new_head(self, req: Request, now: float) -> None:
        self._head_since.setdefault(req.request_id, now)
        self._head_pending[self._counters.index[req.client]] = req.pending

    def requeue(self, req: Request) -> None:
        super().requeue(req)
        self._head_pending[self._counters.index[req.client]] = req.pending

    def on_arrival(self, req: Request, now: float) -> bool:
        """Queue ``req``, after the predictor, if any, takes its features (at arrival)."""
        if self._arrive is not None:
            self._arrive(req)
        return super().on_arrival(req, now)

    def _resumed(self, req: Request) -> None:
        if self._forget is not None and req.slot is None:  # never charged: a drop (serving's abort)
            self._forget(req)  # its prediction will not be needed

    def _lift(self, i: int) -> None:
        last = self._last_left
        self._counters.lift(i, None if last is None else self._counters.index[last])

    def peek(self) -> Request | None:
        coef, _ = self._coefficients()
        best = self._counters.smallest(coef)
        return None if best is None else self._queues[self._counters.names[best[0]]][0]

    def select(self, fits) -> Request | None:
        """The lowest-HF client's next request; if it does not fit, the first that does among
        the clients within ``delta`` of the lowest HF (none when ``delta`` is 0)."""
        coef, zero = self._coefficients()
        counters = self._counters
        best = counters.smallest(coef)
        if best is None:
            return None
        first, floor = best
        names = counters.names
        req = self._queues[names[first]][0]
        if fits(req):
            return req
        if not self.knobs.delta:
            return None
        upto = float("inf") if zero else floor + self.knobs.delta
        limit = getattr(fits, "max_pending", None)
        if limit is not None:  # the first that fits, in array operations (``first`` does not)
            found = counters.smallest_where(coef, upto, self._head_pending, limit)
            return None if found is None else self._queues[names[found[0]]][0]
        for i, _ in self._counters.within(coef, upto):
            req = self._queues[names[i]][0]
            if i != first and fits(req):
                return req
        return None

    # -- charges -----------------------------------------------------------------------
    def _g(self, latency: float, slo: float) -> float:
        return 1.0 / (1.0 + self.knobs.gamma * max(0.0, latency / slo - 1.0))

    def _user_charge(self, req: Request, output: float, ttft: float, tpot: float) -> float:
        """UFC for ``req``: weighted tokens, each part discounted by its latency against the SLO."""
        k = self.knobs
        prompt = self.service.w_p * req.prompt_tokens * self._g(ttft, k.ttft_slo_s)
        return (prompt + self.service.w_q * output * self._g(tpot, k.tpot_slo_s)) / req.weight

    def _output_hat(self, req: Request) -> float:
        """The output tokens expected of ``req``."""
        lengths = self.knobs.lengths
        if lengths == "oracle":
            return float(req.output_tokens)
        if lengths == "predictor":
            return self._take(req)
        return self._average.get(req.client, float(req.output_tokens))

    def _charge_admission(self, req: Request, now: float) -> None:
        out_hat = self._output_hat(req)
        prefill_s = tpot_hat = self._sec_per_step  # a prompt is prefilled in about one step (chunked)
        head_since = self._head_since.get(req.request_id, req.arrival_s)
        ufc = self._user_charge(req, out_hat, now - head_since + prefill_s, tpot_hat)
        # Engine time is shared per token computed (on_step), so predict it the same way.
        rfc_hat = (req.prompt_tokens + out_hat) * self._sec_per_token
        req.predicted_output = out_hat
        discount = self._g(tpot_hat, self.knobs.tpot_slo_s)
        rfc = rfc_hat / req.weight
        client = self._counters.index[req.client]
        req.slot = self._charges.add(client, req.weight, out_hat, tpot_hat, discount, ufc, rfc)
        self._add(req.client, ufc, rfc)

    # The engine reports tokens and steps either per request (on_tokens, on_step) or as arrays of
    # slots (the simulator); the per-request calls gather their requests' slots and take the same path.
    array_feedback = True

    def on_tokens(self, reqs, k: int) -> None:
        slots = [-1 if req.slot is None else req.slot for req in reqs]
        generated = [req.generated for req in reqs]
        self.on_tokens_slots(np.array(slots, dtype=np.int64), np.array(generated, dtype=np.int64), None, k)

    def on_tokens_slots(self, slots, generated, weights, k: int) -> None:
        """Charge UFC for output tokens beyond the predicted length, as they come."""
        if not len(slots):
            return
        c = self._charges
        out_hat = c.out_hat[slots]
        beyond = generated > out_hat
        if slots.min() < 0:  # requests without a slot are not charged
            beyond &= slots >= 0
        if not beyond.any() or not self.service.w_q:  # (w_q = 0: nothing to charge)
            return
        slots, generated = slots[beyond], generated[beyond]
        extra = generated - np.maximum(generated - k, out_hat[beyond])
        amount = self.service.w_q * extra * c.discount[slots] / c.weight[slots]
        c.ufc[slots] += amount
        self._charge_clients(c.client[slots], amount, UFC)

    def on_step(self, now: float, duration_s: float, batch: list) -> None:
        slots = [-1 if req.slot is None else req.slot for req, _ in batch]
        tokens = [n for _, n in batch]
        self.on_step_slots(now, duration_s, np.array(slots, dtype=np.int64), np.array(tokens, dtype=np.int64))

    def on_step_slots(self, now: float, duration_s: float, slots, tokens) -> None:
        """Share the step's measured time among its requests per token computed; charge RFC for
        what goes beyond each request's prediction."""
        total = int(tokens.sum())
        if total:
            c = self._charges
            share = duration_s / total
            if slots.min() < 0:  # requests without a slot are not charged
                mine = slots >= 0
                slots, tokens = slots[mine], tokens[mine]
            actual = c.rfc_actual[slots] + share * tokens / c.weight[slots]
            c.rfc_actual[slots] = actual
            charged = c.rfc[slots]
            beyond = actual > charged
            if beyond.any():
                slots, actual = slots[beyond], actual[beyond]
                amount = actual - charged[beyond]
                c.rfc[slots] = actual
                self._charge_clients(c.client[slots], amount, RFC)
        self._measure(duration_s, total)
        if now >= self._next_log:
            self._log(now)

    def _charge_clients(self, clients, amounts, row: int) -> None:
        """Add per-request ``amounts`` (> 0) to counter ``row`` (UFC or RFC) of their ``clients``."""
        self._counters.add_per_request(row, clients, amounts)
        self._changed[clients] = True

    def _measure(self, duration_s: float, tokens: int) -> None:
        if not tokens:
            return
        per_token = duration_s / tokens
        if self._sec_per_step:
            self._sec_per_step += EMA * (duration_s - self._sec_per_step)
            self._sec_per_token += EMA * (per_token - self._sec_per_token)
        else:
            self._sec_per_step, self._sec_per_token = duration_s, per_token
        if self.knobs.adaptive_budget and self._budget is not None:
            self._adapt_budget(duration_s, tokens)

    def _adapt_budget(self, duration_s: float, tokens: int) -> None:
        k = self.knobs
        utilization = tokens / self._budget
        if duration_s < k.tpot_slo_s and utilization < k.utilization_target:
            self._budget = min(k.budget_max, int(self._budget * 1.25) + 1)
        elif duration_s > k.tpot_slo_s:
            self._budget = max(k.budget_min, int(self._budget * 0.8))

    def token_budget(self, default: int) -> int:
        if not self.knobs.adaptive_budget:
            return default
        if self._budget is None:
            self._budget = min(max(default, self.knobs.budget_min), self.knobs.budget_max)
        return self._budget

    def on_finish(self, req: Request, now: float) -> None:
        slot = req.slot
        if slot is None:
            return
        c = self._charges
        ttft = req.first_token_s - self._head_since.pop(req.request_id, req.arrival_s)
        tpot = (now - req.first_token_s) / (req.generated - 1) if req.generated > 1 else float(c.tpot_hat[slot])
        actual = self._user_charge(req, req.generated, ttft, tpot)
        self._add(req.client, actual - float(c.ufc[slot]), float(c.rfc_actual[slot] - c.rfc[slot]))
        c.release(slot)
        req.slot = None
        old = self._average.get(req.client)
        self._average[req.client] = req.generated if old is None else (old * (WINDOW - 1) + req.generated) / WINDOW
        if self.predictor is not None:
            self.predictor.observe(req)

    # -- logging -----------------------------------------------------------------------
    def _log(self, now: float) -> None:
        """Sample the counters of the clients that changed since the last sample (HF: NaN when idle)."""
        a, b = self._scales()
        counters = self._counters
        changed = np.flatnonzero(self._changed)
        ufc, rfc = counters.values[UFC, changed], counters.values[RFC, changed]
        hf = np.where(counters.backlogged[changed], a * ufc + b * rfc, np.nan)
        self.trajectory.append(now, changed, ufc, rfc, hf)
        self._changed[:] = False
        self._next_log = now + self.knobs.log_interval_s

    def describe(self) -> dict:
        return {**super().describe(), **asdict(self.knobs)}
