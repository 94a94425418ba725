"""``equinox replay --endpoint URL``: replay a workload against any OpenAI-compatible server.

Each request is sent at its arrival time (a thread pool bounds the requests in flight; the
rest wait at the client) as a streaming completion, and timed at the client: the first
streamed token is its TTFT, the last its finish, and every chunk's arrival is kept.  The tenant
travels in the body (``vllm_xargs.equinox_tenant`` and ``equinox_weight``, which
``equinox serve`` reads in open mode and checks against the API key otherwise, and the OpenAI
``user`` field); ``api_keys`` maps tenants to keys for a server with a tenants file.

Prompts are token ids (the completions API takes a list of ints) so the server computes
exactly the workload's prompt length: seeded random ids in ``[100, 1000)``, valid for any
vocabulary of at least 1,000 tokens.  ``prompt="text"`` sends the workload's prompt text (or
filler words) instead, as the chat route must.  ``ignore_eos`` makes the output length the
workload's (a vLLM extension; ``vllm_extensions=False`` leaves extensions out for strict
servers, and outputs may then end early).

The run directory has the simulator's ``requests.parquet`` (``admitted_s`` is the first token's
arrival: a client cannot see admission), an empty ``steps.parquet`` (a client sees no engine
steps; with ``equinox serve --log-dir`` the server logs them), ``run.json``, and
``client.parquet``: per request the send time, HTTP status, error and every chunk's arrival.

Everything here is the standard library: no vLLM needed.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from engine.replay import write_run
from engine.results import atomic_write_parquet
from serving.bridge import TENANT_KEY, WEIGHT_KEY
from serving.results import requests_in_workload_order, workload_record
from traces.errors import InputError
from traces.result_schemas import STEP_SCHEMA
from traces.schema import column_lists

CLIENT_FILE = "client.parquet"
CLIENT_SCHEMA = pa.schema(
    [
        ("request_id", pa.int64()),
        ("client_id", pa.string()),
        ("sent_s", pa.float64()),  # when the client sent it (after waiting for a free slot)
        ("http_status", pa.int64()),
        ("error", pa.string()),
        ("chunk_times_s", pa.list_(pa.float64())),  # arrival of every streamed chunk with output
    ]
)
TOKEN_LOW, TOKEN_HIGH = 100, 1000


class EndpointError(InputError):
    """The endpoint cannot be reached or answers errors."""


@dataclass(frozen=True)
class EndpointOptions:
    url: str  # http(s)://host:port, with or without /v1
    model: str | None = None  # None: the first model the server lists
    api_key: str | None = None  # one key for every request
    api_keys: dict = field(default_factory=dict)  # tenant -> key (overrides api_key)
    concurrency: int = 64
    timeout_s: float = 600.0
    route: str = "completions"  # or "chat"
    prompt: str = "tokens"  # or "text"
    vllm_extensions: bool = True  # ignore_eos and vllm_xargs
    max_errors: int = 10  # stop the run after more failed requests than this
    kv_capacity_tokens: int | None = None  # for the audit's VTC bound; None: ask vLLM's /metrics

    def __post_init__(self):
        if self.concurrency < 1:
            raise InputError("concurrency must be >= 1", source="--concurrency")
        if self.route not in ("completions", "chat"):
            raise InputError("route must be completions or chat", source="--route")
        if self.prompt not in ("tokens", "text"):
            raise InputError("prompt must be tokens or text", source="--prompt")
        if self.route == "chat" and self.prompt == "tokens":
            object.__setattr__(self, "prompt", "text")  # chat messages are text


class _Target:
    """Where requests go: scheme, host, port and the /v1 prefix."""

    def __init__(self, url: str):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EndpointError(f"expected an http(s)://host:port URL; got {url!r}", source="--endpoint")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path.rstrip("/")
        self.prefix = path if path.endswith("/v1") else f"{path}/v1"
        self.root = path[: -len("/v1")] if path.endswith("/v1") else path

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)


def _headers(key: str | None) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _get(target: _Target, path: str, key: str | None, timeout: float) -> tuple[int, bytes]:
    conn = target.connect(timeout)
    try:
        conn.request("GET", path, headers=_headers(key))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def probe(target: _Target, options: EndpointOptions) -> str:
    """Check the endpoint answers and return the model to use; a clear error otherwise."""
    key = options.api_key or next(iter(options.api_keys.values()), None)
    try:
        status, body = _get(target, f"{target.prefix}/models", key, min(options.timeout_s, 30.0))
    except (OSError, http.client.HTTPException) as exc:
        raise EndpointError(f"cannot reach {target.url}: {exc}", source="--endpoint") from None
    if status != 200:
        raise EndpointError(f"GET {target.prefix}/models answered {status}: {_message(body)}", source="--endpoint")
    if options.model:
        return options.model
    try:
        return json.loads(body)["data"][0]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise EndpointError(f"{target.url} lists no model; pass --model", source="--endpoint") from None


def kv_capacity_from_metrics(target: _Target, timeout: float, key: str | None = None) -> int | None:
    """vLLM's KV cache size in tokens (``vllm:cache_config_info``), if the server exposes it."""
    try:
        status, body = _get(target, f"{target.root}/metrics", key, timeout)
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    m = re.search(r"vllm:cache_config_info\{([^}]*)\}", body.decode("utf-8", "replace"))
    if not m:
        return None
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    try:
        return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
    except (KeyError, ValueError):
        return None


