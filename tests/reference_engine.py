"""A deliberately plain engine, one request object at a time: the oracle the simulator's
vectorised steps are checked against (tests/test_simulator.py).

Same rules as ``engine.simulator`` (vLLM v1 continuous batching, ALGORITHMS.md section 8), written
as the obvious loops: schedule the running requests in admission order (stall-free: decodes
first), preempting the most recently admitted by recompute when a block is missing; then admit
while the batch has room.  No fast-forward, no arrays.  Returns per-request and per-step rows.
"""

from __future__ import annotations

from engine.request import Request
from engine.simulator import EngineConfig
from traces.schema import column_lists


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def replay(workload, config: EngineConfig, cost, policy) -> tuple[list[tuple], list[tuple]]:
    bs = config.block_size
    reqs = [Request(*row) for row in zip(*column_lists(workload))]
    if hasattr(policy, "bind_engine"):
        policy.bind_engine(cost_model=cost, kv_capacity_tokens=config.total_blocks * bs)
    free = config.total_blocks
    running: list[Request] = []
    steps: list[tuple] = []
    now, nxt, step = 0.0, 0, 0

    def chunk(pending: int, budget: int) -> int:
        return pending if pending <= budget else (budget if config.chunked_prefill else 0)

    def preempt_last():
        nonlocal free
        victim = running.pop()
        free += victim.blocks
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
            total = req.prompt_tokens + req.output_tokens
            runnable = ceil_div(total, bs) <= config.total_blocks
            runnable &= config.chunked_prefill or total <= config.max_batch_tokens
            if not runnable or not policy.on_arrival(req, now):
                req.status = "rejected"
        if not running and policy.waiting == 0:
            if nxt >= len(reqs):
                break
            steps.append((step, now, reqs[nxt].arrival_s - now, 0, 0, 0, 0, 0, 0, 0))
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
            while need > free:
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
            free -= need
            req.blocks += need
            scheduled.append([req, n])
            budget -= n

        admitted = 0
        if not preempted and (step % config.admit_every == 0 or not running):
            while len(running) < config.max_running and budget > 0:
                pick = policy.select(
                    lambda r: chunk(r.pending, budget) > 0 and ceil_div(chunk(r.pending, budget), bs) <= free
                )
                if pick is None:
                    break
                resumed = pick.admitted_s is not None
                policy.admit(pick, now, resumed)
                n = chunk(pick.pending, budget)
                pick.blocks = ceil_div(n, bs)
                free -= pick.blocks
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
        policy.on_step(now, dt, [(r, n) for r, n in scheduled])
        end = now + dt
        produced, done = [], []
        for req, n in scheduled:
            req.computed += n
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
            policy.on_tokens(produced, 1)
        for req in done:
            req.finish_s, req.status = end, "finished"
            free += req.blocks
            req.blocks = 0
            running.remove(req)
            policy.on_finish(req, end)
        kv_used = (config.total_blocks - free) * bs
        steps.append((step, now, dt, prefill_tokens, decode_tokens, len(scheduled), admitted, len(done), preempted,
                      kv_used))  # fmt: skip
        now = end
        step += 1

    rows = [(r.status, r.admitted_s, r.first_token_s, r.finish_s, r.generated, r.preemptions) for r in reqs]
    return rows, steps


REQUEST_COLUMNS = ("status", "admitted_s", "first_token_s", "finish_s", "generated_tokens", "preemptions")
STEP_COLUMNS = ("step", "start_s", "duration_s", "prefill_tokens", "decode_tokens", "running", "admitted", "finished",
                "preempted", "kv_used_tokens")  # fmt: skip
