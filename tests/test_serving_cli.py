"""The serving commands' CLI layer: `serve` (exec stubbed), `replay --endpoint` through `replay_real`."""

import importlib.util
import json
import os

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from equinox_cli import serve_cmd
from schedulers import EquinoxKnobs, ServiceWeights
from traces.errors import InputError
from traces.schema import make_table

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def app():
    a = typer.Typer()
    a.command("serve", context_settings=serve_cmd.SERVE_CONTEXT)(serve_cmd.serve)
    a.command("calibrate")(serve_cmd.calibrate)
    return a


def test_serve_announces_open_mode_and_passes_vllm_options_through(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    (tmp_path / "m").mkdir()  # serve refuses a model path that does not exist
    args = ["serve", "--model", str(tmp_path / "m"), "--scheduler", "equinox", "--beta", "0",
            "--log-dir", str(tmp_path / "l"), "--port", "8111", "--", "--max-num-seqs", "8"]  # fmt: skip
    result = CliRunner().invoke(app(), args)
    if not HAS_VLLM:
        assert result.exit_code == 2 and "vLLM is not installed" in result.output
        return
    assert result.exit_code == 0, result.output
    assert "OPEN MODE" in result.output and "X-Equinox-Tenant" in result.output
    ((argv, env),) = calls
    settings = json.loads(argv[argv.index("--additional-config") + 1])["equinox"]
    assert settings["scheduler"] == "equinox" and settings["equinox"]["beta"] == 0
    assert settings["log_dir"] == str((tmp_path / "l").resolve())
    assert argv[-4:-2] == ["--max-num-seqs", "8"] and argv[argv.index("--port") + 1] == "8111"


def test_serve_rejects_bad_input_before_starting_vllm(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not start"))
    runner = CliRunner()
    bad = tmp_path / "t.toml"
    bad.write_text("[tenants.a]\nweight = 1\n")
    for args, message in (
        (["--scheduler", "nope"], "unknown scheduler"),
        (["--tenants", str(bad)], "expected key"),
        (["--alpha", "0", "--beta", "0"], "alpha + beta"),
    ):
        result = runner.invoke(app(), ["serve", "--model", "m", *args])
        assert result.exit_code == 2, result.output
        assert (message if HAS_VLLM else "vLLM is not installed") in result.output


def test_replay_real_endpoint_and_argument_checks(tmp_path):
    import threading
    from http.server import ThreadingHTTPServer

    from tests.test_serving_endpoint import FakeOpenAI  # the same fake server

    class Handler(FakeOpenAI):
        bodies = []

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        keys = tmp_path / "keys.toml"
        keys.write_text('[keys]\na = "ka"\nb = "kb"\n')
        Handler.key = None
        wl = make_table(["a", "b", "a"], [0.0, 0.01, 0.02], [4, 5, 6], [2, 3, 4])
        common = dict(model=None, workload_name="w", seed=1, service=ServiceWeights(), knobs=EquinoxKnobs(),
                      predictors=None, kv_capacity=None, max_running=None, max_batch_tokens=None,
                      chunked_prefill=True)  # fmt: skip
        (run,) = serve_cmd.replay_real(wl, ["fcfs"], tmp_path / "out", engine="simulator",
                                       endpoint=f"http://127.0.0.1:{httpd.server_address[1]}/v1", api_keys=keys,
                                       concurrency=2, **common)  # fmt: skip
        assert (pd.read_parquet(run / "requests.parquet").status == "finished").all()
        with pytest.raises(InputError, match="leave out --engine"):
            serve_cmd.replay_real(wl, ["fcfs"], tmp_path, engine="vllm", endpoint="http://x", **common)
        with pytest.raises(InputError, match="unknown engine"):
            serve_cmd.replay_real(wl, ["fcfs"], tmp_path, engine="tgi", endpoint=None, **common)
        if HAS_VLLM:
            with pytest.raises(InputError, match="needs --model"):
                serve_cmd.replay_real(wl, ["fcfs"], tmp_path, engine="vllm", endpoint=None, **common)
        keys.write_text("[keys]\na = 1\n")
        with pytest.raises(InputError, match=r"\[keys\]"):
            serve_cmd.replay_real(wl, ["fcfs"], tmp_path, engine="simulator", endpoint="http://x", api_keys=keys,
                                  **common)  # fmt: skip
    finally:
        httpd.shutdown()
        httpd.server_close()
