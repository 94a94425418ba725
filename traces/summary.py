"""What a user checks before a replay: ``summarize`` a workload, ``plot_workload`` it to a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traces.schema import workload_metadata

PERCENTILES = (50, 90, 99)
PEAK_WINDOW_S = 60.0


def summarize(table: pa.Table) -> dict:
    """Rows, clients, duration and rates, length percentiles, per-client counts, provenance."""
    arrival = table["arrival_s"].to_numpy()
    duration = float(arrival.max() - arrival.min()) if len(arrival) else 0.0
    window = min(PEAK_WINDOW_S, duration) or 1.0
    bins = np.floor((arrival - arrival.min()) / window).astype(np.int64)
    clients, counts = np.unique(np.asarray(table["client_id"].to_pylist(), dtype=object), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    lengths = {}
    for name in ("prompt_tokens", "output_tokens"):
        values = table[name].to_numpy()
        lengths[name] = {
            "mean": float(values.mean()),
            **{f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES},
            "max": int(values.max()),
        }
    conversations = table["conversation_id"].drop_null()
    meta = workload_metadata(table)
    if meta.get("format") == "canonical" and "upstream" in meta:
        meta = meta["upstream"]  # a file read back: its own provenance
    return {
        "rows": table.num_rows,
        "clients": len(clients),
        "duration_s": duration,
        "mean_rate": table.num_rows / duration if duration else float("inf"),
        "peak_rate": float(np.bincount(bins).max() / window),
        "peak_window_s": window,
        "lengths": lengths,
        "conversations": len(set(conversations.to_pylist())) if len(conversations) else 0,
        "with_prefix_hashes": table.num_rows - table["prefix_hashes"].null_count,
        "prefix_blocks": _prefix_blocks(table),
        "per_client": {str(clients[k]): int(counts[k]) for k in order},
        "provenance": meta,
    }


def _prefix_blocks(table: pa.Table) -> dict | None:
    """Prefix-block hashes (Mooncake's hash_ids): how many, how many distinct, and the share of
    blocks that repeat an earlier one (what a prefix cache could serve); None without hashes."""
    hashes = table["prefix_hashes"]
    if hashes.null_count == table.num_rows:
        return None
    flat = pc.list_flatten(hashes).to_numpy()
    distinct = int(np.unique(flat).size)
    total = int(flat.size)
    return {"total": total, "distinct": distinct, "repeated_fraction": 1 - distinct / total if total else 0.0}


def plot_workload(table: pa.Table, path) -> Path:
    """A PNG: requests per second over time, and the prompt and output length histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrival = table["arrival_s"].to_numpy()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    span = max(float(arrival.max()), 1.0)
    width = max(span / 100, 1.0)
    counts, edges = np.histogram(arrival, bins=np.arange(0, span + width, width))
    axes[0].step(edges[:-1], counts / width, where="post")
    axes[0].set(title="arrivals", xlabel="time (s)", ylabel=f"requests/s ({width:.3g} s bins)")
    for ax, name in zip(axes[1:], ("prompt_tokens", "output_tokens")):
        values = table[name].to_numpy()
        ax.hist(values, bins=np.geomspace(1, max(values.max(), 2), 50))
        ax.set(title=name.replace("_", " "), xlabel="tokens", ylabel="requests", xscale="log")
    fig.suptitle(f"{table.num_rows} requests, {len(set(table['client_id'].to_pylist()))} clients")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
