"""The engine-side half of the vLLM adapter, free of vLLM: our policy objects as a waiting queue.

``PolicyBridge`` keeps, for every request a real engine hands it, a mirror
``traces.request.Request`` (the object our policies know) and drives the policy the way the
simulator does:

* queue operations (``arrive``, ``peek``, ``pop``, ``prepend``, ``remove``, ``preempted``) map
  onto ``on_arrival``, ``select``, ``admit`` and ``requeue``;
* ``end_step`` reports what a step did: ``on_step`` with the ``(request, tokens)`` pairs, then
  ``on_tokens`` for the requests that produced output (``engine.feedback``'s ``Step`` and
  ``Tokens``, as the simulator sends them), then ``on_finish`` (a policy that keeps
  ``Policy``'s no-op ``on_step`` or ``on_tokens`` is not called for it: no pairs or lists are built);
* ``budget`` asks ``token_budget`` before a step.

It also writes the run's log (``serving.logs.RunLog``) in the simulator's schema.  Requests are
keyed by the engine's request id (a string); the adapter (``serving.vllm_adapter``) turns vLLM
objects into the plain numbers these methods take, so this module is tested without vLLM.

Two things a real engine does that the simulator does not, and how they map:

* vLLM may pop a request and put it back in the same step (a request whose grammar is still
  compiling, say): the policy charges admission at the first pop, once; the log records
  admission when the request first runs.
* A waiting request can be aborted (client gone).  Policies have no removal, so the request is
  marked and dropped when it reaches the head of its client's queue (admitted uncharged).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

from engine.feedback import Step, Tokens
from schedulers import EquinoxKnobs, ServiceWeights, make_policy, run_name
from schedulers.base import Policy
from serving.logs import RunLog
from traces.request import Request
from traces.result_schemas import REQUEST_SCHEMA

# Keys of a request's vLLM extra_args (the OpenAI body's ``vllm_xargs``) that the adapter reads.
TENANT_KEY = "equinox_tenant"
WEIGHT_KEY = "equinox_weight"
ROW_KEY = "equinox_request_id"  # the workload's request_id, set by replay drivers
ADDITIONAL_CONFIG_KEY = "equinox"  # vLLM --additional-config section with ServingSettings
# A rate-limit rejection's output carries f"{REJECTION_MARK}:{retry_after_s}:{limit}" as its
# stop_reason, from the adapter to serving.tenants, which answers the client 429.
REJECTION_MARK = "equinox_rate_limit"

# The order of PolicyBridge._log_request's row.
_REQUEST_FIELDS = (
    "request_id", "client_id", "arrival_s", "prompt_tokens", "output_tokens", "weight", "conversation_id", "prompt",
    "scheduler", "status", "admitted_s", "first_token_s", "finish_s", "generated_tokens", "preemptions",
    "waiting_at_arrival", "waiting_tokens_at_arrival", "running_at_arrival", "kv_used_at_arrival",
)  # fmt: skip
# Columns after these (reject_reason, cached_prompt_tokens, ...) are left null by the log.
assert _REQUEST_FIELDS == tuple(REQUEST_SCHEMA.names[: len(_REQUEST_FIELDS)]), (
    "serving.bridge._log_request is out of step with REQUEST_SCHEMA"
)

# How a request ended, as the engine says (vLLM's FinishReason names), -> the log's status.  A
# request that stopped (EOS, a stop token or string) or reached its length is finished; the
# audit, train-predictors and calibrate count it as served.
# A request refused before it ran is rejected (``rate_limit``: the policy's, e.g. rpm:N;
# ``too_long``: longer than the model's context); anything else (``abort``: the client left,
# ``error``) is aborted.
COMPLETED = frozenset({"stop", "length", "repetition", "finished"})
REFUSED = frozenset({"rejected", "rate_limit", "too_long", "exceeds_kv"})


def status_of(reason: str) -> str:
    """The ``status`` column for an end ``reason`` (``stop``, ``length``, ``abort``, ``error``...)."""
    if reason in COMPLETED:
        return "finished"
    return "rejected" if reason in REFUSED else "aborted"


@dataclass(frozen=True)
class ServingSettings:
    """What the adapter needs to know; travels to vLLM's engine process in ``additional_config``."""

    scheduler: str = "fcfs"
    seed: int = 42
    w_p: float = 1.0
    w_q: float = 2.0
    equinox: dict = field(default_factory=dict)  # EquinoxKnobs fields
    predictors: str | None = None  # a MoPE bundle directory
    log_dir: str | None = None  # write the run directory here (flushed regularly)
    flush_interval_s: float = 5.0
    default_tenant: str = "default"  # requests that name no tenant
    peak_flops: float | None = None  # the device's dense peak FLOP/s, for MFU (None: known GPUs only)
    run: dict = field(default_factory=dict)  # extra run.json fields (workload record, mode)

    def __post_init__(self):
        run_name(self.scheduler)  # validates the spec
        EquinoxKnobs(**self.equinox)  # validates the knobs
        if self.flush_interval_s <= 0:
            raise ValueError("flush_interval_s must be > 0")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError("peak_flops must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "ServingSettings":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown equinox setting(s): {', '.join(unknown)}")
        return cls(**data)

    @property
    def service(self) -> ServiceWeights:
        return ServiceWeights(self.w_p, self.w_q)

    def make_policy(self):
        predictor = None
        if self.predictors:
            from predictors import load_bundle

            predictor = load_bundle(self.predictors).session()
        return make_policy(
            self.scheduler, seed=self.seed, service=self.service, equinox=EquinoxKnobs(**self.equinox),
            predictor=predictor,
        )  # fmt: skip


