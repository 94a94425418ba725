"""The vLLM adapter's engine-free half: our policies as a waiting queue, and the run log (no vLLM needed)."""

import json

import pyarrow.parquet as pq
import pytest

from schedulers import make_policy
from serving.bridge import PolicyBridge, ServingSettings, StepBatch, tenant_of
from serving.logs import RunLog, shift_times
from traces.result_schemas import REQUEST_SCHEMA, STEP_SCHEMA


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def bridge(spec="vtc", **kw):
    clock = Clock()
    b = PolicyBridge(make_policy(spec), RunLog({"scheduler": spec}), scheduler_name=spec,
                     kv_capacity_tokens=1000, clock=clock, **kw)  # fmt: skip
    return b, clock


def arrive(b, rid, tenant, prompt=10, out=4, weight=1.0, row=None):
    return b.arrive(rid, tenant=tenant, weight=weight, prompt_tokens=prompt, max_tokens=out,
                    arrival_s=b.clock(), running=0, kv_used=0.0, row_id=row)  # fmt: skip


def drain(b, n=None):
    out = []
    while len(b) and (n is None or len(out) < n):
        b.peek()
        out.append(b.pop())
    return out


def test_fcfs_pops_in_arrival_order_and_vtc_interleaves_tenants():
    for spec, expected in (("fcfs", ["h0", "h1", "h2", "l0", "l1"]), ("vtc", ["h0", "l0", "h1", "l1", "h2"])):
        b, _ = bridge(spec)
        for i in range(3):
            arrive(b, f"h{i}", "heavy")
        for i in range(2):
            arrive(b, f"l{i}", "light")
        assert len(b) == 5
        assert drain(b) == expected, spec
        assert len(b) == 0


def test_peek_is_stable_until_the_queue_changes_and_pop_takes_the_peeked_request():
    b, _ = bridge("vtc")
    arrive(b, "a", "x")
    arrive(b, "b", "y")
    assert b.peek() == b.peek() == "a"
    assert b.pop() == "a"
    assert b.peek() == "b"


def test_prepend_puts_a_request_back_at_the_head_of_its_tenant_without_a_second_charge():
    b, _ = bridge("vtc")
    arrive(b, "a0", "a", prompt=100)
    arrive(b, "a1", "a", prompt=100)
    b.peek()
    assert b.pop() == "a0"
    charged = b.policy.counters["a"]
    b.preempted("a0")
    b.prepend("a0")
    assert b.queued_ids() == ["a0", "a1"]
    b.peek()
    assert b.pop() == "a0"
    assert b.policy.counters["a"] == charged  # resumed: admission is charged once
    assert b.entries["a0"].req.preemptions == 1


def test_a_removed_waiting_request_is_never_admitted_and_does_not_count():
    b, _ = bridge("vtc")
    for rid, tenant in (("a0", "a"), ("a1", "a"), ("b0", "b")):
        arrive(b, rid, tenant)
    b.remove("a1")  # not at the head: dropped when it gets there
    b.remove("a0")  # the head: dropped now
    assert len(b) == 1
    assert drain(b) == ["b0"]
    assert b.waiting_tokens == 0
    assert b.policy.counters["a"] == 0  # dropped requests are not charged


def test_fits_lets_equinox_skip_a_request_that_does_not_fit():
    b, _ = bridge("equinox")
    arrive(b, "big", "a", prompt=900)
    arrive(b, "small", "b", prompt=10)
    assert b.peek(lambda rid: rid != "big") == "small"
    b2, _ = bridge("fcfs")  # FCFS does not skip: the head is offered (vLLM then stops)
    arrive(b2, "big", "a", prompt=900)
    arrive(b2, "small", "b", prompt=10)
    assert b2.peek(lambda rid: rid != "big") == "big"


def test_rpm_rejection_is_logged_as_rejected():
    b, _ = bridge("rpm:1")
    assert arrive(b, "a0", "a")
    assert not arrive(b, "a1", "a")
    req, _ = b.log.tables()
    row = req.to_pylist()[0]
    assert row["status"] == "rejected" and row["admitted_s"] is None and row["client_id"] == "a"
    assert len(b) == 1


def run_steps(b, clock):
    """Two requests; prefill in one step each, then decode to 3 tokens."""
    arrive(b, "x", "a", prompt=8, out=3, row=40)
    arrive(b, "y", "b", prompt=8, out=3, row=41)
    generated = {"x": 0, "y": 0}
    computed = {"x": 0, "y": 0}
    running = []
    while len(b) or running:
        clock.t += 0.01
        start = clock.t
        while len(b):
            b.peek()
            running.append(b.pop())
        tokens = {rid: (8 if computed[rid] == 0 else 1) for rid in running}
        batch = StepBatch(start, 64, tokens, dict(computed))
        for rid, n in tokens.items():
            computed[rid] += n
            generated[rid] += 1
        clock.t += 0.1
        finished = {rid: "finished" for rid in running if generated[rid] == 3}
        b.end_step(batch, end_s=clock.t, outputs=dict(generated), finished=finished, waiting=len(b),
                   still_busy=len(finished) < len(running), kv_used_tokens=32)  # fmt: skip
        running = [rid for rid in running if rid not in finished]


