"""`equinox serve`'s tenants: the file, and the ASGI middleware that stamps tenants into requests (no vLLM)."""

import asyncio
import hashlib
import json

import pytest

from serving.bridge import ServingSettings
from serving.server import server_command
from serving.tenants import TenantMiddleware, Tenants, announcement
from traces.errors import InputError

TOML = """
[tenants.alice]
keys = ["sk-alice-1", "sk-alice-2"]
weight = 2.0

[tenants.bob]
key_sha256 = "%s"
""" % hashlib.sha256(b"sk-bob").hexdigest()


@pytest.fixture
def tenants(tmp_path):
    path = tmp_path / "tenants.toml"
    path.write_text(TOML)
    return Tenants.load(path)


def test_tenants_file_maps_keys_and_hashed_keys_to_tenants(tenants):
    assert tenants.names == ["alice", "bob"]
    assert tenants.lookup("sk-alice-2").weight == 2.0
    assert tenants.lookup("sk-bob").name == "bob" and tenants.lookup("sk-bob").weight == 1.0
    assert tenants.lookup("sk-eve") is None and tenants.lookup(None) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "at least one"),
        ("[tenants.a]\nweight = 1\n", "expected key, keys or key_sha256"),
        ("[tenants.a]\nkey = 'k'\nweight = 0\n", "positive number"),
        ("[tenants.a]\nkey = 'k'\n[tenants.b]\nkey = 'k'\n", "also 'a'"),
        ("[tenants.a]\nkey = 'k'\ncolour = 'red'\n", "unknown key"),
        ("[tenants.a]\nkey_sha256 = 'abc'\n", "64 hex digits"),
        ("[tenant.a]\nkey = 'k'\n", "unknown key"),
        ("[tenants.a\n", "TOML"),
    ],
)
def test_a_bad_tenants_file_is_a_one_line_error_naming_it(tmp_path, text, message):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        Tenants.load(path)
    assert str(path) in str(info.value)


class App:
    """A downstream ASGI app that records what it got and answers 200 (streaming two chunks)."""

    def __init__(self):
        self.seen = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body
        self.seen.append((scope, parsed))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})


