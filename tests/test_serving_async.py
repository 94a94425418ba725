"""The adapter under vLLM's synchronous and asynchronous scheduling, on a real engine (CPU build).

vLLM runs ``AsyncScheduler`` when async scheduling is on (its default on GPUs): the engine
schedules step N+1 before step N's output is back.  ``FairScheduler`` picks
``FairAsyncScheduler`` then, as vLLM's ``SchedulerConfig.get_scheduler_cls`` picks
``AsyncScheduler``.  vLLM's CPU platform switches async scheduling off ("not required on CPU");
the CPU model runner runs it all the same, so these tests keep the setting the engine was
given, to run both schedulers on a real model: one heavy tenant queues 6 requests, a light one
2, two request slots.
"""

import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]'); real-engine tests skipped")

import pandas as pd  # noqa: E402

from traces.schema import make_table  # noqa: E402

HEAVY, LIGHT, OUT = 6, 2, 8


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from serving.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def keep_async_setting(monkeypatch):
    """vLLM's CPU platform, but leaving ``async_scheduling`` as the engine arguments set it."""
    from vllm.platforms import current_platform

    platform = type(current_platform)
    original = platform.check_and_update_config

    def check_and_update_config(cls, vllm_config):
        wanted = vllm_config.scheduler_config.async_scheduling
        original.__func__(cls, vllm_config)
        vllm_config.scheduler_config.async_scheduling = wanted

    monkeypatch.setattr(platform, "check_and_update_config", classmethod(check_and_update_config))


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_the_adapter_runs_under_both_schedulers_as_vllm_chooses(tiny_model, tmp_path, monkeypatch,
                                                               keep_async_setting, async_scheduling):  # fmt: skip
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import json

    from vllm.v1.core.sched.async_scheduler import AsyncScheduler

    from serving.replay_vllm import VllmEngineOptions, replay_vllm
    from serving.vllm_adapter import FairAsyncScheduler, FairScheduler

    seen = {"classes": set(), "in_flight": 0}
    schedule = FairScheduler.schedule

    def counting_schedule(self, *args, **kwargs):
        out = schedule(self, *args, **kwargs)
        seen["classes"].add(type(self))
        seen["in_flight"] = max(seen["in_flight"], len(self._equinox_steps))  # steps not yet reported
        return out

    monkeypatch.setattr(FairScheduler, "schedule", counting_schedule)
    clients = ["heavy"] * HEAVY + ["light"] * LIGHT
    workload = make_table(clients, [0.0] * (HEAVY + LIGHT), [32] * (HEAVY + LIGHT), [OUT] * (HEAVY + LIGHT))
    options = VllmEngineOptions(model=str(tiny_model), max_num_seqs=2, max_num_batched_tokens=256, max_model_len=512,
                                threads=1, extra=(("async_scheduling", async_scheduling),))  # fmt: skip
    (run,) = replay_vllm(workload, ["vtc"], tmp_path, options, workload_name="heavy-light")

    (cls,) = seen["classes"]
    if async_scheduling:
        assert cls is FairAsyncScheduler and issubclass(cls, AsyncScheduler)
        assert seen["in_flight"] == 2  # a step scheduled while the last one's output was still out
    else:
        assert cls is FairScheduler and not issubclass(cls, AsyncScheduler)
        assert seen["in_flight"] == 1
    config = json.loads((run / "run.json").read_text())
    assert config["engine"]["scheduler_cls"] == f"serving.vllm_adapter.{cls.__name__}"

    req = pd.read_parquet(run / "requests.parquet")
    assert (req.status == "finished").all() and (req.generated_tokens == OUT).all()
    # VTC: the light tenant's two requests are among the first four admitted, not behind all six heavy ones.
    order = req.sort_values(["admitted_s", "request_id"]).client_id.tolist()
    assert order[:4].count("light") == LIGHT, order
    steps = pd.read_parquet(run / "steps.parquet")
    busy = steps[steps.busy]
    # every token computed is in exactly one logged step: prompts once, each output token but the
    # last one of each request fed back once (the first comes with the prefill)
    assert busy.prefill_tokens.sum() == req.prompt_tokens.sum()
    assert busy.decode_tokens.sum() == ((req.generated_tokens - 1).sum())
