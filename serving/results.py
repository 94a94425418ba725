"""What the real-engine replays share: the workload record and a requests table in workload order."""

from __future__ import annotations

import pyarrow as pa

from engine.replay import fingerprint
from traces.result_schemas import REQUEST_SCHEMA
from traces.schema import workload_metadata

# Columns a replay takes from the workload rather than from the engine's log.
WORKLOAD_COLUMNS = ("request_id", "client_id", "arrival_s", "prompt_tokens", "output_tokens", "weight",
                    "conversation_id", "prompt")  # fmt: skip


def workload_record(workload: pa.Table, name: str) -> dict:
    """run.json's ``workload`` entry, as the simulator's replay writes it."""
    return {
        "name": name,
        "requests": workload.num_rows,
        "clients": len(set(workload.column("client_id").to_pylist())),
        "fingerprint": fingerprint(workload),
        "provenance": workload_metadata(workload),
    }


def requests_in_workload_order(workload: pa.Table, logged: pa.Table, scheduler: str) -> pa.Table:
    """One row per workload request: its columns, plus what ``logged`` (keyed by request_id) says
    happened to it; a request the log does not have was never served (``rejected``)."""
    by_id = {rid: i for i, rid in enumerate(logged.column("request_id").to_pylist())}
    log_cols = {name: logged.column(name).to_pylist() for name in REQUEST_SCHEMA.names}
    out: dict[str, list] = {name: [] for name in REQUEST_SCHEMA.names}
    work = {name: workload.column(name).to_pylist() for name in WORKLOAD_COLUMNS}
    for k, rid in enumerate(work["request_id"]):
        i = by_id.get(rid)
        for name in REQUEST_SCHEMA.names:
            if name in WORKLOAD_COLUMNS:
                out[name].append(work[name][k])
            elif name == "scheduler":
                out[name].append(scheduler)
            elif i is not None:
                out[name].append(log_cols[name][i])
            elif name == "status":
                out[name].append("rejected")
            elif name in ("generated_tokens", "preemptions"):
                out[name].append(0)
            else:
                out[name].append(None)
    return pa.Table.from_pydict(out, schema=REQUEST_SCHEMA)
