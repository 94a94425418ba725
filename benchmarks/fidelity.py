"""Fidelity: S-LoRA mode against the VTC artifact's measured runs, request by request.

The VTC artifact (github.com/Ying1123/VTC-artifact, ``fair_bench/<SCHEDULER>/all_results_*.jsonl``,
Apache-2.0) recorded every request of its experiments on a real S-LoRA server (Llama-2-7B, one
A10G, 10,000-token KV pool): client (``adapter_dir``), arrival (``req_time``), prompt and output
lengths, and the measured first-token and request latencies.  For each run this rebuilds the exact
workload from those responses, replays it under the same scheduler on the S-LoRA engine
(``engine/slora.py``) and prints sim / measured for throughput (requests / makespan, as the
artifact computes it), mean TTFT, p99 TTFT, and the median per-request TTFT error.

    python benchmarks/fidelity.py                       # S-LoRA mode, slora-a10g-llama2-7b
    python benchmarks/fidelity.py --mode vllm --preset vtc-a10g-llama2-7b   # the old way
    python benchmarks/fidelity.py --data DIR --only FCFS,VTC,LCF --fit      # refit the overheads
    python benchmarks/fidelity.py --docs docs/COST_MODEL.md   # both modes; rewrite the docs section

``--data`` is a directory laid out as the artifact's ``fair_bench`` result folders (default:
``$EQUINOX_VTC_RESULTS``, else ``shared/data/vtc-results`` beside the repository or one level up).
``--fit`` grid-searches the S-LoRA preset's two overheads on the FCFS runs of the synthetic suite
only (the LMSYS run and every VTC / LCF run stay out of the fit) and prints the best pair.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.presets import get_preset  # noqa: E402
from engine.replay import engine_config  # noqa: E402
from engine.simulator import Simulator  # noqa: E402
from engine.slora import SLoRAEngine, slora_config  # noqa: E402
from schedulers import make_policy  # noqa: E402
from traces.schema import make_table  # noqa: E402

# Result folder -> our scheduler spec (WVTC needs per-client weights, VTC_predict a predictor,
# LShare aborts requests client-side: not replayed here).
SCHEDULERS = {"FCFS": "fcfs", "VTC": "vtc", "LCF": "lcf", "VTC_oracle": "vtc-oracle"}
TARGET = ("FCFS", "VTC", "LCF")


def default_data() -> Path:
    env = os.environ.get("EQUINOX_VTC_RESULTS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1]
    candidates = [repo.parent / "shared" / "data" / "vtc-results", repo.parents[1] / "shared" / "data" / "vtc-results"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def find_runs(data: Path, only=None) -> list[tuple[str, str, Path]]:
    """(folder, workload, file) for every replayable run under ``data``."""
    runs = []
    for folder in SCHEDULERS:
        if only and folder not in only:
            continue
        for path in sorted((data / folder).glob("all_results_*.jsonl")):
            runs.append((folder, path.stem.removeprefix("all_results_"), path))
    return runs


# The synthetic suite's prompt is "Hello " * prompt_len (fair_bench/trace.py, dummy_prompt); the
# server's Llama tokenizer makes it prompt_len tokens plus the BOS and the trailing space's own
# token, and the admission rule counts the server's input_len.  The LMSYS trace's prompt_len was
# measured with that tokenizer (BOS included) on the text the client sends: nothing to add.
SYNTHETIC_PROMPT_EXTRA = 2


def load_run(path: Path):
    """The workload rebuilt from a run's responses, and the measured per-request TTFT (same order)."""
    record = json.loads(path.read_text().splitlines()[0])
    rs = sorted(record["result"]["responses"], key=lambda r: r["req_time"])  # make_table's order
    extra = 0 if record["config"].get("mode") == "real" else SYNTHETIC_PROMPT_EXTRA
    table = make_table(
        [r["adapter_dir"] for r in rs],
        [r["req_time"] for r in rs],
        [r["prompt_len"] + extra for r in rs],
        [r["output_len"] for r in rs],
        source=str(path),
    )
    ttft = np.array([r["first_token_latency"] for r in rs], dtype=float)
    result = dict(record["result"], request_latency=np.array([r["request_latency"] for r in rs], dtype=float))
    return table, ttft, result


