"""What serving through ``equinox serve`` costs end to end, against plain vLLM.

Starts vLLM's OpenAI server on the tiny random-weight Llama (``serving.tiny_model``) once plain
and once per scheduler as ``equinox serve`` runs it (``serving.server.server_command``: the fair
scheduler, the tenant middleware with a tenants file, logs written every ``--flush-interval``
seconds), all at the same time, then drives them with vLLM's own benchmark client
(``vllm bench serve``: random prompts of ``--input-len`` tokens, ``--output-len`` output tokens
with ``ignore_eos``, ``--prompts`` requests at once) in interleaved rounds: plain, fcfs, vtc,
equinox, plain, ...; so load that comes and goes on a shared machine hits them alike.  One
warm-up run per server comes first (not counted).  Prints, per configuration, the median total
token throughput and, against the plain vLLM run of the same round, the median ratio and its
range over rounds.

Extra configurations name what to leave out of ``equinox serve``, to see where its time goes:
``vtc/nolog`` (no ``--log-dir``), ``vtc/nomw`` (no tenant middleware), ``vtc/bare`` (neither).

Needs vLLM (the CPU build will do).  From the repository root:

    python benchmarks/serve_overhead.py [--rounds 5] [--prompts 300] [--input-len 128] [--output-len 64]
                                        [--configs plain,fcfs,vtc,equinox] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = "sk-bench"
TENANTS = f'[tenants.bench]\nkey = "{KEY}"\n'
VLLM_ARGS = ["--enforce-eager", "--max-model-len", "1024", "--served-model-name", "tiny"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(config: str, model: Path, root: Path, port: int, args) -> tuple[list[str], dict]:
    """argv and environment of one server: ``plain`` or ``SCHEDULER[/nolog|/nomw|/bare]``."""
    from serving.bridge import ServingSettings
    from serving.server import ENTRY, server_command

    vllm_args = [*VLLM_ARGS, "--max-num-seqs", str(args.max_num_seqs)]
    if config == "plain":
        argv = [sys.executable, "-m", ENTRY, "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
        return argv + vllm_args, dict(os.environ)
    scheduler, _, variant = config.partition("/")
    log = None if variant in ("nolog", "bare") else str(root / "logs" / config.replace("/", "-"))
    settings = ServingSettings(scheduler=scheduler, log_dir=log, flush_interval_s=args.flush_interval)
    argv, env = server_command(str(model), settings, tenants=root / "tenants.toml", port=port, vllm_args=vllm_args)
    if variant in ("nomw", "bare"):
        i = argv.index("--middleware")
        del argv[i : i + 2]
    return argv, env


def start(config: str, model: Path, root: Path, args) -> dict:
    port = free_port()
    argv, env = command(config, model, root, port, args)
    env.update(VLLM_CPU_KVCACHE_SPACE=str(args.kv_gib), HF_HUB_OFFLINE="1")
    log = open(root / f"server-{config.replace('/', '-')}.log", "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return {"config": config, "proc": proc, "url": f"http://127.0.0.1:{port}", "log": log}


def wait_ready(server: dict, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while True:
        if server["proc"].poll() is not None:
            raise SystemExit(f"{server['config']}: the server exited; see {server['log'].name}")
        try:
            with urllib.request.urlopen(server["url"] + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"{server['config']}: not up after {timeout_s:.0f} s")
        time.sleep(1)


def bench(server: dict, model: Path, root: Path, args, *, prompts: int, seed: int) -> dict:
    """One run of ``vllm bench serve`` (its own code, in this process); returns its result."""
    import contextlib
    import io

    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    argv = [
        "--backend", "vllm", "--base-url", server["url"], "--model", "tiny", "--tokenizer", str(model),
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(prompts), "--max-concurrency", str(prompts),
        "--request-rate", "inf", "--ignore-eos", "--seed", str(seed), "--disable-tqdm",
    ]  # fmt: skip
    os.environ.update(OPENAI_API_KEY=KEY, HF_HUB_OFFLINE="1")  # the key: the client sends it as the bearer token
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = bench_main(parser.parse_args(argv))
    if result.get("completed") != prompts:
        raise SystemExit(f"{server['config']}: {result.get('completed')} of {prompts} requests completed:\n"
                         f"{printed.getvalue()[-2000:]}")  # fmt: skip
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="plain,fcfs,vtc,equinox")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prompts", type=int, default=300)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--warmup-prompts", type=int, default=50)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--flush-interval", type=float, default=5.0)
    p.add_argument("--kv-gib", type=int, default=1)
    p.add_argument("--json", type=Path, help="Write every round's numbers here.")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if "plain" not in configs:
        configs.insert(0, "plain")

    from serving.tiny_model import make_tiny_llama

    with tempfile.TemporaryDirectory(prefix="serve-overhead-") as tmp:
        root = Path(tmp)
        (root / "tenants.toml").write_text(TENANTS)
        model = make_tiny_llama(root / "model")
        servers = []
        try:
            for config in configs:  # one at a time: starting vLLM is CPU-bound
                server = start(config, model, root, args)
                servers.append(server)
                wait_ready(server)
                bench(server, model, root, args, prompts=args.warmup_prompts, seed=1000)
                print(f"{config}: up and warmed", flush=True)
            rows = {c: [] for c in configs}
            for r in range(args.rounds):
                for server in servers:
                    res = bench(server, model, root, args, prompts=args.prompts, seed=r)
                    rows[server["config"]].append(res)
                    print(f"round {r} {server['config']:>12}: {res['total_token_throughput']:8.0f} tok/s "
                          f"({res['duration']:.2f} s, TTFT mean {res['mean_ttft_ms']:.0f} ms)", flush=True)  # fmt: skip
        finally:
            for server in servers:
                if server["proc"].poll() is None:
                    os.killpg(server["proc"].pid, signal.SIGTERM)
            for server in servers:
                try:
                    server["proc"].wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(server["proc"].pid, signal.SIGKILL)
                server["log"].close()

    plain = [res["total_token_throughput"] for res in rows["plain"]]
    print(f"\n{args.prompts} requests at once, {args.input_len} in / {args.output_len} out, {args.rounds} rounds; "
          "total token throughput, median; ratio to plain vLLM in the same round, median [range]\n")  # fmt: skip
    print("| configuration | tok/s | ratio to plain | TTFT mean, ms |")
    print("|---|---:|---:|---:|")
    summary = {}
    for config in configs:
        tput = [res["total_token_throughput"] for res in rows[config]]
        ratios = [t / b for t, b in zip(tput, plain)]
        ttft = statistics.median(res["mean_ttft_ms"] for res in rows[config])
        summary[config] = {"tok_s": tput, "ratio": ratios}
        ratio = "1" if config == "plain" else f"{statistics.median(ratios):.3f}x [{min(ratios):.3f}-{max(ratios):.3f}]"
        print(f"| {config} | {statistics.median(tput):,.0f} | {ratio} | {ttft:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rounds": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
