"""`equinox serve` for real: vLLM's OpenAI server on the CPU with the fair scheduler and a tenants file.

One server (a tiny random-weight Llama) serves the whole module; the last test kills it with
SIGKILL and reads the logs it left.  Starting it takes about a minute on 2 cores.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]'); serve tests skipped")

import pandas as pd  # noqa: E402

from serving.bridge import ServingSettings  # noqa: E402
from serving.server import server_command  # noqa: E402
from traces.result_schemas import REQUEST_SCHEMA, STEP_SCHEMA  # noqa: E402
from traces.schema import make_table  # noqa: E402

TENANTS = """
[tenants.alice]
key = "sk-alice"
weight = 2.0

[tenants.bob]
key = "sk-bob"
"""
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from serving.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("model"))


def start_server(root, model, settings, tenants=None):
    """Start `equinox serve`'s command line; returns (process, base URL) once /health answers."""
    port = free_port()
    argv, env = server_command(
        str(model), settings, tenants=tenants, port=port,
        vllm_args=["--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "4", "--served-model-name", "tiny"],
    )  # fmt: skip
    env.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    with open(root / "server.log", "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{(root / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            log = (root / "server.log").read_text()[-3000:]
            pytest.fail(f"the server did not start in {START_TIMEOUT_S} s:\n{log}")
        time.sleep(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("serve")
    (root / "tenants.toml").write_text(TENANTS)
    settings = ServingSettings(scheduler="vtc", log_dir=str(root / "logs"), flush_interval_s=0.5)
    proc, url = start_server(root, model, settings, tenants=root / "tenants.toml")
    yield {"url": url, "proc": proc, "logs": root / "logs", "root": root}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def post(url, path, body, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_completions_and_chat_completions_are_answered(server):
    body = {"model": "tiny", "prompt": "hello fair share", "max_tokens": 5, "ignore_eos": True}
    status, body = post(server["url"], "/v1/completions", body, "sk-alice")
    assert status == 200 and body["usage"]["completion_tokens"] == 5 and body["choices"][0]["text"]
    status, body = post(server["url"], "/v1/chat/completions",
                        {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
                         "ignore_eos": True}, "sk-bob")  # fmt: skip
    assert status == 200 and body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["message"]["role"] == "assistant"


def test_an_unknown_key_is_rejected_and_a_spoofed_tenant_refused(server):
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
    assert post(server["url"], "/v1/completions", body)[0] == 401
    assert post(server["url"], "/v1/completions", body, "sk-eve")[0] == 401
    status, err = post(server["url"], "/v1/completions", {**body, "vllm_xargs": {"equinox_tenant": "alice"}}, "sk-bob")
    assert status == 403 and "bob" in err["error"]["message"]
    assert post(server["url"], "/inference/v1/generate", {"token_ids": [1, 2]}, "sk-bob")[0] == 404


def test_endpoint_replay_against_equinox_serve_writes_a_valid_results_directory(server, tmp_path):
    from reports.audit import audit
    from serving.endpoint import EndpointOptions, replay_endpoint

    clients = ["alice", "bob"] * 4
    workload = make_table(clients, [0.02 * i for i in range(8)], [16] * 8, [6] * 8)
    options = EndpointOptions(url=server["url"], api_keys={"alice": "sk-alice", "bob": "sk-bob"}, concurrency=4)
    run = replay_endpoint(workload, tmp_path, options, workload_name="two-tenants")
    req = pd.read_parquet(run / "requests.parquet")
    assert (req.status == "finished").all() and (req.generated_tokens == 6).all()
    assert (req.first_token_s > req.arrival_s).all()
    config = json.loads((run / "run.json").read_text())
    assert config["engine"]["model"] == "tiny" and config["engine"]["kv_capacity_known"]
    (summary,) = audit([run]).runs
    assert summary["requests"]["finished"] == 8


def test_the_server_logs_tenants_and_steps_in_the_simulators_schema(server):
    logs = server["logs"]
    time.sleep(1.5)  # three flush intervals
    req = pd.read_parquet(logs / "requests.parquet")
    assert set(req.client_id) == {"alice", "bob"}
    assert req.groupby("client_id").weight.first().to_dict() == {"alice": 2.0, "bob": 1.0}
    assert (req.status == "finished").all() and len(req) >= 10
    steps = pd.read_parquet(logs / "steps.parquet")
    assert steps.busy.any() and steps.prefill_tokens.sum() >= req.prompt_tokens.sum() - 64  # prefix cache hits
    run = json.loads((logs / "run.json").read_text())
    assert run["scheduler"] == "vtc" and run["engine"]["kind"] == "vllm" and run["complete"] is False


def test_a_killed_server_leaves_readable_logs(server):
    logs = server["logs"]
    before = len(pd.read_parquet(logs / "requests.parquet"))
    for i in range(3):
        post(server["url"], "/v1/completions", {"model": "tiny", "prompt": "w1 w2 w3", "max_tokens": 3}, "sk-bob")
    time.sleep(1.5)
    os.killpg(server["proc"].pid, signal.SIGKILL)
    server["proc"].wait(timeout=30)
    import pyarrow.parquet as pq

    req = pq.read_table(logs / "requests.parquet")
    assert req.schema.remove_metadata() == REQUEST_SCHEMA and req.num_rows == before + 3
    assert pq.read_schema(logs / "steps.parquet").remove_metadata() == STEP_SCHEMA
    json.loads((logs / "run.json").read_text())
    assert not [p.name for p in logs.iterdir() if p.name.endswith(".tmp")]
    from reports.audit import audit

    (summary,) = audit([logs]).runs
    assert summary["requests"]["finished"] == before + 3


def test_a_terminated_server_writes_its_last_log(model, tmp_path):
    # Open mode, and a flush interval longer than the test: only the shutdown writes the log.
    settings = ServingSettings(scheduler="fcfs", log_dir=str(tmp_path / "logs"), flush_interval_s=3600)
    proc, url = start_server(tmp_path, model, settings)
    try:
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 3, "user": "carol"}
        assert post(url, "/v1/completions", body)[0] == 200
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # to the server's main process, as `kill PID` does
        proc.wait(timeout=60)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    run = json.loads((tmp_path / "logs" / "run.json").read_text())
    assert run["complete"] is True and run["requests_logged"] == 1
    req = pd.read_parquet(tmp_path / "logs" / "requests.parquet")
    assert req.client_id.tolist() == ["carol"] and req.generated_tokens.tolist() == [3]