def tenant_of(extra_args: dict | None, default: str) -> tuple[str, float]:
    """(tenant, weight) from a request's extra_args."""
    extra = extra_args or {}
    tenant = extra.get(TENANT_KEY)
    tenant = str(tenant) if tenant not in (None, "") else default
    try:
        weight = float(extra.get(WEIGHT_KEY, 1.0))
    except (TypeError, ValueError):
        weight = 1.0
    if not weight > 0 or weight != weight or weight == float("inf"):
        weight = 1.0
    return tenant, weight


def _overrides(policy, name: str) -> bool:
    """Whether ``policy.<name>`` does more than ``Policy``'s no-op (an engine may skip calling a no-op)."""
    method = getattr(policy, name)
    return getattr(method, "__func__", method) is not getattr(Policy, name)


class _Entry:
    __slots__ = ("rid", "req", "row_id", "queued", "cancelled", "running", "logged_admit")

    def __init__(self, rid: str, req: Request, row_id):
        self.rid = rid
        self.req = req
        self.row_id = row_id
        self.queued = False
        self.cancelled = False
        self.running = False  # scheduled since its last (re)admission
        self.logged_admit = None  # start of the step it first ran in


@dataclass
class StepBatch:
    """What ``schedule()`` decided, captured for ``end_step``."""

    start_s: float
    budget: int
    tokens: dict  # request id -> tokens scheduled
    computed_before: dict  # request id -> tokens computed before this step
    preempted: int = 0


