"""The audit's figures, drawn with matplotlib (no pyplot state) into PNG bytes.

Colours are fixed per run (scheduler) and per client across every figure of a
report: each name gets a colour by its position among the sorted names.  Client
names lose their common prefix on the axes (the prefix is in the axis label).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from reports.audit import AuditResult

DPI = 100
LATENCY_TITLES = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "end-to-end latency", "queue": "queueing delay"}
COUNTER_TITLES = {
    "ufc": "User Fairness Counter (UFC)",
    "rfc": "Resource Fairness Counter (RFC)",
    "hf": "Holistic Fairness (HF)",
}


@dataclass(frozen=True)
class Plot:
    """One rendered figure; ``run`` is None for the figures that compare runs."""

    key: str
    title: str
    caption: str
    run: str | None
    png: bytes


def palette(names) -> dict[str, str]:
    """A hex colour per name, by its position among the sorted distinct names."""
    names = sorted(set(names))
    if len(names) <= 10:
        colours = colormaps["tab10"].colors
    else:
        colours = colormaps["tab20"].colors + colormaps["tab20b"].colors + colormaps["tab20c"].colors
    return {name: to_hex(colours[i % len(colours)]) for i, name in enumerate(names)}


def run_colours(result: AuditResult) -> dict[str, str]:
    return palette(run["name"] for run in result.runs)


def client_colours(result: AuditResult) -> dict[str, str]:
    return palette(client for run in result.runs for client in run["clients"])


def _prefix(names) -> str:
    """The names' common prefix, cut after its last separator ('' when that would leave a name empty)."""
    names = list(names)
    common = os.path.commonprefix(names)
    prefix = common[: max(common.rfind(sep) for sep in "-_./: ") + 1]
    return "" if prefix in names else prefix


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "run"


def _png(fig: Figure) -> bytes:
    """The figure as a 256-colour PNG (a third of the size of matplotlib's, no visible difference)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    out = io.BytesIO()
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, "png", optimize=True)
    return out.getvalue()


def render(result: AuditResult) -> list[Plot]:
    """Every figure of the report: the comparisons first, then each run's own."""
    runs, clients = run_colours(result), client_colours(result)
    prefix = _prefix(clients)
    plots = [_difference(result, runs), _latency(result, runs)]
    for i, (summary, series) in enumerate(zip(result.runs, result.series)):
        key = f"{i + 1}-{_slug(summary['name'])}"
        plots.append(_service(key, summary, series, clients, prefix))
        plots.append(_ttft(key, summary, series, clients, prefix))
        if series["counters"] is not None:
            plots.append(_counters(key, summary, series["counters"], clients))
    return plots


def _difference(result: AuditResult, colours: dict) -> Plot:
    fig = Figure(figsize=(10, 8), layout="constrained")
    pair, acc, window = fig.subplots(3, 1, sharex=True)
    for summary, series in zip(result.runs, result.series):
        colour, name = colours[summary["name"]], summary["name"]
        for ax, key in ((pair, "pair_diff"), (acc, "acc_diff")):
            ax.plot(series[key].index, series[key].to_numpy(), color=colour, lw=1.2, label=name)
        points = series["windowed"]
        window.plot(points.index, points.to_numpy(), color=colour, lw=1.2, marker="o", ms=3, label=name)
    bounds = {run["bound"]["value"] for run in result.runs} - {None}
    for ax in (pair, acc):
        if len(bounds) == 1:
            ax.axhline(next(iter(bounds)), color="black", ls="--", lw=1, label="VTC bound")
        else:
            for run in (r for r in result.runs if r["bound"]["value"] is not None):
                ax.axhline(
                    run["bound"]["value"], color=colours[run["name"]], ls="--", lw=1, label=f"{run['name']} bound"
                )
        ax.set_ylabel("service (tokens)")
    pair.set_title("Pair service difference |W_f - W_g| over common backlogged intervals (what the VTC bound bounds)")
    pair.legend(loc="upper left", fontsize=8)
    acc.set_title("Accumulated service difference among backlogged clients")
    window.set_title("Windowed service difference D(x), 60-s windows")
    window.set_ylabel("service rate (tokens/s)")
    window.set_xlabel("time (s)")
    for ax in (pair, acc, window):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    caption = (
        "Top: at each time t, the largest |W_f - W_g|, W the service over an interval [t1, t2] up to t in which "
        "both clients stayed backlogged; dashed: the VTC bound 2 max(w_p L_input, w_q M). Middle: max minus min of the "
        "cumulative service (from the 30-s warm-up) of the clients backlogged at each time; the bound is drawn "
        "for reference, it does not apply to clients that were not backlogged throughout. Bottom: D(x) of the "
        "VTC revision tables at the artifact's 19 window centres."
    )
    return Plot("service-difference", "Service difference over time", caption, None, _png(fig))


