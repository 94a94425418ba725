"""How `equinox serve` answers and logs the ends of requests, on vLLM's CPU build (tiny Llama).

* A request that ends on a ``stop`` string: vLLM finds the string in its front end and aborts
  the request in the engine; the client gets ``finish_reason: "stop"`` and the log must say
  ``finished`` (the audit counts only finished rows), with the engine's reason in
  ``run.json``'s ``end_reasons``.
* A request the policy rejects (``rpm:N``): HTTP 429 with ``Retry-After`` and an OpenAI-style
  error body, streaming or not, with ``logprobs`` + ``echo``, on completions and chat.

One open-mode server with ``rpm:2`` serves the module (about half a minute to start on 2 cores).
"""

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]'); serve tests skipped")

import pandas as pd  # noqa: E402
from test_serving_serve import start_server  # noqa: E402

from serving.bridge import ServingSettings  # noqa: E402

LIMIT = 2  # rpm:2: a tenant's third request within a minute is refused


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from serving.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("serve-rpm")
    settings = ServingSettings(scheduler=f"rpm:{LIMIT}", log_dir=str(root / "logs"), flush_interval_s=0.3)
    proc, url = start_server(root, model, settings)
    yield {"url": url, "proc": proc, "logs": root / "logs"}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def call(url, path, body):
    """POST ``body``; returns (status, headers, text)."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def logs(server, settle_s=1.0):
    time.sleep(settle_s)  # a few flush intervals
    req = pd.read_parquet(server["logs"] / "requests.parquet")
    run = json.loads((server["logs"] / "run.json").read_text())
    return req, run


def test_a_request_that_ends_on_a_stop_string_is_logged_finished(server):
    body = {"model": "tiny", "prompt": "hello fair share", "max_tokens": 8, "temperature": 0, "ignore_eos": True,
            "user": "stopper"}  # fmt: skip
    status, _, text = call(server["url"], "/v1/completions", body)
    assert status == 200
    first = json.loads(text)["choices"][0]
    assert first["finish_reason"] == "length"
    words = first["text"].split()
    assert len(words) >= 4
    stop = words[len(words) // 2]
    # The same greedy continuation, told to stop at a word in its middle.
    status, _, text = call(server["url"], "/v1/completions", {**body, "stop": [stop]})
    assert status == 200
    choice = json.loads(text)["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert stop not in choice["text"] and len(choice["text"].split()) < len(words)

    req, run = logs(server)
    mine = req[req.client_id == "stopper"]
    assert len(mine) == 2 and (mine.status == "finished").all()
    assert mine.finish_s.notna().all() and (mine.generated_tokens > 0).all()
    assert run["end_reasons"]["stop"] >= 1 and run["end_reasons"]["length"] >= 1
    assert run["end_reasons"].get("abort", 0) == 0
    from reports.audit import audit

    (summary,) = audit([server["logs"]]).runs
    assert summary["requests"]["finished"] == int((req.status == "finished").sum())


def retry_after_s(headers) -> int:
    value = {k.lower(): v for k, v in headers.items()}["retry-after"]
    return int(value)


def test_rate_limited_requests_get_429_with_retry_after_streaming_or_not(server):
    url = server["url"]
    base = {"model": "tiny", "prompt": "hello", "max_tokens": 2, "user": "limited"}
    started = time.time()
    for _ in range(LIMIT):
        assert call(url, "/v1/completions", base)[0] == 200
    refused = {
        "plain": ("/v1/completions", base),
        "stream": ("/v1/completions", {**base, "stream": True}),
        "logprobs+echo": ("/v1/completions", {**base, "logprobs": 1, "echo": True}),
        "logprobs+echo stream": ("/v1/completions", {**base, "logprobs": 1, "echo": True, "stream": True}),
        "chat": ("/v1/chat/completions",
                 {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2,
                  "user": "limited"}),
        "chat stream": ("/v1/chat/completions",
                        {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2,
                         "user": "limited", "stream": True}),
    }  # fmt: skip
    for what, (path, body) in refused.items():
        status, headers, text = call(url, path, body)
        assert status == 429, f"{what}: HTTP {status} {text[:300]}"
        elapsed = time.time() - started
        # seconds until the tenant's first request leaves the 60 s window
        assert 60 - elapsed - 1 <= retry_after_s(headers) <= 60, what
        assert headers.get("content-type", headers.get("Content-Type")) == "application/json", what
        error = json.loads(text)["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error", what
        assert "'limited'" in error["message"] and f"{LIMIT} requests a minute" in error["message"], what

    # Another tenant is not limited, logprobs + echo included.
    status, _, text = call(url, "/v1/completions", {**base, "user": "other", "logprobs": 1, "echo": True})
    assert status == 200 and json.loads(text)["choices"][0]["finish_reason"] == "length"

    req, run = logs(server)
    mine = req[req.client_id == "limited"]
    assert sorted(mine.status) == ["finished"] * LIMIT + ["rejected"] * len(refused)
    assert run["end_reasons"]["rate_limit"] == len(refused)