def replay_one(table, spec: str, preset: str, mode: str, cost_model=None):
    """Requests table of ``table`` replayed under ``spec``."""
    p = get_preset(preset)
    cost = cost_model if cost_model is not None else p.cost_model
    policy = make_policy(spec)
    if mode == "slora":
        engine = SLoRAEngine(slora_config(p), cost, policy)
    else:
        config, _ = engine_config(preset)
        engine = Simulator(config, cost, policy)
    requests, _ = engine.run(table, scheduler_name=spec)
    return requests, engine


def compare(table, measured_ttft, result, requests) -> dict:
    arrival = table.column("arrival_s").to_numpy()
    first = np.array(requests.column("first_token_s").to_pylist(), dtype=float)
    finish = np.array(requests.column("finish_s").to_pylist(), dtype=float)
    served = np.isfinite(first) & (measured_ttft >= 0)
    sim_ttft = first - arrival
    thr = np.isfinite(finish).sum() / np.nanmax(finish)
    m, s = measured_ttft[served], sim_ttft[served]
    # decode pace (first to last token, per output token) and mean requests in flight, sim / measured
    out = table.column("output_tokens").to_numpy()[served] - 1
    sim_decode = (finish - first)[served]
    meas_decode = result["request_latency"][served] - m
    pace = (sim_decode.sum() / out.sum()) / (meas_decode.sum() / out.sum())
    meas_span = np.max(arrival[served] + result["request_latency"][served])
    in_flight = (sim_decode.sum() / np.nanmax(finish)) / (meas_decode.sum() / meas_span)
    return {
        "pace": float(pace),
        "in_flight": float(in_flight),
        "throughput": thr / result["throughput"],
        "mean_ttft": s.mean() / m.mean(),
        "p99_ttft": np.percentile(s, 99) / np.percentile(m, 99),
        "median_req_err": float(np.median(np.abs(s - m) / np.maximum(m, 1e-9))),
        "measured_thr": result["throughput"],
        "measured_ttft": m.mean(),
        "preemptions": int(np.sum(requests.column("preemptions").to_numpy())),
    }


def fit(data: Path, preset: str) -> None:
    """Grid-search (step overhead, per-request overhead) on the FCFS synthetic runs."""
    runs = [(f, w, p) for f, w, p in find_runs(data, {"FCFS"}) if w != "real"]
    loaded = [load_run(p) for _, _, p in runs]
    base = get_preset(preset).cost_model
    best = None
    for step in np.arange(0.0010, 0.00301, 0.0005):
        for per_req in np.arange(0.000025, 0.0000751, 0.0000125):
            cm = replace(base, step_overhead_s=float(step), request_overhead_s=float(per_req))
            errs = []
            for table, ttft, result in loaded:
                r = compare(table, ttft, result, replay_one(table, "fcfs", preset, "slora", cm)[0])
                errs += [np.log(r["throughput"]), np.log(r["mean_ttft"])]
            # mean absolute log error, each term capped at log(1.25): a run the model cannot follow
            # (see docs/COST_MODEL.md) must not drag every other run off
            loss = float(np.mean(np.minimum(np.abs(errs), np.log(1.25))))
            if best is None or loss < best[0]:
                best = (loss, float(step), float(per_req))
            print(f"step {step * 1000:.1f} ms  per request {per_req * 1e6:.0f} us  mean capped |log error| {loss:.4f}")
    print(
        f"best: step_overhead_s={best[1]:.4f} request_overhead_s={best[2]:.6f} (mean capped |log error| {best[0]:.4f})"
    )


def evaluate(data: Path, preset: str, mode: str, only=None) -> list[dict]:
    """One row per run: folder, workload, requests and ``compare``'s ratios."""
    rows = []
    for folder, workload, path in find_runs(data, only):
        table, ttft, result = load_run(path)
        requests, _ = replay_one(table, SCHEDULERS[folder], preset, mode)
        rows.append(
            {"folder": folder, "workload": workload, "n": table.num_rows, **compare(table, ttft, result, requests)}
        )
    return rows


def worst(rows: list[dict]) -> dict:
    target = [r for r in rows if r["folder"] in TARGET]
    return {k: max(abs(r[k] - 1.0) for r in target) for k in ("throughput", "mean_ttft")} if target else {}


