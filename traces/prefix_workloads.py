"""Prefix-heavy workloads: ``prefix_hashes`` for multi-turn conversations, and shared system prompts.

A turn of a multi-turn conversation (``turns="all"``) counts every earlier message in its prompt,
so turn k's prompt is a prefix of turn k+1's: the first ``prompt_tokens`` tokens of one token
sequence per conversation.  ``with_prefix_hashes`` gives each request one hash per
``block``-token block of its prompt, as Mooncake's ``hash_ids`` do (512 tokens a hash; the last
block may be partial), chained so that equal hashes mean equal prefixes:

* a full block inside a system prompt hashes ``(system prompt, block index)``;
* a full block after it hashes ``(conversation, block index)``, chained on the blocks before;
* a partial last block hashes ``(conversation, prompt length)``: only the same turn shares it.

So turns of one conversation share their history's full blocks (reuse within a client), and the
clients given the same system prompt share its blocks (reuse across clients).

**System prompts (synthetic).**  ``SystemPrompts(clients=4, prompts=2, tokens=2048)`` picks the
first ``clients`` clients in sorted order and gives client i system prompt ``i % prompts``:
``tokens`` more prompt tokens at the front of every one of its requests (its prompt text, when
kept, is unchanged).  The spec string ``"4:2:2048"`` says the same (``parse_system_prompts``).
Nothing here is real text: the prompts are named, not written.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from traces.errors import InputError
from traces.schema import WORKLOAD_SCHEMA, validate, with_metadata, workload_metadata

PREFIX_BLOCK = 512  # tokens per hash, as Mooncake's hash_ids
METADATA = "prefix_hashes"  # key of the provenance in the workload metadata


@dataclass(frozen=True)
class SystemPrompts:
    """``clients`` clients (the first in sorted order) share ``prompts`` system prompts of ``tokens`` tokens."""

    clients: int = 4
    prompts: int = 2
    tokens: int = 2048

    def __post_init__(self):
        for name in ("clients", "prompts", "tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number >= 1, got {value!r}", source="--system-prompts")


def parse_system_prompts(spec: str) -> SystemPrompts:
    """``"CLIENTS:PROMPTS:TOKENS"``, e.g. ``"4:2:2048"``: four clients, two prompts of 2,048 tokens."""
    parts = str(spec).split(":")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"expected CLIENTS:PROMPTS:TOKENS (e.g. 4:2:2048), got {spec!r}", source="--system-prompts")
    return SystemPrompts(*(int(p) for p in parts))


def _hash(previous: int, *key) -> int:
    """A stable 64-bit hash of ``key`` chained on ``previous`` (a signed int64, as the column holds)."""
    digest = hashlib.blake2b(repr((previous, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def prompt_block_hashes(
    conversation: str, prompt_tokens: int, block: int = PREFIX_BLOCK, system: int | None = None, system_tokens: int = 0
) -> list[int]:
    """The hashes of a prompt of ``prompt_tokens`` tokens: ``system_tokens`` of system prompt
    ``system`` (None: none), then conversation ``conversation``'s token sequence."""
    out: list[int] = []
    previous = 0
    full = prompt_tokens // block
    for b in range(full):
        if system is not None and (b + 1) * block <= system_tokens:
            previous = _hash(previous, "system", system, b)
        else:
            previous = _hash(previous, "conversation", conversation, b)
        out.append(previous)
    if prompt_tokens % block:
        out.append(_hash(previous, "tail", conversation, prompt_tokens))
    return out


def with_prefix_hashes(
    table: pa.Table, block: int = PREFIX_BLOCK, system_prompts: SystemPrompts | None = None
) -> pa.Table:
    """``table`` with ``prefix_hashes`` from its conversations (see the module docstring), and with
    shared system prompts added to the prompts of ``system_prompts.clients`` clients."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise InputError(f"must be a whole number of tokens >= 1, got {block!r}", source="--prefix-hashes")
    n = table.num_rows
    clients = table["client_id"].to_pylist()
    prompt = table["prompt_tokens"].to_numpy().astype(np.int64)
    conversation = table["conversation_id"].to_pylist()
    ids = table["request_id"].to_pylist()
    system_of: dict[str, int] = {}
    if system_prompts is not None:
        chosen = sorted(set(clients))[: system_prompts.clients]
        system_of = {c: i % system_prompts.prompts for i, c in enumerate(chosen)}
        extra = system_prompts.tokens
        prompt = prompt + np.array([extra if c in system_of else 0 for c in clients], dtype=np.int64)
    hashes = []
    for i in range(n):
        conv = conversation[i] if conversation[i] is not None else f"request-{ids[i]}"
        system = system_of.get(clients[i])
        tokens = system_prompts.tokens if system is not None else 0
        hashes.append(prompt_block_hashes(conv, int(prompt[i]), block, system, tokens))
    columns = {name: table[name] for name in table.column_names}
    columns["prompt_tokens"] = pa.array(prompt, type=pa.int64())
    columns["prefix_hashes"] = pa.array(hashes, type=pa.list_(pa.int64()))
    out = pa.Table.from_pydict(columns, schema=WORKLOAD_SCHEMA)
    info = {
        **workload_metadata(table),
        METADATA: {
            "block_tokens": block,
            "from": "conversation_id and prompt_tokens (turns='all' prompts hold the whole history)",
            "system_prompts": None if system_prompts is None else {**asdict(system_prompts), "assigned": system_of},
        },
    }
    out = with_metadata(out, info)
    validate(out, source="prefix workload")
    return out


def prefix_reuse(table: pa.Table, block: int | None = None) -> dict:
    """How much of the workload's prompts an unbounded prefix cache could serve: the share of prompt
    tokens in full blocks whose hash an earlier request (by arrival) of the same client had, of
    only another client; and the share in blocks that more than one client uses (what a bounded
    cache keeps hot for several clients, such as a shared system prompt)."""
    block = block or workload_metadata(table).get(METADATA, {}).get("block_tokens", PREFIX_BLOCK)
    seen: dict[int, set] = {}
    total = within = across = 0
    for client, prompt, hashes in zip(
        table["client_id"].to_pylist(), table["prompt_tokens"].to_pylist(), table["prefix_hashes"].to_pylist()
    ):
        total += prompt
        for b, h in enumerate(hashes or []):
            if (b + 1) * block > prompt:
                break
            owners = seen.setdefault(h, set())
            if client in owners:
                within += block
            elif owners:
                across += block
            owners.add(client)
    shared = 0
    for prompt, hashes in zip(table["prompt_tokens"].to_pylist(), table["prefix_hashes"].to_pylist()):
        shared += block * sum(1 for b, h in enumerate((hashes or [])[: prompt // block]) if len(seen[h]) > 1)
    return {
        "prompt_tokens": total,
        "reusable_within_client": within / total if total else 0.0,
        "reusable_across_clients": across / total if total else 0.0,
        "in_blocks_shared_by_clients": shared / total if total else 0.0,
    }
