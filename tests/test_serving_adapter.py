"""The vLLM scheduler adapter on vLLM's real scheduler and KV cache manager, without a model.

``serving.offline`` builds the scheduler from a config alone and steps it with made-up model
outputs, so these tests check the adapter's bookkeeping in a second or two.
"""

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]'); adapter tests skipped")

from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.engine import FinishReason  # noqa: E402
from vllm.v1.request import RequestStatus  # noqa: E402

from serving.offline import make_request, make_scheduler, step, write_config  # noqa: E402
from serving.vllm_adapter import FairRequestQueue, FairScheduler  # noqa: E402
from traces.result_schemas import REQUEST_SCHEMA, STEP_SCHEMA  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("config-only"))


def fair(model_dir, policy="vtc", **kw):
    extra = kw.pop("settings", {})
    return make_scheduler(FairScheduler, model_dir, additional_config={"equinox": {"scheduler": policy, **extra}}, **kw)


def admission_order(sched, steps=500):
    order = []
    for _ in range(steps):
        out, _ = step(sched)
        order += [r.req_id for r in out.scheduled_new_reqs]
        if not sched.has_requests():
            break
    return order


def heavy_then_light(sched):
    for i in range(4):
        sched.add_request(make_request(f"h{i}", 32, 4, tenant="heavy"))
    for i in range(2):
        sched.add_request(make_request(f"l{i}", 32, 4, tenant="light"))


def test_the_adapter_installs_a_fair_queue_and_vtc_interleaves_what_fcfs_serializes(model_dir):
    fcfs = fair(model_dir, "fcfs", max_num_seqs=2)
    assert isinstance(fcfs.waiting, FairRequestQueue)
    heavy_then_light(fcfs)
    assert admission_order(fcfs) == ["h0", "h1", "h2", "h3", "l0", "l1"]
    vtc = fair(model_dir, "vtc", max_num_seqs=2)
    heavy_then_light(vtc)
    assert admission_order(vtc) == ["h0", "l0", "h1", "l1", "h2", "h3"]
    # vLLM's own scheduler is FCFS: the adapter with fcfs admits in the same order
    plain = make_scheduler(Scheduler, model_dir, max_num_seqs=2)
    heavy_then_light(plain)
    assert admission_order(plain) == ["h0", "h1", "h2", "h3", "l0", "l1"]


def test_with_async_scheduling_the_adapter_is_built_over_vllms_async_scheduler(model_dir):
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler

    sched = fair(model_dir, "vtc", max_num_seqs=2, async_scheduling=True)
    assert isinstance(sched, FairScheduler) and isinstance(sched, AsyncScheduler)
    heavy_then_light(sched)
    assert admission_order(sched) == ["h0", "l0", "h1", "l1", "h2", "h3"]
    req, _ = sched.equinox.log.tables()
    assert (req.column("generated_tokens").to_pylist()) == [4] * 6


def test_tenants_and_weights_come_from_extra_args(model_dir):
    sched = fair(model_dir, "vtc", max_num_seqs=1)
    sched.add_request(make_request("a", 16, 2, tenant="alice", weight=2.0))
    sched.add_request(make_request("anon", 16, 2))  # names no tenant
    admission_order(sched)
    req, _ = sched.equinox.log.tables()
    rows = {r["client_id"]: r for r in req.to_pylist()}
    assert rows["alice"]["weight"] == 2.0 and rows["default"]["weight"] == 1.0
    assert sched.equinox.policy.counters["alice"] == pytest.approx((16 + 2 * 2) / 2)


