"""A deliberately plain engine, one request object at a time: the oracle the simulator's
vectorised steps are checked against (tests/test_simulator.py).

Same rules as ``engine.simulator`` (vLLM v1 continuous batching, ALGORITHMS.md section 8), written
as the obvious loops: schedule the running requests in admission order (stall-free: decodes
first), preempting the most recently admitted by recompute when a block is missing; then admit
while the batch has room.  No fast-forward, no arrays.  Returns per-request and per-step rows.

Prefix caching is modelled block by block: every KV block is an object with a reference count
and (once its prompt tokens are computed) a key; free blocks sit in one FIFO queue (an ordered
dict, never-used blocks first) from whose front new blocks are taken, evicting the key of a
cached one; a request frees its blocks tail first.  The simulator keeps only a count of free
blocks and catches its queue up lazily (engine/prefix_cache.py): this is the check that it comes
out the same.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.cost_model import StepCost
from engine.feedback import Step, Tokens
from engine.prefix_cache import block_keys
from engine.simulator import EngineConfig, reject_reasons
from traces.request import Request
from traces.schema import column_lists


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def replay(workload, config: EngineConfig, cost, policy) -> tuple[list[tuple], list[tuple]]:
    bs = config.block_size
    columns = column_lists(workload)
    reqs = [Request(*row) for row in zip(*columns)]
    reasons = reject_reasons(columns[3], columns[4], config)
    keys = [None] * len(reqs)
    if config.prefix_caching:
        keys, _ = block_keys(workload, bs, config.prefix_hash_tokens)

    def key(i, b):
        chain, group, _ = keys[i]
        return (chain[((b + 1) * bs - 1) // group], b)

    free_queue = OrderedDict((b, None) for b in range(config.total_blocks))  # block id -> None, FIFO
    ref = [0] * config.total_blocks
    block_key = [None] * config.total_blocks
    cached = {}  # key -> block id
    owned = {}  # request row -> its block ids, in order
    registered = {}  # request row -> blocks examined for registration

    def allocate(req, k):
        for _ in range(k):
            b, _ = free_queue.popitem(last=False)
            if block_key[b] is not None:
                del cached[block_key[b]]
                block_key[b] = None
            ref[b] = 1
            owned[req.row].append(b)

    def release(req):
        for b in reversed(owned.pop(req.row)):
            ref[b] -= 1
            if ref[b] == 0:
                free_queue[b] = None
        registered.pop(req.row, None)

    def register(req):
        i = req.row
        if keys[i] is None:
            return
        full = min(req.computed // bs, keys[i][2])
        for b in range(registered[i], full):
            k = key(i, b)
            if k not in cached:
                cached[k] = owned[i][b]
                block_key[owned[i][b]] = k
        registered[i] = max(registered[i], full)

    for i, req in enumerate(reqs):
        req.row = i
    if hasattr(policy, "bind_engine"):
        policy.bind_engine(cost_model=StepCost(cost), kv_capacity_tokens=config.total_blocks * bs)
    running: list[Request] = []
    steps: list[tuple] = []
    now, nxt, step = 0.0, 0, 0

    def chunk(pending: int, budget: int) -> int:
        return pending if pending <= budget else (budget if config.chunked_prefill else 0)

    def preempt_last():
        victim = running.pop()
        release(victim)
        victim.blocks = victim.computed = 0
        victim.decoding = False
        victim.preemptions += 1
        victim.status = "waiting"
        policy.requeue(victim)
        return victim

    while True:
        while nxt < len(reqs) and reqs[nxt].arrival_s <= now:
            req = reqs[nxt]
            nxt += 1
            reason = reasons[req.row]
            if reason is None and not policy.on_arrival(req, now):
                reason = "rate_limit"
            if reason is not None:
                req.status, req.reject_reason = "rejected", reason
        if not running and policy.waiting == 0:
            if nxt >= len(reqs):
                break
            steps.append((step, now, reqs[nxt].arrival_s - now, 0, 0, 0, 0, 0, 0, 0, 0))
            now = reqs[nxt].arrival_s
            step += 1
            continue

        budget = policy.token_budget(config.max_batch_tokens)
        scheduled: list[list] = []  # [request, tokens]
        preempted = 0
        order = running
        if config.stall_free:
            order = [r for r in running if r.decoding] + [r for r in running if not r.decoding]
        for req in list(order):
            if budget <= 0:
                break
            if req not in running:  # preempted earlier in this step
                continue
            if req.decoding:
                n, need = 1, (1 if req.computed % bs == 0 else 0)
            else:
                n = chunk(req.pending, budget)
                if n == 0:
                    continue
                need = ceil_div(req.computed + n, bs) - req.blocks
            while need > len(free_queue):
                victim = preempt_last()
                preempted += 1
                for item in scheduled:
                    if item[0] is victim:
                        scheduled.remove(item)
                        budget += item[1]
                        break
                if victim is req:
                    break
            if req not in running:
                break
            allocate(req, need)
            req.blocks += need
            scheduled.append([req, n])
            budget -= n

        admitted = 0
        step_cached = 0
        if not preempted and (step % config.admit_every == 0 or not running):
            while len(running) < config.max_running and budget > 0:
                free = len(free_queue)
                reserve = config.reserve_full_prompt and config.chunked_prefill  # vLLM: the whole prompt must fit
                pick = policy.select(
                    lambda r: (
                        chunk(r.pending, budget) > 0
                        and ceil_div(r.pending if reserve else chunk(r.pending, budget), bs) <= free
                    )
                )
                if pick is None:
                    break
                pending = pick.pending
                h = 0
                if keys[pick.row] is not None:  # the longest cached prefix, the last token always computed
                    while h < min((pending - 1) // bs, keys[pick.row][2]) and key(pick.row, h) in cached:
                        h += 1
                n = chunk(pending - h * bs, budget)
                need = ceil_div(h * bs + n, bs) - h
                hits = [cached[key(pick.row, b)] for b in range(h)]
                full = ceil_div(pending, bs) - h if reserve else need
                if sum(ref[b] == 0 for b in hits) + max(need, full) > free:  # vLLM: allocate_slots fails, it waits
                    break
                resumed = pick.admitted_s is not None
                policy.admit(pick, now, resumed)
                owned[pick.row] = []
                for b in hits:
                    if ref[b] == 0:
                        del free_queue[b]
                    ref[b] += 1
                    owned[pick.row].append(b)
                registered[pick.row] = h
                allocate(pick, need)
                pick.computed = h * bs
                pick.blocks = h + need
                if not resumed:
                    pick.cached_prompt_tokens = h * bs
                step_cached += h * bs
                pick.status = "running"
                if not resumed:
                    pick.admitted_s = now
                running.append(pick)
                scheduled.append([pick, n])
                budget -= n
                admitted += 1

        prefill_tokens = decode_tokens = decode_kv = 0
        pairs = 0.0
        for req, n in scheduled:
            if req.decoding:
                decode_tokens += 1
                decode_kv += req.computed + 1
            else:
                prefill_tokens += n
                pairs += n * (req.computed + (n + 1) / 2)
        dt = float(cost.step_time(prefill_tokens, pairs, decode_tokens, decode_kv, len(scheduled)))
        policy.on_step(now, dt, Step.of([(r, n) for r, n in scheduled]))
        end = now + dt
        produced, done = [], []
        for req, n in scheduled:
            req.computed += n
            if not req.decoding and config.prefix_caching:
                register(req)
            if not req.decoding:
                if req.computed < req.prompt_tokens + req.generated:
                    continue
                req.decoding = True
                if req.first_token_s is None:
                    req.first_token_s = end
            req.generated += 1
            produced.append(req)
            if req.generated >= req.output_tokens:
                done.append(req)
        if produced:
            policy.on_tokens(Tokens.of(produced), 1)
        for req in done:
            req.finish_s, req.status = end, "finished"
            release(req)
            req.blocks = 0
            running.remove(req)
            policy.on_finish(req, end)
        kv_used = (config.total_blocks - len(free_queue)) * bs
        steps.append((step, now, dt, prefill_tokens, decode_tokens, len(scheduled), admitted, len(done), preempted,
                      kv_used, step_cached))  # fmt: skip
        now = end
        step += 1

    rows = [
        (r.status, r.admitted_s, r.first_token_s, r.finish_s, r.generated, r.preemptions, r.reject_reason,
         None if r.status == "rejected" else r.cached_prompt_tokens)
        for r in reqs
    ]  # fmt: skip
    return rows, steps


REQUEST_COLUMNS = ("status", "admitted_s", "first_token_s", "finish_s", "generated_tokens", "preemptions",
                   "reject_reason", "cached_prompt_tokens")  # fmt: skip
STEP_COLUMNS = ("step", "start_s", "duration_s", "prefill_tokens", "decode_tokens", "running", "admitted", "finished",
                "preempted", "kv_used_tokens", "cached_tokens")  # fmt: skip
