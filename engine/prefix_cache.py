"""Automatic prefix caching for the simulated engine, as vLLM v1's KV-cache manager does it.

A full KV block of a prompt has a key; a request admitted later whose first blocks have keys
already in the cache takes those blocks (shared, reference-counted) instead of computing them.
A block freed by its last holder stays cached in the free queue until it is handed out again:
free blocks are handed out from the front of one FIFO queue (never-used blocks first, then in the
order they were freed), and a request frees its blocks tail first, so a prompt's first block is
evicted last (vLLM: ``FreeKVCacheBlockQueue``, ``KVCacheManager.free``).

Block keys (``block_keys``), in order of preference:

* ``prefix_hashes`` (Mooncake's ``hash_ids``): one hash per ``hash_tokens`` (512) prompt tokens;
  the hashes are chained (a block's key names its whole prefix) and each engine block takes the
  key of the hash group holding its last token, with its index;
* ``conversation_id``: the turns of one conversation are one token stream (a turn's prompt is the
  whole history before it, as the ShareGPT and LMSYS loaders count it), so block ``b`` of every
  turn has the key ``(conversation, b)``;
* prompt text: a hash chain over the tokens of each block (the workload's tokenizer).

Only full blocks of the prompt have keys (vLLM caches full blocks; the output a replayed trace
asks for is not the text a real engine would generate, so output blocks are never shared).

The engine keeps only a count of free blocks (``free``) and allocates by decrementing it; the
queue catches up lazily (``sync``): in a FIFO queue the k-th block handed out is the k-th one put
in, however pushes and pops interleave, so popping ``live - free`` blocks from the front just
before a lookup evicts exactly the blocks vLLM would have evicted by then.
"""

from __future__ import annotations

from collections import deque

import pyarrow as pa

from traces.errors import InputError

_CONV = 0x5EED  # salts keeping the three key schemes apart
_TEXT = 0x7E47


def _hash_chain(values, salt: int) -> list[int]:
    out, h = [], salt
    for v in values:
        h = hash((h, v))
        out.append(h)
    return out