def print_table(rows: list[dict]) -> None:
    header = f"{'scheduler':<11} {'workload':<24} {'n':>5} {'thr':>6} {'TTFT':>6} {'p99':>6} {'req err':>7}"
    header += f" {'preempt':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['folder']:<11} {r['workload']:<24} {r['n']:>5} {r['throughput']:>6.3f} {r['mean_ttft']:>6.3f} "
            f"{r['p99_ttft']:>6.3f} {r['median_req_err']:>7.1%} {r['preemptions']:>7}"
        )
    w = worst(rows)
    if w:
        print(f"worst over FCFS, VTC, LCF: throughput {w['throughput']:.1%}, mean TTFT {w['mean_ttft']:.1%} off")


SECTION = "## S-LoRA mode vs the VTC artifact's measured runs"


def doc_section(slora: list[dict], vllm: list[dict], preset: str, baseline: str) -> str:
    """The docs/COST_MODEL.md section: both modes side by side, per run."""
    old = {(r["folder"], r["workload"]): r for r in vllm}
    lines = [
        SECTION,
        "",
        "Generated by `python benchmarks/fidelity.py --docs docs/COST_MODEL.md` (the VTC artifact's result",
        "folders, github.com/Ying1123/VTC-artifact `fair_bench/`, commit 192c2e2, Apache-2.0, are read from",
        "`--data`).  Each run's workload is rebuilt from its responses (arrival, client, prompt and",
        "output lengths; the synthetic prompts get the 2 tokens the server's tokenizer adds to",
        '`"Hello " * n`) and replayed under the same scheduler.  Ratios are simulated / measured:',
        "throughput (requests / makespan, as the artifact computes it), mean and p99 TTFT; *req err* is",
        "the median per-request TTFT error of S-LoRA mode; *pace* is decode time per output token (first",
        "to last token, summed over requests) and *in flight* the mean number of requests between their",
        "first and last token, each simulated / measured.  S-LoRA mode preempted no request in any run;",
        f"the vLLM-mode column is `{baseline}` on the vLLM-like simulator (with its preemptions).",
        "",
        "| scheduler | workload | n | S-LoRA thr | S-LoRA TTFT | S-LoRA p99 | req err | pace | in flight "
        "| vLLM-mode thr | vLLM-mode TTFT | vLLM-mode p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in slora:
        o = old.get((r["folder"], r["workload"]))
        tail = f"{o['throughput']:.3f} | {o['mean_ttft']:.3f} | {o['p99_ttft']:.3f}" if o else "- | - | -"
        lines.append(
            f"| {r['folder']} | {r['workload']} | {r['n']} | {r['throughput']:.3f} | {r['mean_ttft']:.3f} | "
            f"{r['p99_ttft']:.3f} | {r['median_req_err']:.1%} | {r['pace']:.3f} | {r['in_flight']:.3f} | {tail} |"
        )
    w, wo = worst(slora), worst(vllm)
    target = [r for r in slora if r["folder"] in TARGET]
    ok = sum(abs(r["throughput"] - 1) <= 0.10 and abs(r["mean_ttft"] - 1) <= 0.10 for r in target)
    pace = sum(abs(r["pace"] - 1) <= 0.03 for r in target)
    flight = sum(abs(r["in_flight"] - 1) <= 0.02 for r in target)
    lines += [
        "",
        f"Worst over the FCFS, VTC and LCF runs: S-LoRA mode ({preset}) {w['throughput']:.1%} off on throughput,",
        f"{w['mean_ttft']:.1%} on mean TTFT; vLLM mode {wo['throughput']:.1%} and {wo['mean_ttft']:.1%}.",
        f"S-LoRA mode is within 10% on both on {ok} of {len(target)} runs; its decode pace is within 3%",
        f"of the measured on {pace} and its requests in flight within 2% on {flight}.",
        "",
    ]
    return "\n".join(lines) + SECTION_NOTES


# The prose of the section (what the numbers above mean); kept by cost_model_error.py's rewrite.
SECTION_NOTES = """
**What S-LoRA mode is.** `engine/slora.py` runs the artifact's router loop
(`slora/server/router/manager.py`, `req_queue.py`): admission reserves each running request's
whole remaining output (`_can_add_new_req`: sorted by remaining output, the pool must hold
`max_i(left_i * i + sum_{j<=i} has_run_j)`, strictly below `pool - 32 tokens per adapter`), the
policy's order with a stop at the first request that does not fit, at most `batch_max_tokens =
3072` prompt tokens per new batch, prefill-only steps, a merge attempt after 10 decode steps and
then at every step until one succeeds, a 10 ms poll when idle.  Every request runs exactly its
`output_len` tokens (`max_new_tokens = output_len`, `ignore_eos`), so nothing is ever preempted.
The prompt lengths are the server's: the synthetic suite's prompt `"Hello " * n` is n tokens plus
the BOS and the trailing space's token.  Those 2 tokens matter: with the client's `prompt_len` as is,
the FCFS `proportional` run settles at about 25 requests in flight instead of the measured 18-19
(256 + 256 tokens a request sits on the edge of the rule's 10,000-token pool), and with them at 18-19.

**Step times** (`slora-a10g-llama2-7b`): the A10G roofline fitted on VTC's own A10G kernel profile
(`a10g-llama2-7b`'s constants) plus 2 ms per step and 75 us per request in the step, the server's
router, RPC and detokenisation work that a kernel profile cannot see.  The two overheads come from
`python benchmarks/fidelity.py --fit` on the nine FCFS runs of the synthetic suite only (a grid,
mean |log error| of throughput and mean TTFT, each term capped at log 1.25); the LMSYS run and every
VTC and LCF run are held out.  Without them (the roofline alone) S-LoRA mode was 6-24% fast on
throughput and 12-85% low on mean TTFT on the six FCFS runs tried.  With them the decode pace and
the requests in flight match the measured ones on most runs (the counts are above).

**Where it is not within 10%, and why.**
* `increase` (FCFS and VTC, mean TTFT 0.44-0.45x): the real server decoded about 9.5% slower per
  token on this run than on every other 256/256 run at the same batch size (50.7 ms vs 42-44 ms per
  token at 19 requests in flight), and the gap grows as the arrival rate ramps up (6% in the first
  minute, 15% by mid-run).  Requests arrive one at a time there and each gets a prefill of its own; a
  per-prefill cost large enough to explain it would make the other runs with many small prefills
  (`poisson_on_off_overload`, `real`) 5-7% too slow, so the model does not carry one.  The run ends
  just past saturation, so a capacity gap of 5-9% becomes a 2x TTFT gap; throughput is 3.5% off.
* `dist_shift` (VTC 1.18x, LCF 1.15x) and VTC `proportional` (1.12x): on these runs the measured
  server decoded 4-6% faster per token than the model (pace above) at the same number of requests in
  flight, while on the FCFS runs of the same lengths the model is within 2%: on the identical
  `proportional` workload the real VTC run finished in 782 s and the real FCFS run in 807 s, while the
  simulated runs do the same work in the same 811 s either way.  That is run-to-run variation of
  the measurement (same work, same concurrency), which no scheduler-blind model can follow; these
  runs sit close to saturation (arrivals 2-2.25 req/s against about 1.75 served), where mean TTFT
  moves about 4x as much as capacity.  Throughput stays within 4%.
* At low load the measured TTFT is 0.04-0.11 s above the simulated (the client, HTTP and
  detokenisation path); it does not show in the means, which are 10 s and more on every run here.
"""


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the section in ``path``."""
    text = path.read_text() if path.exists() else ""
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head + section.rstrip("\n") + ("\n" + rest[nxt:] if nxt >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--preset", default="slora-a10g-llama2-7b")
    ap.add_argument("--mode", choices=("slora", "vllm"), default="slora")
    ap.add_argument("--only", default=None, help="Comma-separated result folders (FCFS,VTC,LCF,VTC_oracle).")
    ap.add_argument("--fit", action="store_true", help="Refit the preset's overheads on the FCFS synthetic runs.")
    ap.add_argument(
        "--docs", type=Path, default=None, help="Also run vLLM mode (vtc-a10g-llama2-7b) and write the section here."
    )
    args = ap.parse_args(argv)
    data = args.data or default_data()
    if not data.is_dir():
        print(f"{data}: no VTC artifact results here (pass --data)", file=sys.stderr)
        return 2
    if args.fit:
        fit(data, args.preset)
        return 0
    only = set(args.only.split(",")) if args.only else None
    print(f"S-LoRA fidelity: mode {args.mode}, preset {args.preset}; ratios are simulated / measured")
    rows = evaluate(data, args.preset, args.mode, only)
    print_table(rows)
    if args.docs is not None:
        baseline = "vtc-a10g-llama2-7b"
        print(f"\nvLLM mode, preset {baseline}:")
        old = evaluate(data, baseline, "vllm", only)
        print_table(old)
        write_section(args.docs, doc_section(rows, old, args.preset, baseline))
        print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
