"""Equinox: holistic fair scheduling with two counters per client (ALGORITHMS.md section 3, second design).

* **UFC**, the User Fairness Counter: perceived service.  At admission
  ``UFC += q * (w_p * prompt + w_q * out_hat) / weight``; output tokens beyond ``out_hat`` are
  charged at the same ``q`` as they come, and at completion the charge is corrected to the
  actual length (as VTC-predict).  ``q`` in ``[q_min, 1]`` is fixed at admission:
  ``q = max(q_min, 1 / (1 + gamma * max(0, lat / ref - 1)))`` with ``lat`` the time the request
  waited at the head of its client's queue plus its predicted prefill, and ``ref`` the smaller of
  the clients' recent typical latency (a geometric moving average over admissions) and the TTFT
  SLO; a predicted TPOT over its SLO lowers ``q`` the same way.  A request that waited longer
  than is typical costs its client less, so that client is served sooner: ``gamma`` trades
  service-rate equality (0: ``q = 1``, VTC's counter) against latency equality.
* **RFC**, the Resource Fairness Counter: engine-seconds.  Each step's measured time is split
  among its requests by the cost model (``equinox_steps.py``, with ``bind_engine``'s ``split``:
  a prefill chunk's linear FLOPs and attention over its context, a decode's share of the weight
  read and its own KV read), plus KV residency ``residency * duration * kv_tokens / kv_capacity``;
  prompt tokens the engine did not compute (a prefix-cache hit) are in no step and cost nothing.  At
  admission the prediction is charged (prefill, predicted decode steps, predicted residency),
  what goes beyond it is charged per step, and at completion the charge is corrected to the
  measured total.  Units: engine-seconds / weight.
* **HF** ``= alpha * UFC / mean(UFC) + beta * RFC / mean(RFC)`` over backlogged clients.
* **The guard**: a client is eligible only while ``UFC - min UFC <= kappa * U`` and
  ``RFC - min RFC <= kappa * R`` over the backlogged clients (``U = max(w_p * L_input,
  w_q * M) / min weight``, VTC's bound unit; ``R`` the largest engine time of one request so
  far, / weight).  Admission takes the lowest HF among eligible clients; when its head does not
  fit, the next eligible client whose head fits (``skip``), never one outside the guard.  The
  bound this gives is in ``schedulers/equinox_bound.py`` and docs/EQUINOX.md.
* **Adaptive batching**: memory-aware admission (``memory_aware``, ``equinox_memory.py``): admit
  while the most KV the running requests will hold at once, each grown to its prompt plus its
  output at ``quantile`` (the predictor's ``output_quantile``, capped by the client's own once it
  has a history, else the client's), stays within the cache plus an overcommit that grows while
  memory binds and resets at a preemption; and a token budget (``adaptive_budget``) that grows
  when it binds and the predicted step time of the grown budget keeps TPOT under its SLO, and
  shrinks when a step exceeds the SLO.

The engine tells Equinox its cost model and KV capacity through ``bind_engine`` (the simulator
does); without them engine time is split per token and the guard's ``U`` and memory-aware
admission are off.  Alpha 1, beta 0, gamma 0, oracle lengths, kappa infinite and no adaptive
batching (no skip, no memory-aware admission, fixed budget) is VTC-oracle(0) request for request.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from schedulers.client_queues import ClientQueues
from schedulers.counters import ClientCounters
from schedulers.equinox_charges import Charges
from schedulers.equinox_memory import MemoryAdmission
from schedulers.equinox_steps import StepTerms
from schedulers.trajectory import Trajectory
from traces.request import Request

UFC, RFC = 0, 1  # the rows of the counters
WINDOW = 5  # moving average of output lengths, as VTC-predict
HISTORY = 20  # outputs kept per client for its quantile
TRUSTED_HISTORY = 10  # outputs after which a client's own quantile caps the predictor's
LATENCY_EMA = 0.2  # smoothing of each client's (log) latency
INF = float("inf")


@dataclass(frozen=True)
class EquinoxKnobs:
    alpha: float = 0.5  # weight of the user counter in HF
    beta: float = 0.5  # weight of the resource counter in HF
    gamma: float = 1.0  # latency factor strength (0: q = 1)
    q_min: float = 0.1  # floor of the latency factor
    ttft_slo_s: float = 2.0  # TTFT SLO (the latency factor's reference is at most this)
    tpot_slo_s: float = 0.1  # time-per-output-token SLO (latency factor and budget)
    kappa: float = 1.0  # the guard on UFC, in units of U (inf: off)
    kappa_r: float | None = None  # the guard on RFC, in units of R (None: kappa)
    residency: float = 0.0  # lambda: engine-seconds of holding the whole KV cache for one second
    skip: bool = True  # a head that does not fit is skipped for the next eligible one that does
    memory_aware: bool = True  # admit only while prompts + predicted outputs (quantile) fit the KV cache
    quantile: float = 0.7  # of the predicted output, for memory-aware admission
    overcommit: float = 0.5  # the most memory-aware admission lets the future KV peak exceed the cache by (a share)
    adaptive_budget: bool = True  # adapt the step token budget
    budget_min: int = 256
    budget_max: int = 8192
    utilization_target: float = 0.9  # a step using this share of the budget is bound by it
    lengths: str = "average"  # "oracle", "average" or "predictor"
    log_interval_s: float = 1.0  # counter trajectory sampling (clients that changed), for the audit

    def __post_init__(self):
        if min(self.alpha, self.beta, self.gamma, self.kappa, self.residency) < 0 or self.alpha + self.beta == 0:
            raise ValueError("alpha, beta, gamma, kappa, residency must be >= 0 and alpha + beta > 0")
        if not 0 < self.q_min <= 1:
            raise ValueError("q_min must be in (0, 1]")
        if not self.overcommit >= 0:
            raise ValueError("overcommit must be >= 0")
        if not 0 < self.quantile < 1:
            raise ValueError("quantile must be in (0, 1)")
        if self.ttft_slo_s <= 0 or self.tpot_slo_s <= 0:
            raise ValueError("latency SLOs must be > 0")
        if not 0 < self.budget_min <= self.budget_max:
            raise ValueError("need 0 < budget_min <= budget_max")
        if self.lengths not in ("oracle", "average", "predictor"):
            raise ValueError("lengths must be oracle, average or predictor")


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
        self._arrive = self._take = self._forget = self._quantile_of = None
        if knobs.lengths == "predictor":
            self._arrive = getattr(predictor, "arrive", None)
            self._take = getattr(predictor, "output_tokens", None)
            self._forget = getattr(predictor, "forget", None)
            self._quantile_of = getattr(predictor, "output_quantile", None)
            if self._take is None:
                self._take = lambda req: float(predictor.predict_one(req).output_tokens)
        self.cost_model = None  # set by the engine (bind_engine)
        self.kv_capacity: float | None = None
        # UFC (row 0) and RFC (row 1) of every client, with their minima and sums over the
        # backlogged clients: the lowest HF is found without scanning every client.
        self._counters = ClientCounters(rows=2)
        self._charges = Charges()
        self._head_since: dict[int, float] = {}  # request id -> when it became its client's head
        self._average: dict[str, float] = {}
        self._history: dict[str, deque] = {}  # client -> its recent output lengths
        self._quantiles: dict[str, float] = {}  # client -> the quantile of its history
        self._terms = StepTerms()  # what a step costs, learned from the measured steps
        # Each client's moving average of log latency, their sum over the clients seen, and how many.
        self._latency_log = np.zeros(0)
        self._latency_seen = np.zeros(0, dtype=bool)
        self._latency_sum = 0.0
        self._latency_clients = 0
        self._budget: int | None = None
        # The guard's units: the longest prompt seen, the smallest weight, the largest request's RFC.
        self._max_prompt = 0
        self._min_weight = INF
        self._max_request = 0.0
        self.max_spread = [0.0, 0.0]  # the largest UFC and RFC spreads over backlogged clients logged
        self._memory = MemoryAdmission(self._charges, knobs.overcommit, enabled=knobs.memory_aware)
        self._next_log = 0.0
        self.trajectory = Trajectory(self._counters.names)
        self._changed = np.zeros(0, dtype=bool)  # clients whose counters moved since the last sample
        # per client column: its head's pending tokens and the KV tokens it would reserve
        self._head_pending = np.zeros(0, dtype=np.int64)
        self._head_memory = np.zeros(0)
        # Per-step charging, a budget, latency terms or a memory peak that move between steps need every step.
        self.exact_under_fast_forward = (
            knobs.beta == 0
            and knobs.gamma == 0
            and knobs.kappa == INF
            and not knobs.adaptive_budget
            and not knobs.memory_aware  # (its future peak is recomputed after the steps that admitted)
        )

    def bind_engine(self, cost_model=None, kv_capacity_tokens: float | None = None) -> None:
        """The engine's step costs (``split(prefill_tokens, pairs, decodes, decode_kv, requests)`` and
        ``request_seconds(split, tokens, context, decoding)``: ``engine.cost_model.StepCost``) and
        KV capacity in tokens (the guard's U, memory-aware admission, residency)."""
        self.cost_model = cost_model
        self.kv_capacity = self._memory.kv_capacity = kv_capacity_tokens

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
            self._set_head(i, req)
            self._lift(i)
        self._counters.backlog(i)
        self._changed[i] = True

    def _unbacklog(self, client: str) -> None:
        i = self._counters.index[client]
        self._counters.unbacklog(i)
        self._changed[i] = True

    # -- the guard ---------------------------------------------------------------------
    def guard_units(self) -> tuple[float, float]:
        """``(U, R)``: VTC's bound unit ``max(w_p * L_input, w_q * M) / min weight`` (inf without a
        known KV capacity) and the largest engine time of one request so far (/ weight)."""
        if self.kv_capacity is None or self._min_weight == INF:
            return INF, INF
        s = self.service
        return max(s.w_p * self._max_prompt, s.w_q * self.kv_capacity) / self._min_weight, self._max_request

    def _caps(self) -> tuple[float, float] | None:
        """The largest UFC and RFC an eligible client may have (None: no guard)."""
        kappa = self.knobs.kappa
        if kappa == INF:
            return None
        u, r = self.guard_units()
        if u == INF:
            return None
        counters = self._counters
        kappa_r = kappa if self.knobs.kappa_r is None else self.knobs.kappa_r
        return counters.min(UFC) + kappa * u, counters.min(RFC) + (INF if kappa_r == INF else kappa_r * r)

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
        return {names[i]: 0.0 if zero else score for i, score in self._counters.within(coef, INF)}

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
            old = len(self._head_memory)
            memory, latency, seen = np.zeros(columns), np.zeros(columns), np.zeros(columns, dtype=bool)
            memory[:old], latency[:old], seen[:old] = self._head_memory, self._latency_log, self._latency_seen
            self._head_memory, self._latency_log, self._latency_seen = memory, latency, seen

    def _set_head(self, i: int, req: Request) -> None:
        self._head_pending[i] = req.pending
        if self.knobs.memory_aware:
            self._head_memory[i] = self._reservation(req)

    def _new_head(self, req: Request, now: float) -> None:
        self._head_since.setdefault(req.request_id, now)
        self._set_head(self._counters.index[req.client], req)

    def on_arrival(self, req: Request, now: float) -> bool:
        """Queue ``req``, after the predictor, if any, takes its features (at arrival)."""
        if self._arrive is not None:
            self._arrive(req)
        if req.prompt_tokens > self._max_prompt:
            self._max_prompt = req.prompt_tokens
        if req.weight < self._min_weight:
            self._min_weight = req.weight
        return super().on_arrival(req, now)

    def requeue(self, req: Request) -> None:
        super().requeue(req)
        self._set_head(self._counters.index[req.client], req)
        slot = req.slot
        if slot is not None:  # preempted: its KV is gone (recomputed when it resumes)
            c = self._charges
            c.context[slot] = 0.0
            c.running[slot] = False
            self._memory.released(c.reserve[slot], preempted=True)

    def _resumed(self, req: Request) -> None:
        slot = req.slot
        if slot is None:
            if self._forget is not None:  # never charged: a drop (serving's abort)
                self._forget(req)  # its prediction will not be needed
            return
        self._charges.running[slot] = True
        self._memory.resumed(self._charges.reserve[slot])

    def _lift(self, i: int) -> None:
        last = self._last_left
        self._counters.lift(i, None if last is None else self._counters.index[last])

    def peek(self) -> Request | None:
        coef, _ = self._coefficients()
        best = self._counters.smallest(coef)
        return None if best is None else self._queues[self._counters.names[best[0]]][0]

    def _memory_binds(self) -> bool:
        """Whether memory-aware admission holds back the lowest-HF client's head now."""
        if not self.waiting:
            return False
        best = self._counters.smallest(self._coefficients()[0])
        return best is not None and not self._memory.fits(self._head_memory[best[0]])

    def select(self, fits) -> Request | None:
        """The lowest-HF eligible client's next request.  When it does not fit (the engine's room
        or memory-aware admission): with ``skip`` the lowest-HF eligible client's whose head does,
        else none (VTC's rule: stop filling)."""
        coef, _ = self._coefficients()
        counters = self._counters
        best = counters.smallest(coef)
        if best is None:
            return None
        first = best[0]
        names = counters.names
        caps = self._caps()
        eligible = caps is None or (counters.value(first, UFC) <= caps[0] and counters.value(first, RFC) <= caps[1])
        if eligible:
            req = self._queues[names[first]][0]
            if self._memory.fits(self._head_memory[first]) and fits(req):
                return req
            if not self.knobs.skip:
                return None
        room = self._memory.room()
        limit = getattr(fits, "max_pending", None)
        if limit is not None:  # in array operations
            if self.knobs.skip:
                sizes = [(self._head_pending, limit)]
                if room != INF:
                    sizes.append((self._head_memory, room))
                found = counters.smallest_eligible(coef, caps, sizes)
                if found is not None:
                    return self._queues[names[found[0]]][0]
                if eligible or counters.smallest_eligible(coef, caps) is not None:
                    return None
                return self._smallest_ufc(fits, room)
            found = counters.smallest_eligible(coef, caps)  # the lowest eligible HF, and only its head
            if found is None:
                return self._smallest_ufc(fits, room)
            i = found[0]
            ok = self._head_pending[i] <= limit and (room == INF or self._head_memory[i] <= room)
            return self._queues[names[i]][0] if ok else None
        if caps is not None and counters.smallest_eligible(coef, caps) is None:
            return self._smallest_ufc(fits, room)
        for i, _ in counters.within(coef, INF):  # the engine's fits, one request at a time
            if caps is not None and (counters.value(i, UFC) > caps[0] or counters.value(i, RFC) > caps[1]):
                continue
            req = self._queues[names[i]][0]
            if (room == INF or self._head_memory[i] <= room) and fits(req):
                return req
            if not self.knobs.skip:
                return None
        return None

    def _smallest_ufc(self, fits, room: float) -> Request | None:
        """Nobody is within both guards (the smallest UFC and the smallest RFC are different
        clients' and kappa is small): the smallest UFC goes, as VTC's rule would have it."""
        i = self._counters.smallest((1.0, 0.0))[0]
        req = self._queues[self._counters.names[i]][0]
        return req if (room == INF or self._head_memory[i] <= room) and fits(req) else None

    # -- predictions -------------------------------------------------------------------
    def _output_hat(self, req: Request) -> float:
        """The output tokens expected of ``req``."""
        lengths = self.knobs.lengths
        if lengths == "oracle":
            return float(req.output_tokens)
        if lengths == "predictor":
            return self._take(req)
        return self._average.get(req.client, float(req.output_tokens))

    def _output_quantile(self, req: Request) -> float:
        """A high quantile of ``req``'s output: the predictor's, else its client's recent history's
        (the request's own central prediction before any history)."""
        if self.knobs.lengths == "oracle":
            return float(req.output_tokens)
        known = self._quantiles.get(req.client)
        if self._quantile_of is not None:
            predicted = float(self._quantile_of(req, self.knobs.quantile))
            if known is not None and len(self._history[req.client]) >= TRUSTED_HISTORY:
                return min(predicted, known)  # a predictor out of its domain over-reserves (see docs/EQUINOX.md)
            return predicted
        return known if known is not None else self._average.get(req.client, float(req.output_tokens))

    def _reservation(self, req: Request) -> float:
        """The KV tokens memory-aware admission holds for ``req``: its prompt plus its quantile
        output (at least what it generated), at most the whole cache."""
        tokens = req.prompt_tokens + max(self._output_quantile(req), req.generated)
        return tokens if self.kv_capacity is None else min(tokens, self.kv_capacity)

    def _latency_factor(self, client: int, latency: float, tpot: float) -> float:
        """``q`` of a request of ``client`` with this latency (since arrival) and predicted TPOT: 1 at
        or under the reference, falling towards ``q_min`` above it.  The reference is the smaller of
        the TTFT SLO and the clients' typical latency before this request: the geometric mean over
        clients of each one's moving average (per client, so a client with many requests does not
        set it alone).  Then this request's latency joins its client's average."""
        k = self.knobs
        q = 1.0
        if k.gamma:
            ref = k.ttft_slo_s
            if self._latency_clients:
                ref = min(math.exp(self._latency_sum / self._latency_clients), ref)
            excess = max(0.0, latency / ref - 1.0, tpot / k.tpot_slo_s - 1.0)
            q = max(k.q_min, 1.0 / (1.0 + k.gamma * excess))
        log = math.log(max(latency, 1e-6))
        if self._latency_seen[client]:
            old = self._latency_log[client]
            new = old + LATENCY_EMA * (log - old)
        else:
            self._latency_seen[client] = True
            old, new = 0.0, log
            self._latency_clients += 1
        self._latency_log[client] = new
        self._latency_sum += new - old
        return q

    def _engine_time_hat(self, prompt: float, out: float) -> float:
        """Predicted engine-seconds of a request (compute and residency), from the measured step terms."""
        compute = self._terms.request_time(prompt, out, modelled=self.cost_model is not None)
        if self.kv_capacity:
            compute += self.knobs.residency * out * self._terms.step_s * (prompt + out / 2) / self.kv_capacity
        return compute

    # -- charges -----------------------------------------------------------------------
    def _charge_admission(self, req: Request, now: float) -> None:
        k, s = self.knobs, self.service
        prompt = req.prompt_tokens
        out_hat = self._output_hat(req)
        if self.kv_capacity is not None:  # a request's output cannot outgrow the cache
            out_hat = min(out_hat, max(self.kv_capacity - prompt, 1.0))
        budget = self._budget or 2048
        step_s = self._terms.step_s
        prefill_s = step_s * -(-prompt // budget)  # chunked prefill: a step per budget of tokens
        client = self._counters.index[req.client]
        q = self._latency_factor(client, now - req.arrival_s + prefill_s, step_s)
        ufc = q * (s.w_p * prompt + s.w_q * out_hat) / req.weight
        rfc = self._engine_time_hat(prompt, out_hat) / req.weight
        if rfc > self._max_request:
            self._max_request = rfc
        req.predicted_output = out_hat
        reserve = self._reservation(req) if k.memory_aware else 0.0
        values = (out_hat, q, ufc, rfc, 0.0, req.weight, prompt, 0.0, reserve)
        req.slot = self._charges.add(client, values)
        self._memory.admitted(reserve)
        self._add(req.client, ufc, rfc)

    def on_tokens(self, tokens, k: int) -> None:
        """Charge UFC for output tokens beyond the predicted length, as they come; grow the
        memory reservation of a request past its quantile."""
        if not len(tokens):
            return
        slots, generated = tokens.slots, tokens.generated
        c = self._charges
        if slots.min() < 0:  # requests without a slot are not charged
            mine = slots >= 0
            slots, generated = slots[mine], generated[mine]
        if self.knobs.memory_aware:
            over = c.prompt[slots] + generated - c.reserve[slots]
            grow = over > 0
            if grow.any():
                c.reserve[slots[grow]] += over[grow]
                self._memory.grew(float(over[grow].sum()))
        out_hat = c.out_hat[slots]
        beyond = generated > out_hat
        if not beyond.any() or not self.service.w_q:  # (w_q = 0: nothing to charge)
            return
        slots, generated = slots[beyond], generated[beyond]
        extra = generated - np.maximum(generated - k, out_hat[beyond])
        amount = self.service.w_q * extra * c.q[slots] / c.weight[slots]
        c.ufc[slots] += amount
        self._charge_clients(c.client[slots], amount, UFC)

    def on_step(self, now: float, duration_s: float, step) -> None:
        """Split the step's measured time among its requests by the cost model, add residency,
        and charge RFC for what goes beyond each request's prediction."""
        slots, tokens = step.slots, step.tokens
        total = int(tokens.sum())
        self._memory.step()

        if total:
            c = self._charges
            if slots.min() < 0:  # requests without a slot are not charged
                mine = slots >= 0
                slots, tokens = slots[mine], tokens[mine]
            context = c.context[slots]
            shares = self._terms.split(self.cost_model, duration_s, tokens, context, c.prompt[slots])
            held = context + tokens
            c.context[slots] = held
            if self.kv_capacity and self.knobs.residency:
                shares += (self.knobs.residency * duration_s / self.kv_capacity) * held
            actual = c.rfc_actual[slots] + shares / c.weight[slots]
            c.rfc_actual[slots] = actual
            charged = c.rfc[slots]
            beyond = actual > charged
            if beyond.any():
                slots, actual = slots[beyond], actual[beyond]
                amount = actual - charged[beyond]
                c.rfc[slots] = actual
                self._charge_clients(c.client[slots], amount, RFC)
            self._terms.observe(duration_s)
            if self.knobs.adaptive_budget and self._budget is not None:
                self._adapt_budget(duration_s, total)
        if now >= self._next_log:
            self._log(now)

    def _charge_clients(self, clients, amounts, row: int) -> None:
        """Add per-request ``amounts`` (> 0) to counter ``row`` (UFC or RFC) of their ``clients``."""
        self._counters.add_per_request(row, clients, amounts)
        self._changed[clients] = True

    def _adapt_budget(self, duration_s: float, tokens: int) -> None:
        """Shrink (x0.8) after a step slower than the TPOT SLO; grow (x1.25) after a step the
        budget bound (it used ``utilization_target`` of it and requests wait) when the step's
        predicted time with the extra tokens stays under the SLO."""
        k = self.knobs
        budget = self._budget
        if duration_s > k.tpot_slo_s:
            self._budget = max(k.budget_min, int(budget * 0.8))
        elif tokens >= k.utilization_target * budget and self.waiting:
            extra = budget // 4 + 1
            if self._terms.grown(duration_s, extra) <= k.tpot_slo_s:
                self._budget = min(k.budget_max, budget + extra)

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
        s = self.service
        self._head_since.pop(req.request_id, None)
        actual = float(c.q[slot]) * (s.w_p * req.prompt_tokens + s.w_q * req.generated) / req.weight
        rfc_actual = float(c.rfc_actual[slot])
        self._add(req.client, actual - float(c.ufc[slot]), rfc_actual - float(c.rfc[slot]))
        if rfc_actual > self._max_request:
            self._max_request = rfc_actual
        if self._memory.can_widen and self._memory_binds():
            self._memory.widen()
        self._memory.released(float(c.reserve[slot]), preempted=False)
        c.release(slot)
        req.slot = None
        old = self._average.get(req.client)
        self._average[req.client] = req.generated if old is None else (old * (WINDOW - 1) + req.generated) / WINDOW
        if self.knobs.memory_aware:
            history = self._history.get(req.client)
            if history is None:
                history = self._history[req.client] = deque(maxlen=HISTORY)
            history.append(req.generated)
            ordered = sorted(history)
            self._quantiles[req.client] = float(ordered[min(len(ordered) - 1, int(self.knobs.quantile * len(ordered)))])
        if self.predictor is not None:
            self.predictor.observe(req)

    # -- logging -----------------------------------------------------------------------
    def _log(self, now: float) -> None:
        """Sample the counters of the clients that changed since the last sample (HF: NaN when
        idle), and the spread of each counter over the backlogged clients."""
        a, b = self._scales()
        counters = self._counters
        changed = np.flatnonzero(self._changed)
        ufc, rfc = counters.values[UFC, changed], counters.values[RFC, changed]
        hf = np.where(counters.backlogged[changed], a * ufc + b * rfc, np.nan)
        self.trajectory.append(now, changed, ufc, rfc, hf)
        if counters.count > 1:
            n = len(counters.names)
            backlogged = counters.backlogged[:n]
            for row in (UFC, RFC):
                values = counters.values[row, :n][backlogged]
                spread = float(values.max() - values.min())
                if spread > self.max_spread[row]:
                    self.max_spread[row] = spread
        self._changed[:] = False
        self._next_log = now + self.knobs.log_interval_s

    def describe(self) -> dict:
        u, r = self.guard_units()
        guard = {"U": None if u == INF else u, "R": None if r == INF else r}
        spread = {"ufc": self.max_spread[UFC], "rfc": self.max_spread[RFC]}
        knobs = asdict(self.knobs)
        if knobs["kappa_r"] is None:
            knobs["kappa_r"] = knobs["kappa"]
        knobs = {k: (None if v == INF else v) for k, v in knobs.items()}  # None: infinite
        return {**super().describe(), **knobs, "guard": guard, "max_spread": spread}
