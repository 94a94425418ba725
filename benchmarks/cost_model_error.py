"""Calibrate the step-time model against real measurements and report its error.

    python benchmarks/cost_model_error.py [--data ../shared/data] [--docs docs/COST_MODEL.md]

1. Fits, by least squares on the relative error, the RooflineCostModel constants:
   * linear layers (compute_efficiency, memory_efficiency, linear overhead) per (GPU, model, TP)
     from Vidur's per-layer kernel times (gpu-profiles/*_mlp.csv, MIT, microsoft/vidur):
     measured linear time of a step = n_layers * sum of the per-layer operators;
   * attention (attention_efficiency, attention overhead, per-request overhead) from Vidur's
     Llama-2-70B A100 attention kernels (TP 2, one layer);
   * the A10G constants from the VTC artifact's A10G profile (fair_bench/cost_profile.json).
2. Prints the constants in the form of engine/presets.py's CALIBRATION and says whether the
   literals there are current.
3. Prints, per preset, the median and p90 relative error |model / measured - 1| of the
   presets' own constants, and writes docs/COST_MODEL.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.cost_model import RooflineCostModel, prefill_attn_pairs, roofline  # noqa: E402
from engine.presets import CALIBRATION, HARDWARE, MODELS, PRESETS, ROOFLINE_P, TENSOR_PARALLEL, roofline_model  # noqa: E402

# fmt: off
LINEAR_OPS = ["input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
              "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add"]
PROFILE_FILES = {("a100", "llama2-7b"): "a100_Llama-2-7b-hf_mlp.csv",
                 ("a100", "llama2-70b"): "a100_Llama-2-70b-hf_mlp.csv",
                 ("h100", "llama2-7b"): "h100_Llama-2-7b-hf_mlp.csv",
                 ("h100", "llama2-70b"): "h100_Llama-2-70b-hf_mlp.csv"}
# fmt: on
ATTENTION_FILE = "a100_Llama-2-70b-hf_attention.csv"  # TP 2, one layer, one GPU
ATTENTION_TP = 2
# No H100 attention profile: assume 1.5x the A100's attention FLOP/s (FlashAttention-2 paper,
# forward pass H100 vs A100), i.e. attention_eff(H100) = 1.5 * eff(A100) * 312 / 989.
H100_ATTENTION_SPEEDUP = 1.5

# VTC-artifact fair_bench/cost_profile.json (Apache-2.0, Ying1123/VTC-artifact): Llama-2-7B on
# one A10G, S-LoRA, 10,000-token pool.  {input_len: {output_len: (batch size, prefill seconds
# per request, decode seconds per request)}}: a batch of bs identical requests is prefilled in
# one step, then decoded for output_len steps; times are the batch's totals divided by bs.
# fmt: off
VTC_A10G_PROFILE = {
    8: {1: (1111, 0.0019213044675591828, 0.0002468091533808532),
        64: (138, 0.0021417901135873103, 0.030275464057922363),
        128: (73, 0.0022667891358676023, 0.07749404645945927),
        196: (49, 0.003119512480132434, 0.1481780130036023),
        256: (37, 0.0029721582258069837, 0.25211187311120936)},
    16: {1: (588, 0.0036017888257292665, 0.00025928912519597685)},
    32: {1: (303, 0.006960543547526444, 0.00041935860913972254)},
    64: {1: (153, 0.013774788613412893, 0.0004038249745088465),
         64: (78, 0.01368869879306891, 0.03831646686945206),
         128: (52, 0.013959375711587759, 0.09524754836009099),
         196: (38, 0.014462025542008249, 0.19397689794239245),
         256: (31, 0.014861129945324313, 0.3002634279189571)},
    128: {1: (77, 0.027265663270826464, 0.0006475541498753932)},
    256: {1: (38, 0.0546885653545982, 0.0010982312654194079),
          64: (31, 0.0547475891728555, 0.08188322282606555),
          128: (26, 0.05427648470951961, 0.19023098395420954),
          196: (22, 0.05476990613070401, 0.3372117714448409),
          256: (19, 0.05584251253228439, 0.5011190740685714)},
    512: {1: (19, 0.109953142467298, 0.0021019358383981804),
          64: (17, 0.11052472451153923, 0.14756104525397806),
          128: (15, 0.10978655815124512, 0.3330008188883464),
          196: (14, 0.11074525969369071, 0.5448835747582572),
          256: (13, 0.10909274908212516, 0.7603553992051345)},
}
# fmt: on

GRID = np.round(np.arange(0.20, 1.0001, 0.0025), 4)  # efficiencies tried by the fits
GEMM_OPS = ["attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj"]


def rel_err(pred, meas) -> np.ndarray:
    return np.abs(np.asarray(pred, float) / np.asarray(meas, float) - 1.0)


def summary(pred, meas) -> tuple[float, float, int]:
    e = rel_err(pred, meas)
    return float(np.median(e)), float(np.quantile(e, 0.9)), len(e)


def nonneg_offsets(
    base: np.ndarray, meas: np.ndarray, cols: list[np.ndarray], weights: np.ndarray | None = None
) -> np.ndarray:
    """Offsets x >= 0 minimising sum(w * ((base + cols @ x - meas) / meas)^2) (tiny active-set NNLS)."""
    sw = np.ones_like(meas) if weights is None else np.sqrt(weights)
    A = np.stack(cols, axis=1) * (sw / meas)[:, None]
    b = (meas - base) * sw / meas
    active = list(range(A.shape[1]))
    while True:
        x = np.zeros(A.shape[1])
        if active:
            x[active] = np.linalg.lstsq(A[:, active], b, rcond=None)[0]
        if (x >= 0).all():
            return x
        active = [i for i in active if x[i] > 0]


def fit_scale_and_offsets(unit: np.ndarray, meas: np.ndarray, cols: list[np.ndarray]):
    """Best efficiency e on GRID and offsets x >= 0 for ``meas ~ unit / e + cols @ x``."""
    best = None
    for e in GRID:
        x = nonneg_offsets(unit / e, meas, cols)
        loss = float(np.sum(((unit / e + np.stack(cols, axis=1) @ x - meas) / meas) ** 2))
        if best is None or loss < best[0]:
            best = (loss, float(e), x)
    return best[1], best[2]


# --- Vidur linear layers ---------------------------------------------------------------------
def load_linear(data: Path, gpu: str, model: str) -> pd.DataFrame:
    """num_tokens -> measured linear-layer time of one step (s), rows at the preset's TP."""
    df = pd.read_csv(data / "gpu-profiles" / PROFILE_FILES[(gpu, model)])
    df = df[df.num_tensor_parallel_workers == TENSOR_PARALLEL[model]]
    per_layer_ms = sum(df[f"time_stats.{op}.median"] for op in LINEAR_OPS)
    out = pd.DataFrame({"num_tokens": df.num_tokens, "ms": per_layer_ms})
    out = out.groupby("num_tokens", as_index=False).ms.median()  # a few repeated num_tokens
    out["measured_s"] = out.ms * MODELS[model].n_layers / 1000.0
    return out


