"""`replay --endpoint`: the OpenAI-compatible streaming client, against a small fake server (no vLLM)."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pyarrow.parquet as pq
import pytest

from serving.endpoint import CLIENT_FILE, EndpointError, EndpointOptions, replay_endpoint
from traces.result_schemas import REQUEST_SCHEMA
from traces.schema import make_table


class FakeOpenAI(BaseHTTPRequestHandler):
    """Streams max_tokens chunks, 2 ms apart; remembers every body; 401 without the right key."""

    protocol_version = "HTTP/1.1"
    bodies: list = []
    key = None
    fail_every = 0
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._json(200, {"data": [{"id": "fake-model"}]})
        elif self.path == "/metrics":
            data = b'vllm:cache_config_info{block_size="16",num_gpu_blocks="100"} 1.0\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._json(404, {"error": {"message": "no"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.bodies.append(body)
            count = len(cls.bodies)
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            if cls.key and self.headers.get("Authorization") != f"Bearer {cls.key}":
                return self._json(401, {"error": {"message": "missing or unknown API key"}})
            if cls.fail_every and count % cls.fail_every == 0:
                return self._json(500, {"error": {"message": "boom"}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def emit(obj):
                line = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()

            n = body["max_tokens"]
            for k in range(n):
                time.sleep(0.002)
                emit({"choices": [{"index": 0, "text": f" w{k}", "finish_reason": "length" if k == n - 1 else None}]})
            emit({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}})
            emit(b"[DONE]")
            self.wfile.write(b"0\r\n\r\n")
        finally:
            with cls.lock:
                cls.in_flight -= 1


@pytest.fixture
def server():
    class Handler(FakeOpenAI):
        bodies = []

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, Handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def workload(n=12):
    clients = [f"c{i % 3}" for i in range(n)]
    return make_table(clients, [0.01 * i for i in range(n)], [5 + i for i in range(n)], [3 + i % 4 for i in range(n)])


def test_endpoint_replay_writes_a_results_directory_with_client_side_times(server, tmp_path):
    _, handler, url = server
    wl = workload()
    run = replay_endpoint(wl, tmp_path, EndpointOptions(url=url, concurrency=4), workload_name="w")
    assert run == tmp_path / "endpoint"
    req = pd.read_parquet(run / "requests.parquet")
    assert pq.read_schema(run / "requests.parquet").remove_metadata() == REQUEST_SCHEMA
    assert (req.status == "finished").all()
    assert (req.generated_tokens == req.output_tokens).all()
    assert (req.first_token_s > req.arrival_s).all() and (req.finish_s >= req.first_token_s).all()
    config = json.loads((run / "run.json").read_text())
    assert config["engine"]["kind"] == "endpoint" and config["engine"]["model"] == "fake-model"
    assert config["engine"]["kv_capacity_tokens"] == 1600  # from vLLM's /metrics
    client = pd.read_parquet(run / CLIENT_FILE)
    assert [len(t) for t in client.chunk_times_s] == wl.column("output_tokens").to_pylist()
    # what was sent: exact prompt lengths as token ids, the tenant in the body
    bodies = sorted(handler.bodies, key=lambda b: len(b["prompt"]))
    assert [len(b["prompt"]) for b in bodies] == wl.column("prompt_tokens").to_pylist()
    assert all(b["stream"] and b["ignore_eos"] for b in bodies)
    assert {b["vllm_xargs"]["equinox_tenant"] for b in bodies} == {"c0", "c1", "c2"}
    assert {b["user"] for b in bodies} == {"c0", "c1", "c2"}
    assert handler.max_in_flight <= 4

    from reports.audit import audit

    (summary,) = audit([run]).runs
    assert summary["requests"]["finished"] == 12


def test_concurrency_bounds_requests_in_flight(server, tmp_path):
    _, handler, url = server
    burst = make_table(["a"] * 8, [0.0] * 8, [4] * 8, [20] * 8)
    replay_endpoint(burst, tmp_path, EndpointOptions(url=url, concurrency=2))
    assert handler.max_in_flight == 2


def test_an_unreachable_endpoint_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(EndpointError, match=f"cannot reach http://127.0.0.1:{port}"):
        replay_endpoint(workload(2), tmp_path, EndpointOptions(url=f"http://127.0.0.1:{port}"))
    assert not (tmp_path / "endpoint").exists()


def test_an_endpoint_answering_errors_stops_with_its_message(server, tmp_path):
    _, handler, url = server
    handler.key = "right"
    with pytest.raises(EndpointError, match="401.*unknown API key"):
        replay_endpoint(workload(), tmp_path, EndpointOptions(url=url, api_key="wrong", max_errors=2))
    assert not (tmp_path / "endpoint").exists()
    # per-tenant keys pass
    run = replay_endpoint(workload(3), tmp_path, EndpointOptions(url=url, api_keys={"c0": "right", "c1": "right",
                                                                                    "c2": "right"}))  # fmt: skip
    assert (pd.read_parquet(run / "requests.parquet").status == "finished").all()


def test_a_few_failed_requests_are_logged_as_rejected(server, tmp_path):
    _, handler, url = server
    handler.fail_every = 4
    messages = []
    run = replay_endpoint(workload(), tmp_path, EndpointOptions(url=url, concurrency=1), echo=messages.append)
    req = pd.read_parquet(run / "requests.parquet")
    assert (req.status == "rejected").sum() == 3 and (req.status == "finished").sum() == 9
    assert "3 of 12 requests failed" in messages[0] and "boom" in messages[0]
    client = pd.read_parquet(run / CLIENT_FILE)
    assert (client.http_status == 500).sum() == 3
