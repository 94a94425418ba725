"""The Ray backend on a local Ray instance this module starts: the same runs as the local
backend, gathered in one directory; a failing cell retried and reported."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine.sweep import plan, run_sweep
from equinox_cli.main import app
from traces import synthesize

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One small Ray instance for the module; the sweeps use it as it is and leave it running."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, ignore_reinit_error=True)
    yield
    ray.shutdown()


def tiny(workload, seed):
    return synthesize(workload, seed=seed, duration_scale=0.1)


def assert_same_runs(a: Path, b: Path) -> list[Path]:
    """Both directories hold the same runs, with the same files and the same requests and steps."""
    runs = sorted(p.parent.relative_to(a) for p in a.rglob("run.json"))
    assert runs and runs == sorted(p.parent.relative_to(b) for p in b.rglob("run.json"))
    for run in runs:
        assert sorted(f.name for f in (a / run).iterdir()) == sorted(f.name for f in (b / run).iterdir())
        for name in ("requests.parquet", "steps.parquet"):
            assert pq.read_table(a / run / name).equals(pq.read_table(b / run / name)), run / name
    return runs


def test_ray_cells_equal_local_ones_and_a_failing_cell_is_retried_and_reported(tmp_path):
    # alpha = beta = 0 is refused by EquinoxKnobs: that cell fails on every attempt.
    cells = plan(["overload"], ["equinox", "vtc"], [1, 2], {"alpha": [0, 1], "beta": [0]})
    finished = []
    results = run_sweep(cells, tmp_path / "ray", load=tiny, backend="ray", retries=1, on_done=finished.append)
    run_sweep(cells, tmp_path / "local", load=tiny, backend="local", retries=0)
    assert len(finished) == len(cells) == 6
    failed = [r for r in results if r.error is not None]
    assert {r.path.parent.name for r in failed} == {"alpha-0_beta-0"} and len(failed) == 2
    for r in failed:  # the task's own exception, one line, not Ray's wrapper with its traceback
        assert r.attempts == 2 and r.error.startswith("ValueError: ") and "alpha + beta > 0" in r.error
        assert "\n" not in r.error and not r.path.exists()
    runs = assert_same_runs(tmp_path / "ray", tmp_path / "local")
    assert {run.as_posix() for run in runs} == {r.cell.path.as_posix() for r in results if r.error is None}


def test_sweep_command_with_the_ray_backend(tmp_path):
    workload = tmp_path / "tiny.parquet"
    pq.write_table(tiny("overload", 42), workload)
    args = ["sweep", "-w", str(workload), "-s", "equinox,fcfs", "-g", "gamma=0,1", "--retries", "0"]
    ray_run = CliRunner().invoke(app, [*args, "--backend", "ray", "-o", str(tmp_path / "ray")])
    assert ray_run.exit_code == 0, ray_run.output
    local_run = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "local")])
    assert local_run.exit_code == 0, local_run.output
    runs = assert_same_runs(tmp_path / "ray", tmp_path / "local")
    assert {run.as_posix() for run in runs} == {
        "tiny.parquet/seed-42/gamma-0/equinox",
        "tiny.parquet/seed-42/gamma-1/equinox",
        "tiny.parquet/seed-42/default/fcfs",
    }
    assert (tmp_path / "ray" / "summary.csv").read_text() == (tmp_path / "local" / "summary.csv").read_text()
    audit = CliRunner().invoke(app, ["audit", str(tmp_path / "ray")])
    assert audit.exit_code == 0, audit.output