def layers_only(cm: RooflineCostModel) -> RooflineCostModel:
    """The same model without the LM head: Vidur's linear profile covers the blocks only."""
    m = cm.model
    return replace(cm, model=replace(m, vocab=0, n_params=m.layer_params))


def linear_units(cm: RooflineCostModel, tokens) -> tuple[np.ndarray, float]:
    """(compute, weight-read) seconds of the linear layers at efficiency 1."""
    m = cm.model
    compute = 2.0 * m.linear_params * np.asarray(tokens, float) / cm.peak_flops
    memory = m.linear_params * m.bytes_per_param / (cm.tp * cm.hardware.mem_bandwidth)
    return compute, memory


def fit_linear(data: Path, gpu: str, model: str, p: float = ROOFLINE_P):
    """memory_eff: the GEMMs' weight-read bandwidth at num_tokens <= 8 (purely memory-bound);
    then compute_eff and a fixed overhead on every row, on the roofline with exponent ``p``.
    Rows are weighted so that every factor of num_tokens counts the same (the profile is dense
    at large num_tokens; the engine's decode steps are small)."""
    cm = layers_only(roofline_model(gpu, model))
    _, weights_s = linear_units(cm, 1)
    df = pd.read_csv(data / "gpu-profiles" / PROFILE_FILES[(gpu, model)])
    df = df[(df.num_tensor_parallel_workers == TENSOR_PARALLEL[model]) & (df.num_tokens <= 8)]
    gemm_s = sum(df[f"time_stats.{op}.median"] for op in GEMM_OPS) * MODELS[model].n_layers / 1000.0
    memory_eff = round(float(np.median(weights_s / gemm_s)), 3)

    lin = load_linear(data, gpu, model)
    n = lin.num_tokens.to_numpy(float)
    meas = lin.measured_s.to_numpy()
    w = np.gradient(np.log(n))
    compute_s, _ = linear_units(cm, n)
    best = None
    for e in GRID:
        base = roofline(compute_s / e, weights_s / memory_eff, p)
        (o,) = nonneg_offsets(base, meas, [np.ones_like(n)], w)
        loss = float(np.sum(w * ((base + o - meas) / meas) ** 2))
        if best is None or loss < best[0]:
            best = (loss, float(e), float(o))
    return {"compute_eff": best[1], "memory_eff": memory_eff, "linear_overhead_s": best[2]}