def _message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            text = str(err.get("message", err))
        else:
            text = str(err)
    except ValueError:
        pass
    return text[:300]


@dataclass
class _Result:
    sent_s: float | None = None
    status: int | None = None
    error: str | None = None
    chunks: list = field(default_factory=list)
    usage_tokens: int | None = None
    finished: bool = False


class _Client:
    """One persistent connection per worker thread."""

    def __init__(self, target: _Target, timeout: float):
        self.target = target
        self.timeout = timeout
        self.local = threading.local()

    def post_stream(self, path: str, body: dict, key: str | None, clock, result: _Result) -> None:
        data = json.dumps(body).encode()
        for attempt in (0, 1):  # a kept-alive connection the server closed gets one retry
            conn = getattr(self.local, "conn", None)
            fresh = conn is None
            if fresh:
                conn = self.local.conn = self.target.connect(self.timeout)
            try:
                result.sent_s = clock()
                conn.request("POST", path, body=data, headers=_headers(key))
                resp = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self.local.conn = None
                if fresh or attempt:
                    raise
        result.status = resp.status
        if resp.status != 200:
            result.error = f"HTTP {resp.status}: {_message(resp.read())}"
            return
        chat = path.endswith("/chat/completions")
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                result.finished = True
                break
            now = clock()
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if event.get("error"):
                result.error = f"stream error: {_message(payload)}"
                break
            usage = event.get("usage")
            if usage and usage.get("completion_tokens") is not None:
                result.usage_tokens = int(usage["completion_tokens"])
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if text:
                    result.chunks.append(now)
                    break
        if not result.finished and result.error is None:
            result.error = "the stream ended without [DONE]"
        if result.finished:
            resp.read()  # the rest of the body (chunked: its last chunk), so the connection can be reused
        if resp.will_close or not result.finished:
            conn.close()
            self.local.conn = None