def test_preemption_requeues_the_victim_and_every_request_finishes(model_dir):
    # 12 blocks of 16 tokens: four requests growing to 48 tokens cannot all stay resident.
    sched = fair(model_dir, "vtc", num_blocks=12, max_num_seqs=4)
    for i in range(4):
        sched.add_request(make_request(f"r{i}", 16, 32, tenant=f"t{i % 2}"))
    admission_order(sched, steps=2000)
    req, steps = sched.equinox.log.tables(final=True)
    rows = req.to_pylist()
    assert len(rows) == 4 and all(r["status"] == "finished" and r["generated_tokens"] == 32 for r in rows)
    assert sum(r["preemptions"] for r in rows) > 0
    assert sum(steps.column("preempted").to_pylist()) == sum(r["preemptions"] for r in rows)
    assert len(sched.waiting) == 0 and sched.equinox.waiting_tokens == 0


def test_a_request_the_policy_rejects_is_finished_as_aborted(model_dir):
    sched = fair(model_dir, "rpm:1")
    sched.add_request(make_request("a0", 8, 2, tenant="a"))
    sched.add_request(make_request("a1", 8, 2, tenant="a"))  # second in a minute: rejected
    assert len(sched.waiting) == 1
    out, result = step(sched)
    finished = {o.request_id: o.finish_reason for outs in result.values() for o in outs.outputs if o.finish_reason}
    assert finished == {"a1": FinishReason.ABORT}
    # the abort says why and when the tenant's window frees: a0 arrived just before, 60 s window
    (why,) = [o.stop_reason for outs in result.values() for o in outs.outputs if o.request_id == "a1"]
    mark, retry, limit = why.split(":")
    assert mark == "equinox_rate_limit" and 59.0 < float(retry) <= 60.0 and limit == "1"
    admission_order(sched)
    req, _ = sched.equinox.log.tables()
    assert sorted(r["status"] for r in req.to_pylist()) == ["finished", "rejected"]
    assert sched.equinox.log.end_reasons == {"length": 1, "rate_limit": 1}


def test_an_aborted_waiting_request_leaves_the_queue_and_is_logged(model_dir):
    sched = fair(model_dir, "vtc", max_num_seqs=1)
    for rid in ("a", "b", "c"):
        sched.add_request(make_request(rid, 8, 4, tenant=rid))
    step(sched)
    sched.finish_requests(["c"], RequestStatus.FINISHED_ABORTED)
    assert len(sched.waiting) == 1
    assert admission_order(sched) == ["b"]
    rows = {r["client_id"]: r for r in sched.equinox.log.tables()[0].to_pylist()}
    assert rows["c"]["status"] == "aborted" and rows["c"]["first_token_s"] is None


def test_the_policy_sets_each_steps_token_budget(model_dir):
    # Equinox's adaptive budget starts at the engine's (512) clamped to budget_max (128).
    sched = fair(model_dir, "equinox", max_num_batched_tokens=512,
                 settings={"equinox": {"adaptive_budget": True, "budget_min": 64, "budget_max": 128}})  # fmt: skip
    sched.add_request(make_request("a", 1000, 2, tenant="a"))
    out, _ = step(sched)
    assert sched.max_num_scheduled_tokens == 128 and out.total_num_scheduled_tokens == 128
    _, steps = sched.equinox.log.tables()
    assert steps.column("token_budget").to_pylist() == [128]
    # without adaptation the engine's own budget holds
    plain = fair(model_dir, "vtc", max_num_batched_tokens=512)
    plain.add_request(make_request("a", 1000, 2, tenant="a"))
    out, _ = step(plain)
    assert out.total_num_scheduled_tokens == 512


def test_logs_are_a_run_directory_audit_reads(model_dir, tmp_path):
    from reports.audit import audit

    sched = fair(model_dir, "vtc", max_num_seqs=2, settings={"log_dir": str(tmp_path / "run")})
    heavy_then_light(sched)
    admission_order(sched)
    sched.shutdown()
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "run" / "requests.parquet").remove_metadata() == REQUEST_SCHEMA
    assert pq.read_schema(tmp_path / "run" / "steps.parquet").remove_metadata() == STEP_SCHEMA
    (result,) = audit([tmp_path / "run"]).runs
    assert result["requests"]["finished"] == 6
    assert result["scheduler"] == "vtc"
