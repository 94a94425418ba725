"""Tenants for ``equinox serve``: who a request belongs to, decided by the server, not the client.

A tenants file maps API keys to tenants and their fair-share weights::

    # tenants.toml
    [tenants.alice]
    keys = ["sk-alice-1", "sk-alice-2"]   # or key = "..."
    weight = 2.0                          # default 1

    [tenants.bob]
    key_sha256 = ["9f86d081884c7d65..."]  # SHA-256 hex digests, to keep keys out of the file

``TenantMiddleware`` (an ASGI middleware vLLM's server loads with ``--middleware``) then

* answers 401 to a request without a known key (``Authorization: Bearer <key>`` or ``x-api-key``);
* on the generation routes (``GENERATE_PATHS``) refuses with 403 a body whose ``vllm_xargs``
  names another tenant, and otherwise writes the key's tenant and weight into ``vllm_xargs``
  (``equinox_tenant``, ``equinox_weight``; a weight the body asks for is replaced), which vLLM
  hands the scheduler as ``sampling_params.extra_args``;
* answers the read-only routes (``READ_PATHS``) for any known key and 404 to every other
  route, so no endpoint reaches the engine without a tenant.

Without a tenants file the server runs **open**: nothing is authenticated and a request's tenant
is its ``vllm_xargs.equinox_tenant``, else the ``X-Equinox-Tenant`` header, else the OpenAI
``user`` field, else ``default``.  The server says so when it starts.

A request the policy rejects (``rpm:N``: over its tenant's quota) is answered **429** with
``Retry-After`` (see ``watch_rejections``).

The middleware reads its configuration from the environment (``EQUINOX_TENANTS``: the file;
``EQUINOX_TENANT_HEADER``: the open mode's header; ``EQUINOX_POLICY_REJECTS``: ``0`` when the
policy never rejects, which spares every response the 429 watch), which ``equinox serve`` sets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from serving.bridge import REJECTION_MARK, TENANT_KEY, WEIGHT_KEY
from traces.errors import InputError, read_toml

ENV_FILE = "EQUINOX_TENANTS"
ENV_HEADER = "EQUINOX_TENANT_HEADER"
ENV_REJECTS = "EQUINOX_POLICY_REJECTS"  # "0": the policy never rejects (no 429 watch); unset or "1": watch
DEFAULT_HEADER = "x-equinox-tenant"
DEFAULT_TENANT = "default"

GENERATE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages"})
READ_PATHS = frozenset({"/v1/models", "/health", "/ping", "/version", "/tokenize", "/detokenize", "/load", "/metrics"})
PUBLIC_PATHS = frozenset({"/health", "/ping"})  # liveness probes answer without a key

logger = logging.getLogger("equinox.serve")


@dataclass(frozen=True)
class Tenant:
    name: str
    weight: float = 1.0


class Tenants:
    """API key digest -> tenant."""

    def __init__(self, by_digest: dict[str, Tenant], source: str = "tenants"):
        self.by_digest = by_digest
        self.source = source

    @property
    def names(self) -> list[str]:
        return sorted({t.name for t in self.by_digest.values()})

    def lookup(self, key: str | None) -> Tenant | None:
        if not key:
            return None
        return self.by_digest.get(_digest(key))

    @classmethod
    def load(cls, path: str | Path) -> "Tenants":
        return cls.parse(read_toml(path, "a TOML tenants file"), str(path))

    @classmethod
    def parse(cls, data: dict, source: str = "tenants") -> "Tenants":
        extra = sorted(set(data) - {"tenants"})
        if extra:
            raise InputError(f"unknown key(s) {', '.join(extra)}; expected [tenants.NAME] tables", source=source)
        tenants = data.get("tenants")
        if not isinstance(tenants, dict) or not tenants:
            raise InputError("expected at least one [tenants.NAME] table", source=source)
        by_digest: dict[str, Tenant] = {}
        for name, spec in tenants.items():
            where = f"tenants.{name}"
            if not isinstance(spec, dict):
                raise InputError(f"{where}: expected a table", source=source)
            unknown = sorted(set(spec) - {"key", "keys", "key_sha256", "weight"})
            if unknown:
                raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; expected key, keys, "
                                 "key_sha256, weight", source=source)  # fmt: skip
            weight = spec.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
                raise InputError(f"{where}.weight: expected a positive number; got {weight!r}", source=source)
            digests = [_digest(k) for k in _strings(spec, "key", where, source) + _strings(spec, "keys", where, source)]
            for d in _strings(spec, "key_sha256", where, source):
                if len(d) != 64 or any(c not in "0123456789abcdef" for c in d.lower()):
                    raise InputError(f"{where}.key_sha256: expected 64 hex digits; got {d!r}", source=source)
                digests.append(d.lower())
            if not digests:
                raise InputError(f"{where}: expected key, keys or key_sha256", source=source)
            for d in digests:
                if d in by_digest:
                    raise InputError(f"{where}: a key is also {by_digest[d].name!r}'s", source=source)
                by_digest[d] = Tenant(str(name), float(weight))
        return cls(by_digest, source)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _strings(spec: dict, key: str, where: str, source: str) -> list[str]:
    value = spec.get(key)
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or any(not isinstance(v, str) or not v for v in values):
        raise InputError(f"{where}.{key}: expected a non-empty string or a list of them", source=source)
    return list(values)


def announcement(tenants: Tenants | None, header: str = DEFAULT_HEADER) -> str:
    """What the server says at start-up about who may use it."""
    if tenants is None:
        return (
            "equinox serve: OPEN MODE (no --tenants file). Requests are not authenticated; a request's "
            f"tenant is its vllm_xargs.equinox_tenant, else the {header} header, else the OpenAI 'user' "
            f"field, else '{DEFAULT_TENANT}'. Any client can claim any tenant's share."
        )
    return (
        f"equinox serve: {len(tenants.names)} tenant(s) from {tenants.source} ({', '.join(tenants.names)}); "
        "unknown API keys get 401, a body naming another tenant gets 403."
    )


class TenantMiddleware:
    """ASGI middleware: authenticate, then stamp the tenant into every generation request."""

    def __init__(self, app, tenants: Tenants | None = None, header: str | None = None, *, from_env: bool = True):
        self.app = app
        if tenants is None and from_env and os.environ.get(ENV_FILE):
            tenants = Tenants.load(os.environ[ENV_FILE])
        self.tenants = tenants
        self.header = (header or os.environ.get(ENV_HEADER) or DEFAULT_HEADER).lower().encode()
        logger.warning(announcement(tenants, self.header.decode()))
        self.refusals = os.environ.get(ENV_REJECTS, "1") != "0"  # answer the policy's rejections 429
        if self.refusals:
            watch_rejections()

    async def __call__(self, scope, receive, send):
        kind = scope.get("type")
        if kind == "websocket" and self.tenants is not None:
            await send({"type": "websocket.close", "code": 1008})
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        tenant: Tenant | None = None
        if self.tenants is not None:
            if path in PUBLIC_PATHS:
                await self.app(scope, receive, send)
                return
            tenant = self.tenants.lookup(_api_key(headers))
            if tenant is None:
                await _error(send, 401, "missing or unknown API key", "authentication_error")
                return
            if path not in GENERATE_PATHS and path not in READ_PATHS:
                await _error(send, 404, f"{path} is not served by equinox serve with tenants", "not_found_error")
                return
        if path not in GENERATE_PATHS or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return

        body = await _read_body(receive)
        try:
            payload = json.loads(body) if body else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        if not isinstance(payload, dict):  # vLLM answers the bad body itself
            await self.app(scope, _replay(body, receive), send)
            return
        xargs = payload.get("vllm_xargs")
        if xargs is not None and not isinstance(xargs, dict):
            await _error(send, 400, "vllm_xargs must be an object", "invalid_request_error")
            return
        xargs = dict(xargs or {})
        if tenant is not None:
            claimed = xargs.get(TENANT_KEY)
            if claimed is not None and str(claimed) != tenant.name:
                await _error(send, 403, f"this API key belongs to tenant {tenant.name!r}, not {claimed!r}",
                             "permission_error")  # fmt: skip
                return
            name, weight = tenant.name, tenant.weight
        else:
            name = xargs.get(TENANT_KEY) or _header(headers, self.header) or payload.get("user") or DEFAULT_TENANT
            weight = _as_float(xargs.get(WEIGHT_KEY, 1.0)) or 1.0
        for key in [k for k in xargs if str(k).startswith("equinox_")]:
            del xargs[key]
        xargs[TENANT_KEY], xargs[WEIGHT_KEY] = str(name), float(weight)
        new_body = _with_xargs(body, payload, xargs)
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"] + [
            (b"content-length", str(len(new_body)).encode())
        ]
        if self.refusals:
            await _refusing(self.app, scope, _replay(new_body, receive), send, str(name))
        else:
            await self.app(scope, _replay(new_body, receive), send)


def _with_xargs(body: bytes, payload: dict, xargs: dict) -> bytes:
    """The request body with ``vllm_xargs`` set to ``xargs``.

    A body without ``vllm_xargs`` (the usual case) gets the member spliced in after its opening
    brace, byte for byte otherwise as the client sent it: re-encoding every body was the
    middleware's largest cost under load (docs/SERVING.md, overhead).  Any other body is
    re-encoded."""
    start = len(body) - len(body.lstrip(b" \t\r\n"))
    if (
        "vllm_xargs" not in payload
        and payload
        and body[start : start + 1] == b"{"
        and json.detect_encoding(body) == "utf-8"
    ):
        member = b'"vllm_xargs":' + json.dumps(xargs, separators=(",", ":")).encode() + b","
        return body[: start + 1] + member + body[start + 1 :]
    payload["vllm_xargs"] = xargs
    return json.dumps(payload).encode()


# -- rate-limit rejections: HTTP 429 --------------------------------------------------------
class _Outcome:
    """What the engine said about the request an HTTP call made (set by ``watch_rejections``)."""

    __slots__ = ("retry_after_s", "limit")

    def __init__(self):
        self.retry_after_s: float | None = None  # set: the policy rejected it (rate limit)
        self.limit = 0


_OUTCOME: ContextVar[_Outcome | None] = ContextVar("equinox_outcome", default=None)


def watch_rejections() -> bool:
    """Have vLLM's engine client note, for the HTTP call being answered, a request the policy
    rejected (an ``abort`` whose ``stop_reason`` is the adapter's ``REJECTION_MARK``).

    The policy decides in the engine process, after the call's handler has started its
    response; ``_refusing`` holds the response's start back until its first body, which vLLM
    makes from the engine's first output, so by then the outcome is known.  Returns whether
    vLLM's ``AsyncLLM`` was found (not in a process that has not imported vLLM: the API server
    has, before it builds its middleware).
    """
    if "vllm" not in sys.modules:
        return False
    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except Exception:
        return False
    original = AsyncLLM.generate
    if getattr(original, "_equinox_watched", False):
        return True

    @functools.wraps(original)
    async def generate(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        try:
            async for out in outputs:
                if out.finished:
                    _note_rejection(out)
                yield out
        finally:
            await outputs.aclose()

    generate._equinox_watched = True
    AsyncLLM.generate = generate
    return True


def _note_rejection(out) -> None:
    outcome = _OUTCOME.get()
    if outcome is None:
        return
    for choice in getattr(out, "outputs", None) or ():
        why = choice.stop_reason
        if choice.finish_reason == "abort" and isinstance(why, str) and why.startswith(REJECTION_MARK + ":"):
            try:
                _, retry, limit = why.split(":")
                outcome.retry_after_s, outcome.limit = max(0.0, float(retry)), int(limit)
            except ValueError:
                outcome.retry_after_s = 0.0
            return


async def _refusing(app, scope, receive, send, tenant: str) -> None:
    """Run ``app``; answer 429 instead of its response if the policy rejected the request."""
    outcome = _Outcome()
    token = _OUTCOME.set(outcome)
    held = None  # the response's start, until its first body
    refused = False

    async def send_checked(message):
        nonlocal held, refused
        if refused:
            return
        if message["type"] == "http.response.start":
            held = message
            return
        if held is not None:
            if outcome.retry_after_s is not None:
                refused = True
                await _rate_limited(send, outcome, tenant)
                return
            start, held = held, None
            await send(start)
        await send(message)

    try:
        await app(scope, receive, send_checked)
    except Exception:
        if outcome.retry_after_s is None or refused:
            raise
        refused = True
        await _rate_limited(send, outcome, tenant)
    finally:
        _OUTCOME.reset(token)
    if held is not None and not refused:
        await send(held)


async def _rate_limited(send, outcome: _Outcome, tenant: str) -> None:
    """HTTP 429 with ``Retry-After`` (whole seconds until the tenant's window has room) and an
    OpenAI-style error body (``type`` and ``code`` as OpenAI's rate-limit errors have them)."""
    retry = outcome.retry_after_s or 0.0
    seconds = max(1, math.ceil(retry))
    quota = f"its {outcome.limit} requests a minute" if outcome.limit else "its request rate"
    message = f"rate limit: tenant {tenant!r} has used {quota}; retry in {seconds} s"
    body = json.dumps({"error": {"message": message, "type": "rate_limit_error", "param": None,
                                 "code": "rate_limit_exceeded"}}).encode()  # fmt: skip
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(seconds).encode()),
        (b"retry-after-ms", str(max(0, round(retry * 1000))).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _api_key(headers: dict) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


def _header(headers: dict, name: bytes) -> str | None:
    value = headers.get(name, b"").decode("latin-1").strip()
    return value or None


def _as_float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if 0 < out < float("inf") else None


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # disconnect
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive_rest):
    """A ``receive`` that gives ``body`` once, then the client's own messages (its disconnect)."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive_rest()

    return receive


async def _error(send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