def block_keys(workload: pa.Table, block_size: int, hash_tokens: int = 512, tokenizer=None):
    """Per request: ``(chain, group_tokens, keyable_blocks)`` or None (no key), and whether any has keys.

    Block ``b`` of request ``r`` (``b < keyable_blocks``) has key
    ``(chain[((b + 1) * block_size - 1) // group_tokens], b)``.
    """
    n = workload.num_rows
    prompt = workload.column("prompt_tokens").to_numpy()
    keys: list = [None] * n
    hashes = workload.column("prefix_hashes") if "prefix_hashes" in workload.column_names else None
    if hashes is not None and not pa.types.is_list(hashes.type) and not pa.types.is_large_list(hashes.type):
        raise InputError(f"column 'prefix_hashes' must be a list of integers, got {hashes.type}", source="workload")
    if hashes is not None and hashes.null_count < n:
        if not pa.types.is_integer(hashes.type.value_type):
            raise InputError(f"column 'prefix_hashes' must be a list of integers, got {hashes.type}", source="workload")
        for r, h in enumerate(hashes.to_pylist()):
            if h:
                usable = min(len(h), -(-int(prompt[r]) // hash_tokens))
                full = min(int(prompt[r]) // block_size, usable * hash_tokens // block_size)
                if full:
                    keys[r] = (_hash_chain(h[:usable], 0), hash_tokens, full)
    conv = workload.column("conversation_id") if "conversation_id" in workload.column_names else None
    if conv is not None and conv.null_count < n:
        for r, c in enumerate(conv.to_pylist()):
            if c is not None and keys[r] is None and prompt[r] >= block_size:
                keys[r] = ([hash((_CONV, c))], 1 << 62, int(prompt[r]) // block_size)
    text = workload.column("prompt") if "prompt" in workload.column_names else None
    if text is not None and text.null_count < n:
        encode = _encoder(workload, tokenizer)
        for r, t in enumerate(text.to_pylist()):
            if t is None or keys[r] is not None:
                continue
            ids = encode(t)[: int(prompt[r])]
            full = len(ids) // block_size
            if full:
                blocks = (tuple(ids[i * block_size : (i + 1) * block_size]) for i in range(full))
                keys[r] = (_hash_chain(blocks, _TEXT), block_size, full)
    return keys, any(k is not None for k in keys)


def _encoder(workload: pa.Table, tokenizer):
    """The token encoder for prompt texts: ``tokenizer`` or the one the workload was counted with."""
    if tokenizer is None:
        from traces.schema import workload_metadata
        from traces.tokenizer import DEFAULT_TOKENIZER, get_tokenizer

        meta = workload_metadata(workload)
        name = meta.get("tokenizer") or meta.get("options", {}).get("tokenizer") or DEFAULT_TOKENIZER
        try:
            tokenizer = get_tokenizer(name if isinstance(name, str) else DEFAULT_TOKENIZER)
        except InputError:
            tokenizer = get_tokenizer(DEFAULT_TOKENIZER)
    return tokenizer.encode


class PrefixCache:
    """Cached blocks, reference counts and the free queue (see the module docstring)."""

    def __init__(self, total_blocks: int, block_size: int, keys: list) -> None:
        self.bs = block_size
        self.keys = keys  # per row: (chain, group_tokens, keyable_blocks) or None
        self.blocks: dict[tuple, list[int]] = {}  # key -> [holders, queue token (0: not in the queue)]
        self.queue: deque[list] = deque([[total_blocks, None, 0]])  # [count, key, token]; key None: plain
        self.live = total_blocks  # blocks in the queue not yet handed out (== the engine's free after sync)
        # row -> per registered block, in order: its key, or None for a private copy of a cached block
        self.held: dict[int, list[tuple | None]] = {}
        self.registered: dict[int, int] = {}  # row -> blocks examined for registration
        self._token = 0
        self._found = None  # (row, keys) of the last lookup
        self.hit_blocks = 0  # blocks served from the cache, all admissions
        self.evicted = 0

    def key(self, row: int, b: int) -> tuple:
        chain, group, _ = self.keys[row]
        return (chain[((b + 1) * self.bs - 1) // group], b)

    def sync(self, free: int) -> None:
        """Hand out from the front of the queue the blocks the engine allocated since the last sync."""
        k = self.live - free
        if k <= 0:
            return
        self._found = None
        queue, blocks = self.queue, self.blocks
        self.live = free
        while k:
            entry = queue[0]
            key = entry[1]
            if key is None:
                take = min(entry[0], k)
                entry[0] -= take
                k -= take
                if not entry[0]:
                    queue.popleft()
                continue
            queue.popleft()
            state = blocks.get(key)
            if state is not None and state[1] == entry[2]:  # still free and cached: evicted now
                del blocks[key]
                self.evicted += 1
                k -= 1

    def lookup(self, row: int, limit: int) -> int:
        """Leading blocks of ``row`` (at most ``limit``) whose keys are cached now; call ``sync`` first."""
        entry = self.keys[row]
        if entry is None:
            return 0
        chain, group, keyable = entry
        bs, blocks = self.bs, self.blocks
        found = []
        for h in range(min(limit, keyable)):
            key = (chain[((h + 1) * bs - 1) // group], h)
            if key not in blocks:
                break
            found.append(key)
        self._found = (row, found)  # for revived and acquire, until the cache changes
        return len(found)

    def _keys(self, row: int, h: int) -> list:
        found = self._found
        if found is not None and found[0] == row and len(found[1]) >= h:
            return found[1][:h]
        return [self.key(row, b) for b in range(h)]

    def revived(self, row: int, h: int) -> int:
        """How many of ``row``'s first ``h`` cached blocks are free now (taking them uses free blocks)."""
        blocks = self.blocks
        return sum(1 for key in self._keys(row, h) if blocks[key][0] == 0)

    def acquire(self, row: int, h: int) -> int:
        """``row`` is admitted holding its first ``h`` cached blocks; returns how many were free."""
        if self.keys[row] is None:
            return 0
        blocks = self.blocks
        held = self._keys(row, h)
        self._found = None
        revived = 0
        for key in held:
            state = blocks[key]
            if state[0] == 0:
                revived += 1
                state[1] = 0  # its queue entry is dead
            state[0] += 1
        self.live -= revived
        self.held[row] = held
        self.registered[row] = h
        self.hit_blocks += h
        return revived

    def register(self, row: int, computed: int, free: int) -> None:
        """``row`` has computed ``computed`` tokens (the engine has ``free`` blocks): its full
        prompt blocks among them become cached."""
        done = self.registered.get(row)
        if done is None:
            return
        full = min(computed // self.bs, self.keys[row][2])
        if full <= done:
            return
        self.sync(free)  # a key evicted by this step's allocations is no longer cached
        self._found = None
        blocks = self.blocks
        held = self.held[row]
        chain, group, _ = self.keys[row]
        bs = self.bs
        for b in range(done, full):
            key = (chain[((b + 1) * bs - 1) // group], b)
            if key in blocks:  # computed by another request meanwhile: this copy stays private
                held.append(None)
            else:
                blocks[key] = [1, 0]
                held.append(key)
        self.registered[row] = full

    def release(self, row: int, total: int) -> int:
        """``row`` frees its ``total`` blocks (it finished or was preempted); returns how many
        become free (cached blocks other requests still hold stay in use)."""
        held = self.held.pop(row, None)
        self.registered.pop(row, None)
        private = total - (len(held) if held else 0)  # the blocks after the registered ones
        queue = self.queue
        if private:
            queue.append([private, None, 0])
        freed = private
        if held:
            blocks = self.blocks
            for key in reversed(held):  # tail first: the prompt's first block is evicted last
                if key is None:  # a private copy of a cached block
                    queue.append([1, None, 0])
                    freed += 1
                    continue
                state = blocks[key]
                state[0] -= 1
                if state[0] == 0:
                    self._token += 1
                    state[1] = self._token
                    queue.append([1, key, self._token])
                    freed += 1
        self.live += freed
        return freed