def call(middleware, path, body=None, headers=(), method="POST"):
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    chunks = [raw[: len(raw) // 2], raw[len(raw) // 2 :]]  # the body arrives in two messages
    messages = [{"type": "http.request", "body": c, "more_body": i == 0} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers] + [(b"content-length", b"1")]
    scope = {"type": "http", "method": method, "path": path, "headers": raw_headers}
    asyncio.run(middleware(scope, receive, send))
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return status, payload


BODY = {"model": "m", "prompt": "hi", "max_tokens": 2}


def test_unknown_or_missing_keys_get_401(tenants):
    app = App()
    mw = TenantMiddleware(app, tenants)
    for headers in ((), (("Authorization", "Bearer sk-eve"),), (("Authorization", "Basic sk-alice-1"),)):
        status, payload = call(mw, "/v1/completions", BODY, headers)
        assert status == 401 and b"API key" in payload
    assert app.seen == []
    assert call(mw, "/health", method="GET")[0] == 200  # liveness needs no key


def test_a_known_key_gets_its_tenant_and_weight_stamped_into_vllm_xargs(tenants):
    app = App()
    mw = TenantMiddleware(app, tenants)
    status, payload = call(mw, "/v1/chat/completions", {**BODY, "vllm_xargs": {"session_id": "s"}},
                           [("Authorization", "Bearer sk-alice-1")])  # fmt: skip
    assert status == 200 and payload == b"ab"
    scope, body = app.seen[0]
    assert body["vllm_xargs"] == {"session_id": "s", "equinox_tenant": "alice", "equinox_weight": 2.0}
    assert dict(scope["headers"])[b"content-length"] == str(len(json.dumps(body))).encode()
    call(mw, "/v1/completions", BODY, [("x-api-key", "sk-bob")])
    assert app.seen[1][1]["vllm_xargs"] == {"equinox_tenant": "bob", "equinox_weight": 1.0}


def test_a_body_naming_another_tenant_is_refused_and_a_weight_overridden(tenants):
    app = App()
    mw = TenantMiddleware(app, tenants)
    key = [("Authorization", "Bearer sk-bob")]
    status, payload = call(mw, "/v1/completions", {**BODY, "vllm_xargs": {"equinox_tenant": "alice"}}, key)
    assert status == 403 and b"belongs to tenant 'bob'" in payload
    assert app.seen == []
    # naming itself is fine; a weight the body asks for is replaced by the file's
    asks = {"equinox_tenant": "bob", "equinox_weight": 100}
    status, _ = call(mw, "/v1/completions", {**BODY, "vllm_xargs": asks}, key)
    assert status == 200 and app.seen[0][1]["vllm_xargs"] == {"equinox_tenant": "bob", "equinox_weight": 1.0}


def test_with_tenants_only_known_routes_are_served(tenants):
    app = App()
    mw = TenantMiddleware(app, tenants)
    key = [("Authorization", "Bearer sk-bob")]
    assert call(mw, "/inference/v1/generate", {"x": 1}, key)[0] == 404
    assert call(mw, "/v1/models", None, key, method="GET")[0] == 200
    assert call(mw, "/v1/models", None, (), method="GET")[0] == 401


def test_open_mode_takes_the_tenant_from_xargs_header_or_user(capsys):
    app = App()
    mw = TenantMiddleware(app, None, from_env=False)
    call(mw, "/v1/completions", BODY)
    call(mw, "/v1/completions", {**BODY, "user": "u1"})
    call(mw, "/v1/completions", {**BODY, "user": "u1"}, [("X-Equinox-Tenant", "h1")])
    call(mw, "/v1/completions", {**BODY, "vllm_xargs": {"equinox_tenant": "x1", "equinox_weight": 3}})
    tenants = [(b["vllm_xargs"]["equinox_tenant"], b["vllm_xargs"]["equinox_weight"]) for _, b in app.seen]
    assert tenants == [("default", 1.0), ("u1", 1.0), ("h1", 1.0), ("x1", 3.0)]
    assert call(mw, "/inference/v1/generate", {"x": 1})[0] == 200  # open: every route
    assert call(mw, "/v1/completions", b"not json")[0] == 200  # vLLM answers a bad body itself
    assert app.seen[-1][1] == b"not json"


def test_the_start_up_announcement_says_which_mode(tenants):
    assert "OPEN MODE" in announcement(None) and "any tenant" in announcement(None)
    text = announcement(tenants)
    assert "2 tenant(s)" in text and "401" in text and "OPEN" not in text


def test_serve_announces_and_execs_vllms_server_with_the_adapter(tmp_path, monkeypatch):
    import os

    from serving import server

    path = tmp_path / "tenants.toml"
    path.write_text(TOML)
    calls, lines = [], []
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    settings = ServingSettings(scheduler="vtc", log_dir=str(tmp_path / "logs"))
    server.serve("/models/m", settings, tenants=path, port=8123, vllm_args=["--max-num-seqs", "4"], echo=lines.append)
    assert "2 tenant(s)" in lines[0] and "vtc" in lines[1]
    ((_, argv, env),) = calls
    assert argv[argv.index("--scheduler-cls") + 1] == "serving.vllm_adapter.FairScheduler"
    assert argv[argv.index("--middleware") + 1] == "serving.tenants.TenantMiddleware"
    assert json.loads(argv[argv.index("--additional-config") + 1])["equinox"]["scheduler"] == "vtc"
    assert argv[-4:] == ["--max-num-seqs", "4", "--shutdown-timeout", "5"]
    assert env["EQUINOX_TENANTS"] == str(path.resolve())
    with pytest.raises(InputError):  # a bad file fails before vLLM starts
        server.serve("/m", settings, tenants=tmp_path / "missing.toml", echo=lines.append)
    argv, env = server_command("/m", settings, vllm_args=["--shutdown-timeout=1"])
    assert env["EQUINOX_TENANTS"] == ""  # open mode
    assert argv[-1] == "--shutdown-timeout=1"  # the user's own


class RejectedApp(App):
    """An app whose engine rejected the request: the output reaches it after the response started."""

    def __init__(self, mark, fail=False):
        super().__init__()
        self.mark = mark
        self.fail = fail

    async def __call__(self, scope, receive, send):
        from types import SimpleNamespace

        from serving import tenants as module

        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        choice = SimpleNamespace(finish_reason="abort", stop_reason=self.mark)
        module._note_rejection(SimpleNamespace(outputs=[choice]))  # what the watched generate() does
        if self.fail:  # vLLM's logprobs + echo on an empty abort
            raise RuntimeError("no prompt logprobs")
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def call_full(middleware, body):
    sent = []

    async def receive():
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    asyncio.run(middleware(scope, receive, send))
    return sent


@pytest.mark.parametrize("fail", [False, True], ids=["answered", "raised"])
def test_a_rejected_request_is_answered_429_with_retry_after(monkeypatch, fail):
    from serving.bridge import REJECTION_MARK

    monkeypatch.delenv("EQUINOX_POLICY_REJECTS", raising=False)
    mw = TenantMiddleware(RejectedApp(f"{REJECTION_MARK}:12.250:5", fail=fail), from_env=False)
    sent = call_full(mw, {**BODY, "user": "carol", "stream": True})
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]  # the app's stream dropped
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 429 and headers[b"retry-after"] == b"13" and headers[b"retry-after-ms"] == b"12250"
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert error["message"] == "rate limit: tenant 'carol' has used its 5 requests a minute; retry in 13 s"


def test_an_abort_without_the_mark_passes_through_and_no_watch_when_the_policy_never_rejects(monkeypatch):
    mw = TenantMiddleware(RejectedApp("client went away"), from_env=False)
    sent = call_full(mw, BODY)
    assert sent[0]["status"] == 200 and len(sent) == 3
    monkeypatch.setenv("EQUINOX_POLICY_REJECTS", "0")
    mw = TenantMiddleware(App(), from_env=False)
    assert mw.refusals is False
    assert call(mw, "/v1/completions", BODY)[0] == 200
    settings = ServingSettings(scheduler="vtc")
    assert server_command("/m", settings)[1]["EQUINOX_POLICY_REJECTS"] == "0"
    assert server_command("/m", ServingSettings(scheduler="rpm:3"))[1]["EQUINOX_POLICY_REJECTS"] == "1"


def test_the_tenant_is_spliced_into_the_body_as_sent_or_the_body_re_encoded():
    from serving.tenants import _with_xargs

    xargs = {"equinox_tenant": "alice", "equinox_weight": 2.0}
    body = b' {"prompt": "a \\u00e9 \\"b\\"", "max_tokens": 2}'
    out = _with_xargs(body, json.loads(body), dict(xargs))
    assert out.endswith(body[2:]) and json.loads(out) == {**json.loads(body), "vllm_xargs": xargs}
    # a body that already has vllm_xargs is re-encoded with ours in their place
    body = b'{"vllm_xargs": {"x": 1}, "prompt": "p"}'
    assert json.loads(_with_xargs(body, json.loads(body), dict(xargs))) == {"vllm_xargs": xargs, "prompt": "p"}
    body = '{"prompt": "p"}'.encode("utf-16")  # not UTF-8: re-encoded
    assert json.loads(_with_xargs(body, json.loads(body), dict(xargs))) == {"prompt": "p", "vllm_xargs": xargs}
