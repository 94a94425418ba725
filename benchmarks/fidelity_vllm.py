"""The simulator vs the real CPU vLLM, prefix caching on and off: TTFT error and hit rate.

1. A small multi-turn workload with shared prefixes, as token ids: ``--conversations``
   conversations of ``--turns`` turns over ``--system-prompts`` shared system prompts; turn k's
   prompt is the system prompt, the earlier turns (user text and a fixed assistant reply) and a new
   user message, so it starts with the whole prompt of turn k-1.  Outputs are short.
2. It is replayed (FCFS) on the real vLLM (CPU build, the tiny random-weight Llama of
   ``serving/tiny_model.py``, one engine per setting) with ``enable_prefix_caching`` on and off.
   Each request is submitted at its arrival time with its own token ids, ``ignore_eos``; vLLM's
   ``RequestOutput.num_cached_tokens`` gives its prefix-cache hit.
3. ``serving.calibrate.calibrate`` fits the simulator's step-time model on the busy steps of both
   real runs; the simulator then replays the same workload with prefix caching on and off.  Its
   block keys are the workload's ``prefix_hashes``, one per engine block (``prefix_hash_tokens`` =
   the block size): the hash of that block's token ids, which the simulator chains, so two
   prompts share a block key exactly when vLLM's block hashes (a chain over the token ids of full
   blocks) agree.
4. Prints, for on and off: real vs simulated mean/p50/p90 TTFT and their ratio, the hit rate
   (cached prompt tokens / prompt tokens) real vs simulated, and the on/off TTFT ratios.

    python benchmarks/fidelity_vllm.py [--conversations 8] [--turns 4] [--out DIR]

About two minutes on two busy CPU cores (two engine start-ups, two replays of ~15 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MASK = (1 << 62) - 1


def make_workload(args, vocab: int, block_size: int):
    """(workload table with prefix_hashes, token ids per row), rows in arrival order."""
    from traces.schema import make_table

    rng = np.random.default_rng(args.seed)
    low = 16

    def text(n):
        return rng.integers(low, vocab, size=n).tolist()

    systems = [text(args.system_tokens) for _ in range(args.system_prompts)]
    rows = []
    for c in range(args.conversations):
        history = list(systems[c % args.system_prompts])
        start = c * args.conversation_gap
        for k in range(args.turns):
            prompt = history + text(args.user_tokens)
            rows.append((start + k * args.turn_gap, f"conv{c}", prompt))
            history = prompt + text(args.reply_tokens)  # the assistant's reply as the next turn sees it
    rows.sort(key=lambda r: r[0])
    arrivals = [r[0] for r in rows]
    clients = [f"tenant{int(r[1][4:]) % 2}" for r in rows]
    tokens = [r[2] for r in rows]
    table = make_table(clients, arrivals, [len(t) for t in tokens], [args.output_tokens] * len(rows))
    hashes = [
        [hash(tuple(t[b * block_size : (b + 1) * block_size])) & MASK for b in range(len(t) // block_size)]
        for t in tokens
    ]
    col = table.schema.get_field_index("prefix_hashes")
    field = pa.field("prefix_hashes", pa.list_(pa.int64()))
    values = pa.array(hashes, field.type)
    table = table.set_column(col, field, values) if col >= 0 else table.append_column(field, values)
    return table, tokens


def run_real(options, workload: pa.Table, tokens, out_dir: Path, name: str):
    """Replay on vLLM (FCFS); writes ``out_dir/name``; returns (run dir, cached tokens per request id)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from engine.replay import counters_table, write_run
    from schedulers import run_name
    from serving.bridge import ROW_KEY, TENANT_KEY, WEIGHT_KEY, ServingSettings
    from serving.logs import shift_times
    from serving.replay_vllm import _close, open_engine, warm_up
    from serving.results import requests_in_workload_order, workload_record

    settings = ServingSettings(scheduler="fcfs", seed=0, run={"workload": workload_record(workload, "multi-turn"),
                                                               "mode": "benchmarks/fidelity_vllm.py"})  # fmt: skip
    engine, scheduler = open_engine(options, settings)
    try:
        warm_up(engine, scheduler, settings)
        scheduler.equinox_reset(settings)
        engine.reset_prefix_cache()
        bridge = scheduler.equinox
        ids = workload.column("request_id").to_pylist()
        clients = workload.column("client_id").to_pylist()
        arrivals = workload.column("arrival_s").to_pylist()
        outputs = workload.column("output_tokens").to_pylist()
        cached: dict[int, int] = {}
        n, i = len(ids), 0
        t0 = time.time()
        started = time.perf_counter()
        while i < n or engine.has_unfinished_requests():
            now = time.time() - t0
            while i < n and arrivals[i] <= now:
                params = SamplingParams(
                    max_tokens=int(outputs[i]), ignore_eos=True, detokenize=False,
                    extra_args={TENANT_KEY: str(clients[i]), WEIGHT_KEY: 1.0, ROW_KEY: int(ids[i])},
                )  # fmt: skip
                engine.add_request(f"{ids[i]}", TokensPrompt(prompt_token_ids=tokens[i]), params,
                                   arrival_time=t0 + float(arrivals[i]))  # fmt: skip
                i += 1
            if engine.has_unfinished_requests():
                for out in engine.step():
                    if out.num_cached_tokens is not None and int(out.request_id) not in cached:
                        cached[int(out.request_id)] = int(out.num_cached_tokens)
            elif i < n:
                time.sleep(max(0.0, min(arrivals[i] - (time.time() - t0), 0.5)))
        wall = time.perf_counter() - started
        logged, steps = bridge.log.tables(final=True)
        logged, steps = shift_times(logged, steps, bridge.t0 - t0)
        requests = requests_in_workload_order(workload, logged, run_name("fcfs"))
        col = requests.schema.get_field_index("cached_prompt_tokens")
        if col >= 0:  # the log leaves it null; vLLM's own count of the request's first admission
            values = pa.array([cached.get(r) for r in requests.column("request_id").to_pylist()], pa.int64())
            requests = requests.set_column(col, requests.schema.field(col), values)
        config = {**bridge.log.config, "steps": steps.num_rows, "wall_s": round(wall, 3), "submitted": n}
        config.pop("clock", None)
        run_dir = out_dir / name
        write_run(run_dir, requests, steps, config, counters_table(bridge.policy))
    finally:
        _close(engine)
    return run_dir, cached