def linear_errors(data: Path, gpu: str, model: str, f: dict, p: float):
    lin = load_linear(data, gpu, model)
    compute_s, weights_s = linear_units(layers_only(roofline_model(gpu, model)), lin.num_tokens)
    pred = roofline(compute_s / f["compute_eff"], weights_s / f["memory_eff"], p) + f["linear_overhead_s"]
    return summary(pred, lin.measured_s)


# --- Vidur attention (70B, A100, TP 2, one layer) ----------------------------------------------
def load_attention(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = pd.read_csv(data / "gpu-profiles" / ATTENTION_FILE)
    assert (df.num_tensor_parallel_workers == ATTENTION_TP).all()
    pre = df[df.is_prefill].copy()
    pre["pairs"] = prefill_attn_pairs(pre.prefill_chunk_size.to_numpy(), pre.kv_cache_size.to_numpy())
    pre["measured_s"] = pre["time_stats.attn_prefill.median"] / 1000.0
    dec = df[~df.is_prefill].copy()
    dec["kv_tokens"] = dec.batch_size * dec.kv_cache_size  # every request holds kv_cache_size
    dec["measured_s"] = dec["time_stats.attn_decode.median"] / 1000.0
    return pre, dec


def attention_layer_model(memory_eff: float) -> RooflineCostModel:
    """One layer of Llama-2-70B on 2 A100s (the profile's setting), efficiencies 1 / fitted."""
    cm = roofline_model("a100", "llama2-70b")
    return replace(
        cm, tp=ATTENTION_TP, model=replace(cm.model, n_layers=1), attention_efficiency=1.0, memory_efficiency=memory_eff
    )


def fit_attention(data: Path, a100_memory_eff: float):
    """attention_eff + per-layer overhead from prefill rows; per-layer step and per-request
    overheads from decode rows, with the A100 linear fit's memory efficiency (the same HBM)."""
    pre, dec = load_attention(data)
    cm = attention_layer_model(1.0)
    unit = np.asarray(cm.attention_time(pre.pairs.to_numpy(), 0.0))
    meas = pre.measured_s.to_numpy()
    attn_eff, (prefill_overhead,) = fit_scale_and_offsets(unit, meas, [np.ones_like(meas)])
    cmd = attention_layer_model(a100_memory_eff)
    base = np.asarray(cmd.attention_time(0.0, dec.kv_tokens.to_numpy()))
    dmeas = dec.measured_s.to_numpy()
    step, req = nonneg_offsets(base, dmeas, [np.ones_like(dmeas), dec.batch_size.to_numpy(float)])
    return {
        "attention_eff": attn_eff,
        "prefill_overhead_layer_s": prefill_overhead,
        "decode_overhead_layer_s": step,
        "request_overhead_layer_s": req,
    }


# --- VTC's A10G profile ----------------------------------------------------------------------
def vtc_profile_rows():
    for x, by_y in VTC_A10G_PROFILE.items():
        for y, (bs, prefill_s, decode_s) in by_y.items():
            yield x, y, bs, prefill_s * bs, decode_s * bs  # batch totals


def a10g_phase_inputs():
    """For every profile point: the prefill step and the decode steps' inputs."""
    rows = []
    for x, y, bs, prefill_total, decode_total in vtc_profile_rows():
        i = np.arange(1, y + 1)
        rows.append(
            dict(
                x=x,
                y=y,
                bs=bs,
                prefill_total=prefill_total,
                decode_total=decode_total,
                prefill=(bs * x, bs * prefill_attn_pairs(x, 0), 0, 0, bs),
                decode=(np.zeros(y), np.zeros(y), np.full(y, bs), bs * (x + i - 1.0), np.full(y, bs)),
            )
        )
    return rows


def fit_a10g(attention_eff: float, memory_eff: float):
    """A10G roofline constants from VTC's profile (every prefill step and decode phase):
    compute_eff on GRID, step and per-request overheads >= 0.  The profile cannot tell the
    weight-read bandwidth from the fixed per-step overhead (every step has both), so
    ``memory_eff`` is given: the A100's measured weight-read efficiency."""
    cm = replace(
        roofline_model("a10g", "llama2-7b"),
        memory_efficiency=1.0,
        attention_efficiency=attention_eff,
        step_overhead_s=0.0,
        request_overhead_s=0.0,
    )
    comp, mem, fixed, meas, steps, reqs = [], [], [], [], [], []
    for r in a10g_phase_inputs():
        p_tok, p_pairs, _, _, bs = r["prefill"]
        c, m = linear_units(cm, p_tok)
        comp.append(c), mem.append(m)
        fixed.append((float(cm.attention_time(p_pairs, 0.0)), 0.0))  # (attention, KV reads at e_m=1)
        meas.append(r["prefill_total"]), steps.append(1.0), reqs.append(bs)
        y, bs = r["y"], r["bs"]
        c, m = linear_units(cm, bs)
        comp.append(y * c), mem.append(y * m)
        fixed.append((0.0, float(np.sum(cm.attention_time(0.0, r["decode"][3])))))
        meas.append(r["decode_total"]), steps.append(float(y)), reqs.append(float(bs * y))
    comp, mem, meas = np.array(comp), np.array(mem), np.array(meas)
    attn, kv = np.array(fixed).T
    # a decode phase repeats one step shape y times: its roofline is y times the step's
    cols = [np.array(steps), np.array(reqs)]
    best = None
    for e_c in GRID:
        base = roofline(comp / e_c, mem / memory_eff, ROOFLINE_P) + attn + kv / memory_eff
        x = nonneg_offsets(base, meas, cols)
        loss = float(np.sum(((base + np.stack(cols, axis=1) @ x - meas) / meas) ** 2))
        if best is None or loss < best[0]:
            best = (loss, float(e_c), x)
    _, e_c, (step, req) = best
    return {
        "compute_eff": e_c,
        "memory_eff": memory_eff,
        "step_overhead_s": float(step),
        "request_overhead_s": float(req),
    }


def a10g_errors(cm) -> dict[str, tuple[float, float, int]]:
    """Prefill steps and whole decode phases (y > 1) of VTC's profile, predicted by ``cm``."""
    rows = a10g_phase_inputs()
    pre = [(float(cm.step_time(*r["prefill"])), r["prefill_total"]) for r in rows]
    dec = [(float(np.sum(cm.step_time(*r["decode"]))), r["decode_total"]) for r in rows if r["y"] > 1]
    p, d = np.array(pre), np.array(dec)
    return {"prefill step": summary(p[:, 0], p[:, 1]), "decode phase": summary(d[:, 0], d[:, 1])}


def vtc_formula_errors() -> tuple[float, float, int]:
    """VTC's h(x, y) against its own data: h = (prefill + decode) per request, ms."""
    cm = PRESETS["vtc-a10g-llama2-7b"].cost_model
    pred, meas = [], []
    for x, by_y in VTC_A10G_PROFILE.items():
        for y, (_, p, d) in by_y.items():
            pred.append(cm.request_cost_ms(x, y))
            meas.append((p + d) * 1000.0)
    return summary(pred, meas)


# --- Constants and error tables ----------------------------------------------------------------
def fit_all(data: Path) -> dict:
    fits = {key: fit_linear(data, *key) for key in PROFILE_FILES}
    attn = fit_attention(data, fits[("a100", "llama2-70b")]["memory_eff"])
    a10g = fit_a10g(attn["attention_eff"], fits[("a100", "llama2-7b")]["memory_eff"])
    out = {}
    for (gpu, model), f in fits.items():
        n_layers = MODELS[model].n_layers
        layer_overhead = (attn["prefill_overhead_layer_s"] + attn["decode_overhead_layer_s"]) / 2
        ae = attn["attention_eff"] * attention_ratio(gpu)
        out[(gpu, model)] = (
            f["compute_eff"],
            round(ae, 4),
            f["memory_eff"],
            round(f["linear_overhead_s"] + n_layers * layer_overhead, 6),
            round(n_layers * attn["request_overhead_layer_s"], 7),
        )
    out[("a10g", "llama2-7b")] = (
        a10g["compute_eff"],
        round(attn["attention_eff"], 4),
        a10g["memory_eff"],
        round(a10g["step_overhead_s"], 6),
        round(a10g["request_overhead_s"], 7),
    )
    # the same linear fits with the textbook max() roofline, for comparison
    knee = {}
    for key, f in fits.items():
        f_max = fit_linear(data, *key, p=np.inf)
        knee[key] = (f_max, linear_errors(data, *key, f_max, np.inf), linear_errors(data, *key, f, ROOFLINE_P))
    return {"constants": out, "linear": fits, "attention": attn, "a10g": a10g, "knee": knee}


def attention_ratio(gpu: str) -> float:
    """attention_efficiency of ``gpu`` relative to the A100's: only A100 attention was profiled.
    H100: see H100_ATTENTION_SPEEDUP; A10G: the same fraction of peak as the A100."""
    if gpu == "h100":
        return H100_ATTENTION_SPEEDUP * HARDWARE["a100"].peak_flops / HARDWARE["h100"].peak_flops
    return 1.0


def error_table(data: Path, fit: dict) -> list[dict]:
    """Per preset: errors of the presets' constants on every measurement that applies."""
    pre, dec = load_attention(data)
    attn = fit["attention"]
    rows = []
    for name, preset in PRESETS.items():
        row = {"preset": name}
        cm = preset.cost_model
        key = next((k for k in PROFILE_FILES if name == f"{k[0]}-{k[1]}"), None)
        if key is not None:
            lin = load_linear(data, *key)
            # linear part: the linear fit's own overhead (step_overhead_s minus the attention part)
            attn_part = (
                MODELS[key[1]].n_layers * (attn["prefill_overhead_layer_s"] + attn["decode_overhead_layer_s"]) / 2
            )
            pred = np.asarray(layers_only(cm).linear_time(lin.num_tokens.to_numpy())) + cm.step_overhead_s - attn_part
            row["linear"] = summary(pred, lin.measured_s)
        if name == "a100-llama2-70b":
            layer = replace(cm, tp=ATTENTION_TP, model=replace(cm.model, n_layers=1))
            p = np.asarray(layer.attention_time(pre.pairs.to_numpy(), 0.0)) + attn["prefill_overhead_layer_s"]
            row["prefill attention"] = summary(p, pre.measured_s)
            d = (
                np.asarray(layer.attention_time(0.0, dec.kv_tokens.to_numpy()))
                + attn["decode_overhead_layer_s"]
                + attn["request_overhead_layer_s"] * dec.batch_size
            )
            row["decode attention"] = summary(d, dec.measured_s)
        if name in ("a10g-llama2-7b", "vtc-a10g-llama2-7b"):
            row.update({f"VTC A10G {k}": v for k, v in a10g_errors(cm).items()})
        if name == "vtc-a10g-llama2-7b":
            row["VTC h(x,y) per request"] = vtc_formula_errors()
        rows.append(row)
    return rows


def fmt(v) -> str:
    return "-" if v is None else f"{100 * v[0]:.1f}% / {100 * v[1]:.1f}% (n={v[2]})"


COLUMNS = [
    "linear",
    "prefill attention",
    "decode attention",
    "VTC A10G prefill step",
    "VTC A10G decode phase",
    "VTC h(x,y) per request",
]


def render_table(rows: list[dict]) -> str:
    lines = ["| preset | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['preset']} | " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def render_constants(consts: dict) -> str:
    lines = [
        "CALIBRATION = {",
        "    # (gpu, model): (compute_eff, attention_eff, memory_eff, step_overhead_s, request_overhead_s)",
    ]
    for key, v in consts.items():
        lines.append(f"    {key!r}: ({v[0]}, {v[1]}, {v[2]}, {v[3]}, {v[4]}),")
    lines.append("}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="folder holding gpu-profiles/ (default: ../shared/data from the repo root)",
    )
    ap.add_argument(
        "--docs", type=Path, default=REPO / "docs" / "COST_MODEL.md", help="where to write the report ('-' to skip)"
    )
    args = ap.parse_args(argv)
    if not (args.data / "gpu-profiles").is_dir():
        print(f"error: {args.data / 'gpu-profiles'} not found (use --data)", file=sys.stderr)
        return 2

    fit = fit_all(args.data)
    consts = fit["constants"]
    print("Fitted constants (engine/presets.py CALIBRATION):")
    print(render_constants(consts))
    stale = [k for k, v in consts.items() if not np.allclose(v, CALIBRATION[k], rtol=1e-3, atol=1e-9)]
    print("presets.py is", f"STALE for {stale}: paste the dict above" if stale else "up to date")
    print()
    print(
        "Attention fit (Llama-2-70B, A100, TP 2, per layer):",
        {k: round(float(v), 7) for k, v in fit["attention"].items()},
    )
    for (g, m), f in fit["linear"].items():
        print(f"Linear fit {g}-{m}:", {k: round(float(v), 6) for k, v in f.items()})
    print("A10G fit (VTC profile):", {k: round(float(v), 7) for k, v in fit["a10g"].items()})
    print()
    rows = error_table(args.data, fit)
    table = render_table(rows)
    print("Relative error |model/measured - 1|, median / p90 (n):")
    print(table)
    if str(args.docs) != "-":
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        doc = render_doc(fit, table)
        # benchmarks/fidelity.py owns the S-LoRA section of the same file: keep it
        keep = "## S-LoRA mode vs the VTC artifact's measured runs"
        if args.docs.exists() and keep in (old := args.docs.read_text()):
            doc = doc.rstrip("\n") + "\n\n" + keep + old.split(keep, 1)[1]
        args.docs.write_text(doc)
        print(f"\nwrote {args.docs}")
    return 0


def render_doc(fit: dict, table: str) -> str:
    attn = fit["attention"]
    vtc = PRESETS["vtc-a10g-llama2-7b"].cost_model
    hw_rows = "\n".join(
        f"| {k} | {h.name} | {h.peak_flops / 1e12:g} | {h.mem_bandwidth / 1e9:g} | {h.memory_bytes / 2**30:g} |"
        for k, h in HARDWARE.items()
    )
    const_rows = "\n".join(
        f"| {g}-{m} | {TENSOR_PARALLEL[m]} | {v[0]} | {v[1]} | {v[2]} | {1000 * v[3]:.3f} | {1e6 * v[4]:.1f} |"
        for (g, m), v in CALIBRATION.items()
    )
    preset_rows = "\n".join(
        f"| {p.name} | {p.hardware.name} x{p.tensor_parallel} | {p.model.name} | {type(p.cost_model).__name__} | "
        f"{p.kv_capacity_tokens:,} | {p.max_running} | {p.max_batch_tokens} | {p.merge_interval_steps} |"
        for p in PRESETS.values()
    )
    lin = "\n".join(
        f"| {g}-{m} | {f['compute_eff']} | {f['memory_eff']} | {1000 * f['linear_overhead_s']:.3f} |"
        for (g, m), f in fit["linear"].items()
    )
    a = fit["a10g"]
    knee = "\n".join(
        f"| {g}-{m} | {fm['compute_eff']} / {1000 * fm['linear_overhead_s']:.2f} ms | {fmt(e_max)} | {fmt(e_p)} |"
        for (g, m), (fm, e_max, e_p) in fit["knee"].items()
    )
    return f"""# Step-time model (cost model)

*Generated by `python benchmarks/cost_model_error.py`; edit the script, not this file.*

The simulator charges every engine step a time from `engine/cost_model.py`; presets in
`engine/presets.py` pick a GPU, a model, a cost model and the engine's limits
(`get_preset(name)`, default `a100-llama2-7b`).

## RooflineCostModel

For a step with `prefill_tokens` prompt tokens, `prefill_attn_pairs` query-key pairs of its prefill
chunks (`sum chunk * (context_before + (chunk + 1) / 2)`), `decode_tokens` decode requests reading
`decode_kv_tokens` KV tokens in all, and `num_requests` requests, on `tp` GPUs
(`P = tp * peak_flops`, `B = tp * mem_bandwidth`):

```
compute   = 2 * linear_params * (prefill_tokens + decode_tokens) / (P * compute_eff)
memory    = 2 * linear_params / (B * memory_eff)                  # weights read once per step
linear    = (compute^p + memory^p)^(1/p)                          # p = roofline_p; inf: max()
attention = 4 * d_model * n_layers * prefill_attn_pairs / (P * attention_eff)   # compute-bound
          + kv_bytes_per_token * decode_kv_tokens / (B * memory_eff)           # memory-bound
step_time = linear + attention + step_overhead_s + request_overhead_s * num_requests   (0 if no token)
step_flops = 2 * linear_params * tokens + 4 * d_model * n_layers * (prefill_attn_pairs + decode_kv_tokens)
kv_bytes_per_token = 2 * n_layers * n_kv_heads * head_dim * 2
```

`linear_params` is every weight but the input embedding (a lookup), LM head included. The linear
layers run as one pass over all the step's tokens: a roofline of compute and weight reads. The
textbook roofline is `max(compute, memory)` (`roofline_p = inf`, the class default); the calibrated
presets use `p = 2`, which rounds the knee where real GEMMs are neither purely memory- nor
compute-bound (see the comparison below). Attention runs as separate kernels after the linear
layers, prefill attention compute-bound and decode attention bound by reading the KV cache, so the
parts add. Tensor parallelism divides every term by `tp`; its all-reduces are not modelled (the
profiles do not contain them).

## Hardware and models

| key | device | peak dense FP16 TFLOP/s | bandwidth GB/s | memory GiB |
|---|---|---|---|---|
{hw_rows}

Sources: NVIDIA A100 datasheet (SXM4 80GB: 312 TFLOPS FP16 tensor dense, 2,039 GB/s); NVIDIA H100
datasheet (SXM5: 989 TFLOPS FP16 tensor dense, 3.35 TB/s; Vidur's H100 weight reads reach
2.6 TB/s, so its profiles are of the SXM part). **A10G**: 24 GB GDDR6 at 600 GB/s like the A10, but
the A10's 125 TFLOPS FP16 tensor figure is not the A10G's: AWS's variant is reported at about
70 TFLOPS FP16 tensor (Baseten, "NVIDIA A10 vs A10G for ML model inference"; the half-rate FP32
accumulate of GA102 parts). We use 70: VTC's own A10G profile reaches 55-64 TFLOP/s on Llama-2-7B
prefill, 80-90% of 70 TFLOPS (50% of 125). Only reported MFU depends on this; step times use the
fitted `compute_eff * peak`.

Models: Llama-2-7B, 13B, 70B shapes from their Hugging Face configs; `n_params` is the exact count
(a test checks it against the shapes). Tensor parallel: 7B and 13B on 1 GPU, **70B on 4 GPUs**.
KV capacity = `(tp * memory * 0.9 - weight_bytes) / kv_bytes_per_token` (vLLM's
`gpu_memory_utilization` 0.9) unless the preset fixes it.

## Presets

| preset | hardware | model | cost model | KV tokens | max_running | max_batch_tokens | merge every |
|---|---|---|---|---|---|---|---|
{preset_rows}

The vLLM-like presets use vLLM's defaults (`max_num_seqs` 256, `max_num_batched_tokens` 2048 with
chunked prefill, block 16). `vtc-a10g-llama2-7b` is the VTC paper's engine (ALGORITHMS.md section 6;
VTC-artifact `fair_bench/launch_server.py`, `slora/server/api_server.py`): KV pool 10,000 tokens,
`batch_max_tokens = max(int(10000 / 6), max_req_total_len = 2048 + 1024) = 3072`,
`running_max_req_size` 1000, new requests merged every 10 decode steps.

## Fitted constants

| preset | TP | compute_eff | attention_eff | memory_eff | step_overhead ms | request_overhead us |
|---|---|---|---|---|---|---|
{const_rows}

How they were fitted (least squares on relative error, offsets constrained >= 0):

* **Linear layers** (`../shared/data/gpu-profiles/*_mlp.csv`, Vidur, MIT): measured linear time of
  a step = `n_layers * sum` of the per-layer operators' median times (`input_layernorm,
  attn_pre_proj, attn_rope, attn_post_proj, post_attention_layernorm, mlp_up_proj, mlp_act,
  mlp_down_proj, add`), rows at the preset's tensor-parallel degree, by `num_tokens` (1..4096).
  `memory_eff` = the four GEMMs' weight-read bandwidth at `num_tokens <= 8` over the datasheet
  bandwidth (a direct measurement: the max-roofline fit alone cannot tell bandwidth from a fixed
  overhead); then `compute_eff` and a fixed linear overhead on all rows, compared with the model
  without the LM head (not profiled):

| profile | compute_eff | memory_eff | linear overhead ms |
|---|---|---|---|
{lin}

  Rows are weighted by the spacing of `log(num_tokens)`, so that every factor of `num_tokens`
  counts the same: the profile has few small-`num_tokens` rows, but decode steps are small.
  The same fit with the textbook `max()` (`p = inf`) against `p = 2`, error median / p90:

| profile | max(): compute_eff / linear overhead | error with max() | error with p = 2 |
|---|---|---|---|
{knee}

* **Attention** (`a100_Llama-2-70b-hf_attention.csv`, one layer, TP 2, FlashAttention): prefill rows
  (`batch_size` 1, `prefill_chunk_size`, `kv_cache_size` = context before the chunk) give
  `attention_eff` = {attn["attention_eff"]} and a per-layer overhead of
  {1e6 * attn["prefill_overhead_layer_s"]:.1f} us; decode rows (`batch_size` requests of `kv_cache_size` KV
  tokens each), with the a100-llama2-70b linear fit's `memory_eff`, give a per-layer overhead of
  {1e6 * attn["decode_overhead_layer_s"]:.1f} us and a per-request overhead of
  {1e6 * attn["request_overhead_layer_s"]:.2f} us per layer. `step_overhead_s` = linear overhead +
  `n_layers` x the mean of the two per-layer attention overheads; `request_overhead_s` =
  `n_layers` x the per-request one (0: the kernels show no per-request cost). The A100 numbers
  serve every A100 preset; **no H100 attention profile exists**: H100 `attention_eff` assumes
  1.5x the A100's attention FLOP/s (FlashAttention-2's H100 vs A100 forward speedup),
  i.e. `{attn["attention_eff"]} * 1.5 * 312 / 989`.
* **A10G** (`a10g-llama2-7b`): fitted on the VTC artifact's A10G profile
  (`fair_bench/cost_profile.json`, Apache-2.0, embedded in the script): per (input x, output y),
  a batch of `bs = 10000 // (x + y)` requests prefilled in one step, then decoded y steps.
  `compute_eff` = {a["compute_eff"]}, step overhead {1000 * a["step_overhead_s"]:.3f} ms, per-request overhead
  {1e6 * a["request_overhead_s"]:.1f} us (S-LoRA's per-request work); `memory_eff` is the A100's measured
  {a["memory_eff"]} because every profiled step reads the weights once, so bandwidth and a fixed
  overhead cannot be told apart; `attention_eff` is the A100's (no A10G attention data).
* **13B** has no profile: its presets use the 7B constants of the same GPU.

## VTCProfileCostModel (vtc-a10g-llama2-7b)

VTC's fitted cost function, `Ying1123/VTC-artifact`, `slora/server/router/req_queue.py`,
`ReqQueue.cost_func_profile` (fitted by `fair_bench/profile_cost_function.py` on Llama-2-7B on an
A10G, 10,000-token pool, data `fair_bench/cost_profile.json`), in milliseconds for a request of
`x` input and `y` output tokens:

```
h(x, y) = 0.21001891 x + 0.10075395 y + 0.0039868 x y + 0.00324733 y^2 + 1.14601454
```

It is each request's share of the batch time when the pool is full. As a step time:
prefill `a x + e` per prefilling request, and the y-th output token `b + c x + d (2y - 1)`:

```
step_time = max(min_step_s, (0.21001891 * prefill_tokens + 1.14601454 * (num_requests - decode_tokens)
                + 0.10075395 * decode_tokens + k * decode_kv_tokens) / 1000)
```

A step knows only the total KV length, so the prompt and generated context terms (`c` = 0.0040
vs `2d` = 0.0065 ms/token) become one `k` = {vtc.kv_coefficient_ms:.6f} ms per KV token: the
least-squares match of `c x y + d y^2` by `k * sum (x + i - 1)` over VTC's profiled grid.
`prefill_attn_pairs` is ignored (no quadratic prompt term in the fit). Because the costs are
amortised over a full pool, a nearly empty batch would cost almost nothing, so `min_step_s` =
{1000 * vtc.min_step_s:.2f} ms, the A10G roofline's weight-read time, is the floor.
`request_cost_ms(x, y)` returns `h` itself, for a VTC scheduler that charges with it.

## Error against the measurements

Relative error `|model / measured - 1|`, **median / p90 (n rows)**, of the presets' constants:
linear = Vidur linear layers at the preset's GPU, model and TP (model + the linear fit's overhead);
prefill / decode attention = Vidur's 70B A100 TP-2 attention kernels, one layer (model + the
per-layer overheads); VTC A10G = the VTC profile's prefill steps and whole decode phases;
VTC h(x,y) = VTC's formula against its own per-request data. `-`: no measurement applies.

{table}

## Known gaps

* Not in any profile, so not modelled: tensor-parallel all-reduces, the engine's CPU time per step
  (scheduling, sampling, detokenising) and per request on vLLM (`request_overhead_s` = 0 for A100
  and H100: the kernel data show none).
* Prefill attention is the weakest part (p90 above 30%): FlashAttention's efficiency grows with
  chunk and context length, a constant efficiency cannot follow it; it is a small share of a step
  next to the linear layers.
* No data at all for 13B (uses 7B constants), for attention on H100 (assumed speedup) or A10G
  (A100's efficiency), and for the A10G's memory bandwidth (A100's efficiency).
* The A10G tensor peak (70 vs 125 TFLOPS) could not be confirmed from an NVIDIA datasheet offline.
"""


if __name__ == "__main__":
    sys.exit(main())