class PolicyBridge:
    def __init__(
        self,
        policy,
        log: RunLog,
        *,
        scheduler_name: str,
        kv_capacity_tokens: int,
        clock: Callable[[], float] | None = None,
        flops: Callable[[int, float, int, int], float] | None = None,
        t0: float | None = None,
    ):
        self.policy = policy
        self.log = log
        self.scheduler_name = scheduler_name
        self.kv_capacity_tokens = kv_capacity_tokens
        self.t0 = time.time() if t0 is None else t0  # Unix time of the run's time 0
        self.clock = clock or (lambda: time.time() - self.t0)
        self.flops = flops or (lambda prefill, pairs, decode, kv: 0.0)
        self.entries: dict[str, _Entry] = {}
        self._by_seq: dict[int, _Entry] = {}
        self._seq = 0
        self._queued = 0
        self._cancelled = 0
        self._selected: _Entry | None = None
        self._step_preempted = 0
        self.rejection: tuple[float, int] | None = None  # the last arrival's: (retry after, s; limit)
        self.waiting_tokens = 0  # tokens to compute before the waiting requests' next output

    # -- arrivals ----------------------------------------------------------------------
    def arrive(
        self,
        rid: str,
        *,
        tenant: str,
        weight: float,
        prompt_tokens: int,
        max_tokens: int,
        arrival_s: float,
        running: int,
        kv_used: float,
        row_id: int | None = None,
    ) -> bool:
        """A new request; False when the policy rejects it (it is logged as rejected)."""
        req = Request(self._seq, tenant, arrival_s, prompt_tokens, max_tokens, weight)
        self._seq += 1
        req.arrival_state = (self.policy.waiting, self.waiting_tokens, running, kv_used)
        entry = _Entry(rid, req, row_id)
        self.entries[rid] = entry
        self._by_seq[req.request_id] = entry
        if not self.policy.on_arrival(req, self.clock()):
            retry = getattr(self.policy, "retry_after_s", None)
            self.rejection = (float(retry(req)) if retry else 0.0, int(getattr(self.policy, "limit", 0)))
            req.status = "rejected"
            self._forget(entry)
            self._log_request(entry, "rejected", "rate_limit")
            return False
        self._enqueue(entry)
        return True

    def known(self, rid: str) -> bool:
        return rid in self.entries

    def _enqueue(self, entry: _Entry) -> None:
        entry.queued = True
        entry.running = False
        entry.req.status = "waiting"
        self._queued += 1
        self.waiting_tokens += entry.req.pending
        self._selected = None

    def _dequeue(self, entry: _Entry) -> None:
        entry.queued = False
        self._queued -= 1
        self.waiting_tokens -= entry.req.pending

    # -- the queue ---------------------------------------------------------------------
    def __len__(self) -> int:
        return self._queued - self._cancelled

    def queued_ids(self) -> list[str]:
        """Waiting request ids in arrival order (the policy's order is only known one at a time)."""
        waiting = [e for e in self.entries.values() if e.queued and not e.cancelled]
        waiting.sort(key=lambda e: (e.req.arrival_s, e.req.request_id))
        return [e.rid for e in waiting]

    def peek(self, fits: Callable[[str], bool] | None = None) -> str:
        """The request the policy admits next (``fits(rid)`` says whether the engine has room)."""
        if self._selected is not None:
            return self._selected.rid
        if not len(self):
            raise IndexError("peek from an empty queue")

        def fits_mirror(req: Request) -> bool:
            entry = self._by_seq[req.request_id]
            return entry.cancelled or fits is None or fits(entry.rid)

        while True:
            req = self.policy.select(fits_mirror) or self.policy.peek()
            if req is None:  # cannot happen while len(self) > 0
                raise IndexError("the policy has no waiting request")
            entry = self._by_seq[req.request_id]
            if entry.cancelled:
                self._drop(entry)
                continue
            self._selected = entry
            return entry.rid

    def pop(self) -> str:
        entry = self._selected
        if entry is None:
            self.peek()
            entry = self._selected
        self._selected = None
        now = self.clock()
        req = entry.req
        resumed = req.admitted_s is not None
        self.policy.admit(req, now, resumed)
        if not resumed:
            req.admitted_s = now
        req.status = "running"
        self._dequeue(entry)
        return entry.rid

    def prepend(self, rid: str) -> None:
        """Back to the head of its client's queue: a preemption, or a request vLLM skipped this step."""
        entry = self.entries[rid]
        self._enqueue(entry)
        self.policy.requeue(entry.req)

    def preempted(self, rid: str) -> None:
        """The engine preempted a running request (its KV is recomputed when it resumes)."""
        req = self.entries[rid].req
        req.preemptions += 1
        req.computed = 0
        req.decoding = False
        self._step_preempted += 1

    def remove(self, rid: str) -> None:
        """A waiting request left the queue (aborted or finished elsewhere)."""
        entry = self.entries.get(rid)
        if entry is None or not entry.queued or entry.cancelled:
            return
        entry.cancelled = True
        self._cancelled += 1
        if self._selected is entry:
            self._selected = None
        # Drop it now when it is the policy's head; otherwise when it gets there.
        head = self.policy.peek()
        while head is not None and self._by_seq[head.request_id].cancelled:
            self._drop(self._by_seq[head.request_id])
            head = self.policy.peek()

    def _drop(self, entry: _Entry) -> None:
        self.policy.admit(entry.req, self.clock(), True)  # resumed: no admission charge
        entry.cancelled = False
        self._cancelled -= 1
        self._dequeue(entry)
        if entry.rid not in self.entries:  # it already ended
            self._by_seq.pop(entry.req.request_id, None)

    # -- steps ---------------------------------------------------------------------------
    def budget(self, default: int, cap: int) -> int:
        """The policy's token budget for the next step, within [1, cap]."""
        self._selected = None  # counters moved since the last step: select afresh
        return max(1, min(int(self.policy.token_budget(default)), cap))

    def take_preempted(self) -> int:
        n, self._step_preempted = self._step_preempted, 0
        return n

    def end_step(
        self,
        batch: StepBatch,
        *,
        end_s: float,
        outputs: dict,
        finished: dict,
        waiting: int,
        still_busy: bool,
        kv_used_tokens: int,
    ) -> None:
        """A step ended.  ``outputs``: request id -> output tokens so far (scheduled requests);
        ``finished``: request id -> how it ended (``stop``, ``length``, ``abort``...; see ``status_of``)."""
        get = outputs.get
        self.end_step_totals(
            batch, [get(rid) for rid in batch.tokens], end_s=end_s, finished=finished, waiting=waiting,
            still_busy=still_busy, kv_used_tokens=kv_used_tokens,
        )  # fmt: skip

    def end_step_totals(
        self,
        batch: StepBatch,
        totals: list,
        *,
        end_s: float,
        finished: dict,
        waiting: int,
        still_busy: bool,
        kv_used_tokens: int,
    ) -> None:
        """``end_step`` with the output tokens so far as a list in ``batch.tokens``' order (None: not known).

        A first pass over the batch counts the step and sets each mirror's ``computed`` to what the
        step found; ``on_step`` (only if the policy overrides that no-op) sees the batch so; a second
        pass adds the step's tokens and output, grouping the requests that produced output for
        ``on_tokens`` (again only if the policy overrides it).
        """
        start = batch.start_s
        policy = self.policy
        tokens = batch.tokens
        entries_get = self.entries.get
        prefill_tokens = decode_tokens = prefill_reqs = admitted = decode_kv = 0
        attn_pairs = 0.0
        reqs: list[Request] = []  # the batch's mirrors, in batch.tokens' order
        for (rid, n), before in zip(tokens.items(), map(batch.computed_before.get, tokens)):
            entry = entries_get(rid)
            if entry is None:  # it ended during the step
                continue
            req = entry.req
            if before is None:
                before = req.computed
            req.computed = before
            if req.decoding:
                decode_tokens += 1
                decode_kv += before + 1
            else:
                prefill_reqs += 1
                prefill_tokens += n
                attn_pairs += n * (before + (n + 1) / 2)
            if not entry.running:
                entry.running = True
                admitted += 1
                if entry.logged_admit is None:
                    entry.logged_admit = start
            reqs.append(req)
        ns = tokens.values()
        if len(reqs) < len(tokens):  # leave out the requests that ended during the step
            entries = self.entries
            kept = [(n, total) for (rid, n), total in zip(tokens.items(), totals) if rid in entries]
            ns, totals = [n for n, _ in kept], [total for _, total in kept]
        if reqs and _overrides(policy, "on_step"):
            policy.on_step(start, end_s - start, Step.of(list(zip(reqs, ns))))
        wants_tokens = _overrides(policy, "on_tokens")
        produced: dict[int, list[Request]] = {}  # tokens produced -> requests, for on_tokens
        ones = None  # produced[1], the usual case
        for req, n, total in zip(reqs, ns, totals):
            req.computed += n
            if total is None:
                continue
            k = total - req.generated
            if k > 0:
                req.generated = total
                req.decoding = True
                if req.first_token_s is None:
                    req.first_token_s = end_s
                if wants_tokens:
                    if k == 1 and ones is not None:
                        ones.append(req)
                    else:
                        group = produced.get(k)
                        if group is None:
                            group = produced[k] = []
                            if k == 1:
                                ones = group
                        group.append(req)
        for k, group in produced.items():
            policy.on_tokens(Tokens.of(group), k)
        done = 0
        for rid, reason in finished.items():
            done += self.finish(rid, end_s, reason)
        self.log.step_values(
            start, end_s, still_busy,
            (prefill_tokens, decode_tokens, prefill_reqs, decode_tokens, len(reqs), waiting, admitted, done,
             batch.preempted, kv_used_tokens, self.kv_capacity_tokens, batch.budget,
             float(self.flops(prefill_tokens, attn_pairs, decode_tokens, decode_kv))),
        )  # fmt: skip

    def finish(self, rid: str, now: float, reason: str = "stop", generated: int | None = None) -> int:
        """A request ended (``reason``: ``stop``, ``length``, ``abort``...; ``finished`` and ``aborted``
        are taken too); returns 1 if it was known and not yet ended."""
        entry = self.entries.get(rid)
        if entry is None:
            return 0
        status = status_of(reason)
        req = entry.req
        if generated is not None and generated > req.generated:
            req.generated = generated
        if entry.queued:
            self.remove(rid)
        req.status = status
        req.finish_s = now
        if status == "finished" or req.first_token_s is not None:
            if req.first_token_s is None:  # finished without output (max_tokens 0)
                req.first_token_s = now
            self.policy.on_finish(req, now)
        self._forget(entry)
        self._log_request(entry, status, reason)
        return 1

    def _forget(self, entry: _Entry) -> None:
        self.entries.pop(entry.rid, None)
        if not entry.queued:
            self._by_seq.pop(entry.req.request_id, None)
        # a queued (cancelled) entry stays findable by the policy until it is dropped

    def _log_request(self, entry: _Entry, status: str, reason: str) -> None:
        req = entry.req
        admitted = entry.logged_admit
        if status == "aborted" and admitted is None:
            admitted = req.finish_s  # it left the queue then (see docs/SERVING.md)
        waiting, waiting_tokens, running, kv_used = req.arrival_state
        row = entry.row_id
        rejected = status == "rejected"
        self.log.request_values((  # REQUEST_SCHEMA's fields, in order (_REQUEST_FIELDS)
            row if row is not None else req.request_id, req.client, req.arrival_s, req.prompt_tokens,
            req.output_tokens if row is not None else req.generated, req.weight, None, None, self.scheduler_name,
            status, None if rejected else admitted, None if rejected else req.first_token_s,
            None if rejected else req.finish_s, req.generated, req.preemptions,
            waiting, waiting_tokens, running, float(kv_used),
        ), reason)  # fmt: skip