def _latency(result: AuditResult, colours: dict) -> Plot:
    fig = Figure(figsize=(10, 6.2), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (metric, title) in zip(axes, LATENCY_TITLES.items()):
        for summary, series in zip(result.runs, result.series):
            cdf = series["latency_cdf"][metric]
            ax.plot(cdf.to_numpy(), cdf.index, color=colours[summary["name"]], lw=1.4, label=summary["name"])
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("seconds (log)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(loc="lower right", fontsize=8)
    caption = "Distribution (CDF) of each latency over all finished requests; zeros are off the log axis."
    return Plot("latency", "Latency distributions", caption, None, _png(fig))


def _client_axis(ax, names: list[str], prefix: str, most: int = 40) -> None:
    """Client names (without their common prefix) under the bars, at most ``most`` of them."""
    every = max(1, -(-len(names) // most))
    ticks = range(0, len(names), every)
    ax.set_xticks(ticks, [names[i][len(prefix) :] for i in ticks], rotation=90, fontsize=7)
    ax.set_xlabel(f"client ({prefix}…)" if prefix else "client")


def _service(key: str, summary: dict, series: dict, colours: dict, prefix: str) -> Plot:
    names = list(summary["clients"])
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    bars, curves = fig.subplots(1, 2, width_ratios=(1.1, 1))
    x = np.arange(len(names))
    colour = [colours[n] for n in names]
    bars.bar(x, [summary["clients"][n]["demanded"] for n in names], 0.8, color=colour, alpha=0.3, edgecolor=colour)
    bars.bar(x, [summary["clients"][n]["service"] for n in names], 0.5, color=colour)
    _client_axis(bars, names, prefix)
    bars.set_ylabel("service (tokens)")
    bars.set_title("Received (solid) vs demanded (light), whole run")
    t = series["received"].index.to_numpy()
    for kind, style in (("received", {"linewidths": 1.2}), ("demanded", {"linewidths": 0.8, "linestyles": "--"})):
        lines = [np.c_[t, series[kind][name].to_numpy()] for name in names]
        curves.add_collection(LineCollection(lines, colors=colour, **style))  # one artist: fast with many clients
    curves.autoscale()
    curves.legend(
        [Line2D([], [], color="black"), Line2D([], [], color="black", ls="--")],
        ["received", "demanded"],
        loc="upper left",
        fontsize=8,
    )
    curves.set_title("Cumulative service by client")
    curves.set_xlabel("time (s)")
    for ax in (bars, curves):
        ax.grid(alpha=0.3)
    caption = (
        "Service is w_p prompt + w_q output tokens over the client's weight; demanded counts every request at its "
        "arrival, rejected ones included; received counts finished requests as they generate."
    )
    return Plot(
        f"{key}-service", f"{summary['name']}: service received vs demanded", caption, summary["name"], _png(fig)
    )


def _ttft(key: str, summary: dict, series: dict, colours: dict, prefix: str) -> Plot:
    names = list(summary["clients"])
    quantiles = series["ttft_by_client"]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax = fig.subplots()
    boxes = [(i, n) for i, n in enumerate(names) if n in quantiles.index]
    stats = [dict(zip(("whislo", "q1", "med", "q3", "whishi"), quantiles.loc[n].to_numpy())) for _, n in boxes]
    if stats:
        drawn = ax.bxp(
            stats,
            positions=[i for i, _ in boxes],
            showfliers=False,
            patch_artist=True,
            widths=0.6,
            medianprops={"color": "black"},
        )
        for patch, (_, n) in zip(drawn["boxes"], boxes):
            patch.set(facecolor=colours[n], alpha=0.8)
    starving = [summary["clients"][n]["starvation_s"] for n in names]
    ax.scatter(range(len(names)), starving, marker="x", color="black", zorder=3)
    if stats:
        ax.set_yscale("log")
    _client_axis(ax, names, prefix)
    ax.set_ylabel("seconds (log)")
    ax.set_title("TTFT by client (box p25-p75, whiskers p1-p99) and starvation (x)")
    ax.grid(alpha=0.3, axis="y", which="both")
    caption = (
        "Starvation: the longest interval in which the client had a request waiting and none of its requests "
        "was admitted."
    )
    return Plot(f"{key}-ttft", f"{summary['name']}: TTFT and starvation by client", caption, summary["name"], _png(fig))


COUNTER_LINES = 4  # clients drawn one by one in the counter figure; beyond that, the others as a band


def _last_at(times: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each grid time's latest value at or before it (NaN before the first)."""
    k = np.searchsorted(times, grid, side="right") - 1
    return np.where(k >= 0, values[np.maximum(k, 0)], np.nan)


def counter_clients(counters, most: int = COUNTER_LINES) -> list[str]:
    """The clients the counter figure draws one by one: all of them up to ``most``, else the
    ``most // 2`` with the lowest final UFC and the rest of ``most`` with the highest (lowest first)."""
    final = counters.sort_values("time_s", kind="stable").groupby("client_id", sort=True)["ufc"].last()
    named = [str(c) for c in final.sort_values(kind="stable").index]
    return named if len(named) <= most else named[: most // 2] + named[-(most - most // 2) :]


def _counters(key: str, summary: dict, counters, colours: dict) -> Plot:
    fig = Figure(figsize=(10, 3.9), layout="constrained")
    axes = fig.subplots(1, 3)
    ordered = counters.sort_values("time_s", kind="stable")
    grid = np.linspace(ordered["time_s"].min(), ordered["time_s"].max(), 300) if len(ordered) else np.empty(0)
    by_client = dict(tuple(ordered.groupby("client_id", sort=True)))
    named = counter_clients(ordered)
    for ax, column in zip(axes, COUNTER_TITLES):
        curves = {
            c: _last_at(rows["time_s"].to_numpy(), rows[column].to_numpy(np.float64, na_value=np.nan), grid)
            for c, rows in by_client.items()
        }
        if len(curves) > len(named):
            stack = np.vstack(list(curves.values()))
            seen = np.isfinite(stack).any(axis=0)
            low = np.where(seen, np.nanmin(np.where(np.isfinite(stack), stack, np.inf), axis=0), np.nan)
            high = np.where(seen, np.nanmax(np.where(np.isfinite(stack), stack, -np.inf), axis=0), np.nan)
            ax.fill_between(grid, low, high, color="grey", alpha=0.25, lw=0, label=f"all {len(curves)} clients")
        for client in named:
            ax.plot(grid, curves[client], color=colours.get(client, "grey"), lw=1.1, label=client)
    for ax, title in zip(axes, COUNTER_TITLES.values()):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7), fontsize=8, frameon=False)
    caption = "Equinox's per-client counters as the scheduler logged them (counters.parquet)"
    caption += (
        f"; the {len(named)} clients with the lowest and highest final UFC drawn, the grey band spans all clients."
        if len(by_client) > len(named)
        else "."
    )
    return Plot(f"{key}-counters", f"{summary['name']}: fairness counters", caption, summary["name"], _png(fig))