def test_steps_feed_the_policy_and_log_the_simulators_schema():
    b, clock = bridge("vtc")
    run_steps(b, clock)
    req, steps = b.log.tables(final=True)
    assert req.schema == REQUEST_SCHEMA and steps.schema == STEP_SCHEMA
    rows = {r["request_id"]: r for r in req.to_pylist()}
    assert set(rows) == {40, 41}  # the workload's ids
    for r in rows.values():
        assert r["status"] == "finished" and r["generated_tokens"] == 3
        assert r["admitted_s"] == pytest.approx(0.01)
        assert r["first_token_s"] == pytest.approx(0.11) and r["finish_s"] == pytest.approx(0.33)
    s = steps.to_pylist()
    assert [x["prefill_tokens"] for x in s] == [16, 0, 0]
    assert [x["decode_tokens"] for x in s] == [0, 2, 2]
    assert [x["admitted"] for x in s] == [2, 0, 0] and [x["finished"] for x in s] == [0, 0, 2]
    # busy steps tile the time line: each runs to the next step's start
    assert s[0]["start_s"] + s[0]["duration_s"] == pytest.approx(s[1]["start_s"])
    # VTC charged w_p * prompt + w_q * tokens to each tenant
    assert b.policy.counters == {"a": 8 + 2 * 3, "b": 8 + 2 * 3}


def test_on_step_sees_the_batch_before_its_tokens_and_no_op_feedback_is_skipped():
    from schedulers.fcfs import FCFS
    from serving.bridge import _overrides

    seen = []

    class Recording(FCFS):
        def on_step(self, now, duration_s, batch):
            seen.append(("step", [(r.request_id, n, r.computed, r.generated) for r, n in batch]))

        def on_tokens(self, reqs, k):
            seen.append(("tokens", k, [(r.request_id, r.computed, r.generated) for r in reqs]))

    clock = Clock()
    b = PolicyBridge(Recording(), RunLog({}), scheduler_name="rec", kv_capacity_tokens=1000, clock=clock)
    run_steps(b, clock)
    assert seen[:4] == [
        ("step", [(0, 8, 0, 0), (1, 8, 0, 0)]),  # (request, tokens, computed, generated) as the step found them
        ("tokens", 1, [(0, 8, 1), (1, 8, 1)]),
        ("step", [(0, 1, 8, 1), (1, 1, 8, 1)]),
        ("tokens", 1, [(0, 9, 2), (1, 9, 2)]),
    ]
    # Policy's no-op on_step / on_tokens are not called (the bridge builds no pairs for them)
    assert not _overrides(FCFS(), "on_step") and not _overrides(FCFS(), "on_tokens")
    assert _overrides(Recording(), "on_step") and _overrides(Recording(), "on_tokens")


def test_an_idle_gap_is_an_idle_row():
    log = RunLog({})
    common = dict(prefill_tokens=0, decode_tokens=1, prefill_requests=0, decode_requests=1, running=1, waiting=0,
                  admitted=0, finished=1, preempted=0, kv_used_tokens=16, kv_capacity_tokens=100,
                  token_budget=8, flops=0.0)  # fmt: skip
    log.step(0.0, 0.1, False, **common)
    log.step(1.0, 1.1, False, **common)
    _, steps = log.tables(final=True)
    rows = steps.to_pylist()
    assert [r["busy"] for r in rows] == [True, False, True]
    assert rows[1]["start_s"] == pytest.approx(0.1) and rows[1]["duration_s"] == pytest.approx(0.9)
    assert [r["step"] for r in rows] == [0, 1, 2]


def test_a_log_directory_is_a_run_directory_flushed_atomically(tmp_path):
    log = RunLog({"engine": {"kv_capacity_tokens": 1000}}, tmp_path / "run", flush_interval_s=0.05)
    assert pq.read_table(tmp_path / "run" / "requests.parquet").num_rows == 0  # a run directory from the start
    b = PolicyBridge(make_policy("fcfs"), log, scheduler_name="fcfs", kv_capacity_tokens=1000, clock=Clock())
    run_steps(b, b.clock)
    import time

    deadline = time.time() + 5
    while time.time() < deadline and pq.read_table(tmp_path / "run" / "requests.parquet").num_rows < 2:
        time.sleep(0.02)
    assert pq.read_table(tmp_path / "run" / "requests.parquet").num_rows == 2  # flushed without close()
    log.close()
    assert pq.read_table(tmp_path / "run" / "steps.parquet").num_rows == 3
    config = json.loads((tmp_path / "run" / "run.json").read_text())
    assert config["engine"]["kv_capacity_tokens"] == 1000 and config["requests_logged"] == 2
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_shift_times_keeps_nulls():
    b, _ = bridge("rpm:1")
    arrive(b, "a0", "a")
    arrive(b, "a1", "a")
    b.finish("a0", 2.0, "aborted")
    req, steps = shift_times(*b.log.tables(), 10.0)
    rows = req.to_pylist()
    assert rows[0]["admitted_s"] is None and rows[0]["arrival_s"] == 10.0  # the rejection
    assert rows[1]["status"] == "aborted" and rows[1]["admitted_s"] == 12.0  # left the queue at 2 s


def test_tenant_of_and_settings():
    assert tenant_of(None, "d") == ("d", 1.0)
    assert tenant_of({"equinox_tenant": "t", "equinox_weight": "2"}, "d") == ("t", 2.0)
    assert tenant_of({"equinox_tenant": "t", "equinox_weight": -1}, "d") == ("t", 1.0)
    s = ServingSettings.from_dict({"scheduler": "equinox", "equinox": {"alpha": 1.0, "beta": 0.0}})
    assert s.make_policy().name == "equinox"
    assert ServingSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown"):
        ServingSettings.from_dict({"schedulr": "vtc"})
    from traces.errors import InputError

    with pytest.raises(InputError):
        ServingSettings(scheduler="nope")