def replay_endpoint(
    workload: pa.Table,
    out_dir: Path,
    options: EndpointOptions,
    *,
    workload_name: str = "workload",
    seed: int = 42,
    name: str = "endpoint",
    progress=None,
    echo=None,
) -> Path:
    """Replay ``workload`` against ``options.url``; write ``out_dir/<name>/``; returns that directory."""
    target = _Target(options.url)
    model = probe(target, options)
    kv_capacity = options.kv_capacity_tokens
    if kv_capacity is None:
        any_key = options.api_key or next(iter(options.api_keys.values()), None)
        kv_capacity = kv_capacity_from_metrics(target, 10.0, any_key)
    path = f"{target.prefix}/chat/completions" if options.route == "chat" else f"{target.prefix}/completions"

    ids, clients, arrivals, prompts, outputs, weights, texts = column_lists(workload)
    n = len(ids)
    rng = np.random.default_rng(seed)

    def body(i: int) -> dict:
        b = {"model": model, "max_tokens": int(outputs[i]), "stream": True,
             "stream_options": {"include_usage": True}, "user": str(clients[i])}  # fmt: skip
        if options.prompt == "tokens":
            prompt = rng.integers(TOKEN_LOW, TOKEN_HIGH, size=int(prompts[i])).tolist()
        else:
            prompt = texts[i] or " ".join(["hello"] * int(prompts[i]))
        if options.route == "chat":
            b["messages"] = [{"role": "user", "content": prompt}]
        else:
            b["prompt"] = prompt
        if options.vllm_extensions:
            b["ignore_eos"] = True
            b["vllm_xargs"] = {TENANT_KEY: str(clients[i]), WEIGHT_KEY: float(weights[i])}
        return b

    bodies = [body(i) for i in range(n)]  # seeded prompts, drawn before any timing
    results = [_Result() for _ in range(n)]
    client = _Client(target, options.timeout_s)
    state = {"errors": 0, "first_error": None, "done": 0, "in_flight": 0, "queued": 0}
    lock = threading.Lock()
    stop = threading.Event()
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    arrival_state = [(0, 0) for _ in range(n)]

    def work(i: int) -> None:
        r = results[i]
        with lock:
            state["queued"] -= 1
            state["in_flight"] += 1
        try:
            if not stop.is_set():
                key = options.api_keys.get(str(clients[i]), options.api_key)
                client.post_stream(path, bodies[i], key, clock, r)
        except (OSError, http.client.HTTPException) as exc:
            r.error = f"{type(exc).__name__}: {exc}"
        finally:
            with lock:
                state["in_flight"] -= 1
                state["done"] += 1
                if r.error is not None and not stop.is_set():
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or r.error
                    if state["errors"] > options.max_errors:
                        stop.set()
            if progress is not None:
                progress(state["done"])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="equinox-endpoint") as pool:
        for i in range(n):
            if stop.is_set():
                break
            delay = arrivals[i] - clock()
            if delay > 0:
                stop.wait(delay)
            with lock:
                arrival_state[i] = (state["queued"], state["in_flight"])
                state["queued"] += 1
            pool.submit(work, i)
    wall = time.perf_counter() - started
    if stop.is_set():
        raise EndpointError(
            f"stopped after {state['errors']} failed requests (more than --max-errors {options.max_errors}); "
            f"first: {state['first_error']}",
            source=options.url,
        )

    rows = {name_: [] for name_ in ("request_id", "client_id", "arrival_s", "prompt_tokens", "output_tokens",
                                    "weight", "conversation_id", "prompt", "scheduler", "status", "admitted_s",
                                    "first_token_s", "finish_s", "generated_tokens", "preemptions",
                                    "waiting_at_arrival", "waiting_tokens_at_arrival", "running_at_arrival",
                                    "kv_used_at_arrival")}  # fmt: skip
    for i, r in enumerate(results):
        ok = r.error is None and r.finished and r.status == 200
        generated = r.usage_tokens if r.usage_tokens is not None else len(r.chunks)
        first = r.chunks[0] if (ok and r.chunks) else None
        finish = r.chunks[-1] if (ok and r.chunks) else None
        values = dict(
            request_id=ids[i], client_id=clients[i], arrival_s=arrivals[i], prompt_tokens=prompts[i],
            output_tokens=outputs[i], weight=weights[i], conversation_id=None, prompt=None, scheduler=name,
            status="finished" if ok and first is not None else "rejected",
            admitted_s=first, first_token_s=first, finish_s=finish, generated_tokens=generated if ok else 0,
            preemptions=0, waiting_at_arrival=arrival_state[i][0], waiting_tokens_at_arrival=None,
            running_at_arrival=arrival_state[i][1], kv_used_at_arrival=None,
        )  # fmt: skip
        for k, v in values.items():
            rows[k].append(v)
    from traces.result_schemas import REQUEST_SCHEMA

    for name_ in REQUEST_SCHEMA.names:  # the appended columns (reject_reason, ...): null
        rows.setdefault(name_, [None] * len(results))
    logged = pa.Table.from_pydict(rows, schema=REQUEST_SCHEMA)
    requests = requests_in_workload_order(workload, logged, name)
    steps = STEP_SCHEMA.empty_table()
    failed = [r.error for r in results if r.error is not None]
    config = {
        "scheduler": name,
        "scheduler_spec": None,
        "seed": seed,
        "service_weights": {"w_p": 1.0, "w_q": 2.0},
        "workload": workload_record(workload, workload_name),
        "engine": {
            "kind": "endpoint",
            "url": options.url,
            "model": model,
            "route": options.route,
            "prompt": options.prompt,
            "concurrency": options.concurrency,
            "kv_capacity_tokens": kv_capacity if kv_capacity is not None else 0,
            "kv_capacity_known": kv_capacity is not None,
            "peak_flops": None,
            "timing": "client side: admitted_s is the first token's arrival; no engine steps",
        },
        "errors": len(failed),
        "first_error": failed[0] if failed else None,
        "wall_s": round(wall, 3),
        "steps": 0,
    }
    run_dir = Path(out_dir) / name
    write_run(run_dir, requests, steps, config)
    client_table = pa.table(
        {
            "request_id": ids,
            "client_id": [str(c) for c in clients],
            "sent_s": [r.sent_s for r in results],
            "http_status": [r.status for r in results],
            "error": [r.error for r in results],
            "chunk_times_s": [r.chunks for r in results],
        },
        schema=CLIENT_SCHEMA,
    )
    atomic_write_parquet(client_table, run_dir / CLIENT_FILE)
    if failed and echo is not None:
        echo(f"warning: {len(failed)} of {n} requests failed (logged as rejected); first: {failed[0]}")
    return run_dir
