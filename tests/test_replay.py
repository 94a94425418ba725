"""The replay driver: results layout, reproducibility, atomic writes."""

import json

import pyarrow.parquet as pq
import pytest

from engine.replay import replay
from engine.simulator import Simulator
from traces import synthesize
from traces.result_schemas import REQUEST_SCHEMA, STEP_SCHEMA

FILES = ("requests.parquet", "steps.parquet", "run.json")


@pytest.fixture(scope="module")
def workload():
    return synthesize("overload", duration_scale=0.25)


def test_replay_writes_one_directory_per_scheduler(tmp_path, workload):
    runs = replay(workload, ["fcfs", "rpm:5"], tmp_path, workload_name="overload", seed=7)
    assert [r.name for r in runs] == ["fcfs", "rpm-5"]
    for run in runs:
        assert sorted(p.name for p in run.iterdir()) == sorted(FILES)
        requests = pq.read_table(run / "requests.parquet")
        assert requests.schema.equals(REQUEST_SCHEMA)
        assert requests.num_rows == workload.num_rows
        assert pq.read_schema(run / "steps.parquet").equals(STEP_SCHEMA)
    config = json.loads((runs[1] / "run.json").read_text())
    assert config["scheduler"] == "rpm-5" and config["policy"]["limit"] == 5
    assert config["seed"] == 7 and config["engine"]["preset"] == "vtc-a10g-llama2-7b"
    assert config["engine"]["kv_capacity_tokens"] == 10_000 and config["engine"]["admit_every"] == 10
    assert config["workload"]["requests"] == workload.num_rows


def test_same_seed_gives_byte_identical_parquet(tmp_path):
    a = replay(synthesize("overload", seed=3, duration_scale=0.25), ["vtc-oracle:0.5"], tmp_path / "a", seed=3)
    b = replay(synthesize("overload", seed=3, duration_scale=0.25), ["vtc-oracle:0.5"], tmp_path / "b", seed=3)
    c = replay(synthesize("overload", seed=4, duration_scale=0.25), ["vtc-oracle:0.5"], tmp_path / "c", seed=4)
    for name in ("requests.parquet", "steps.parquet"):
        assert (a[0] / name).read_bytes() == (b[0] / name).read_bytes()
        assert (a[0] / name).read_bytes() != (c[0] / name).read_bytes()


def test_a_failed_run_leaves_no_files_and_keeps_the_previous_run(tmp_path, workload, monkeypatch):
    (run,) = replay(workload, ["vtc"], tmp_path)
    before = (run / "requests.parquet").read_bytes()

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Simulator, "run", boom)
    with pytest.raises(KeyboardInterrupt):
        replay(workload, ["vtc", "fcfs"], tmp_path)
    assert (run / "requests.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vtc"]  # no temporary or partial directory
