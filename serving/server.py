"""``equinox serve``: vLLM's OpenAI-compatible server with the fair scheduler and tenants.

``server_command`` builds the command line of vLLM's API server
(``python -m vllm.entrypoints.launchers.api_server.entry``) with

* ``--scheduler-cls serving.vllm_adapter.FairScheduler`` and the policy, its knobs and the log
  directory in ``--additional-config '{"equinox": {...}}'`` (``ServingSettings``);
* ``--middleware serving.tenants.TenantMiddleware``, configured through ``EQUINOX_TENANTS``,
  ``EQUINOX_TENANT_HEADER`` and ``EQUINOX_POLICY_REJECTS`` in the environment;

plus any further vLLM options, and ``--shutdown-timeout 5`` unless they set one.  ``serve`` prints
who may use the server (tenants or open mode) and replaces this process with vLLM's server, so
signals reach vLLM directly; on SIGINT or SIGTERM vLLM lets running requests finish (up to the
shutdown timeout) and shuts the scheduler down, which writes the log one last time
(``run.json``: ``"complete": true``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from serving.bridge import ServingSettings
from serving.tenants import DEFAULT_HEADER, ENV_FILE, ENV_HEADER, ENV_REJECTS, Tenants, announcement

ENTRY = "vllm.entrypoints.launchers.api_server.entry"
ADAPTER = "serving.vllm_adapter.FairScheduler"
MIDDLEWARE = "serving.tenants.TenantMiddleware"
SHUTDOWN_TIMEOUT_S = 5


def server_command(
    model: str,
    settings: ServingSettings,
    *,
    tenants: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    tenant_header: str = DEFAULT_HEADER,
    vllm_args: list[str] = (),
    shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S,
) -> tuple[list[str], dict]:
    """(argv, environment) of the server process."""
    vllm_args = list(vllm_args)
    if not any(a == "--shutdown-timeout" or a.startswith("--shutdown-timeout=") for a in vllm_args):
        # vLLM's default (0) kills the engine process at once on SIGTERM, before the scheduler's
        # shutdown writes the last log; a few seconds let it finish.
        vllm_args += ["--shutdown-timeout", str(shutdown_timeout_s)]
    argv = [
        sys.executable, "-m", ENTRY, "--model", str(model), "--host", host, "--port", str(port),
        "--scheduler-cls", ADAPTER, "--additional-config", json.dumps({"equinox": settings.to_dict()}),
        "--middleware", MIDDLEWARE, *vllm_args,
    ]  # fmt: skip
    env = dict(os.environ)
    env[ENV_FILE] = str(Path(tenants).resolve()) if tenants else ""
    env[ENV_HEADER] = tenant_header
    # Only rpm:N rejects requests (answered 429); other policies spare responses the watch for it.
    env[ENV_REJECTS] = "1" if settings.scheduler.split(":")[0] == "rpm" else "0"
    # The server's processes import `serving`: make sure they find this checkout.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return argv, env


def serve(
    model: str,
    settings: ServingSettings,
    *,
    tenants: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    tenant_header: str = DEFAULT_HEADER,
    vllm_args: list[str] = (),
    echo=print,
) -> None:
    """Validate, announce, and exec vLLM's server (does not return)."""
    loaded = Tenants.load(tenants) if tenants else None  # a bad file fails here, before vLLM starts
    argv, env = server_command(model, settings, tenants=tenants, host=host, port=port, tenant_header=tenant_header,
                               vllm_args=vllm_args)  # fmt: skip
    echo(announcement(loaded, tenant_header))
    echo(f"equinox serve: scheduler {settings.scheduler}; logs "
         f"{settings.log_dir or '(none: --log-dir not set)'} every {settings.flush_interval_s:g} s; "
         f"http://{host}:{port}/v1")  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