def ttft_stats(req: pd.DataFrame) -> dict:
    done = req[req.status == "finished"]
    t = (done.first_token_s - done.arrival_s).to_numpy(float)
    return {"mean": float(t.mean()), "p50": float(np.quantile(t, 0.5)), "p90": float(np.quantile(t, 0.9))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--system-prompts", type=int, default=2)
    ap.add_argument("--system-tokens", type=int, default=384)
    ap.add_argument("--user-tokens", type=int, default=64)
    ap.add_argument("--reply-tokens", type=int, default=48)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--conversation-gap", type=float, default=0.5, help="seconds between conversation starts")
    ap.add_argument("--turn-gap", type=float, default=2.5, help="seconds between a conversation's turns")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from engine.simulator import Simulator
    from serving.calibrate import CalibratedCostModel, calibrate, engine_config_of, load_real_run, policy_of
    from serving.replay_vllm import VllmEngineOptions, require_vllm
    from serving.tiny_model import make_tiny_llama

    require_vllm()
    out = args.out or Path(tempfile.mkdtemp(prefix="fidelity-vllm-"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = make_tiny_llama(out / "tiny-llama", hidden_size=256, layers=4, heads=4, kv_heads=2,
                                intermediate_size=768)  # fmt: skip
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    block_size = 32  # the CPU attention backend takes multiples of 32
    workload, tokens = make_workload(args, vocab, block_size)
    max_len = 2048
    assert max(len(t) for t in tokens) + args.output_tokens <= max_len, "workload too long for max_model_len"

    base = VllmEngineOptions(model=str(model_dir), max_num_seqs=8, max_num_batched_tokens=512, max_model_len=max_len,
                             block_size=block_size, threads=args.threads)  # fmt: skip
    real = {}
    for flag in ("on", "off"):
        options = replace(base, extra=(("enable_prefix_caching", flag == "on"),))
        run_dir, cached = run_real(options, workload, tokens, out / "real", f"prefix-{flag}")
        real[flag] = (run_dir, cached)

    report = calibrate([real["on"][0], real["off"][0]], out / "calibration")
    model = CalibratedCostModel.from_dict(report["cost_model"])
    prompt_total = int(workload.column("prompt_tokens").to_numpy().sum())
    rows = {}
    for flag in ("on", "off"):
        run = load_real_run(real[flag][0])
        cfg = replace(engine_config_of(run.config), prefix_caching=flag == "on", prefix_hash_tokens=block_size,
                      max_model_len=max_len)  # fmt: skip
        _, policy = policy_of(run.config, args.seed)
        sim_req, _ = Simulator(cfg, model, policy).run(workload, scheduler_name="fcfs")
        sim = sim_req.to_pandas()
        real_cached = sum(real[flag][1].values())
        rows[flag] = {
            "real": ttft_stats(run.requests), "sim": ttft_stats(sim),
            "real_hit": real_cached / prompt_total if real[flag][1] else float("nan"),
            "sim_hit": float(sim.cached_prompt_tokens.fillna(0).sum()) / prompt_total,
            "prefix_caching_logged": bool((run.config.get("engine") or {}).get("prefix_caching")),
            "real_finished": int((run.requests.status == "finished").sum()),
            "sim_finished": int((sim.status == "finished").sum()),
        }  # fmt: skip

    f = report["fit"]
    print(f"workload: {workload.num_rows} requests ({args.conversations} conversations x {args.turns} turns, "
          f"{args.system_prompts} shared system prompts of {args.system_tokens} tokens), {prompt_total} prompt tokens, "
          f"{args.output_tokens} output tokens each; FCFS; tiny Llama (256 hidden, 4 layers) on CPU vLLM, "
          f"block size {block_size}")  # fmt: skip
    print(f"cost model fitted on {f['steps']} busy steps of both real runs: step-time error mean {f['mape']:.1%}, "
          f"median {f['median_ape']:.1%}")  # fmt: skip
    print()
    print("| prefix caching | TTFT | real (s) | simulated (s) | sim/real |")
    print("|---|---|---|---|---|")
    for flag in ("on", "off"):
        r = rows[flag]
        for k in ("mean", "p50", "p90"):
            print(f"| {flag} | {k} | {r['real'][k]:.4f} | {r['sim'][k]:.4f} | {r['sim'][k] / r['real'][k]:.2f} |")
    print()
    print("| prefix caching | hit rate real (vLLM num_cached_tokens) | hit rate simulated (cached_prompt_tokens) "
          "| finished real / sim |")  # fmt: skip
    print("|---|---|---|---|")
    for flag in ("on", "off"):
        r = rows[flag]
        print(f"| {flag} | {r['real_hit']:.1%} | {r['sim_hit']:.1%} | {r['real_finished']} / {r['sim_finished']} |")
    print()
    print("| TTFT on/off | real | simulated |")
    print("|---|---|---|")
    for k in ("mean", "p50", "p90"):
        re = rows["on"]["real"][k] / rows["off"]["real"][k]
        si = rows["on"]["sim"][k] / rows["off"]["sim"][k]
        print(f"| {k} | {re:.2f} | {si:.2f} |")
    print(f"\nruns in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
