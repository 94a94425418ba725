"""Sweeps: the grid, its cells and their directories, the local backend, failures retried and reported."""

import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.sweep import Cell, combinations, knobs_dir, parse_grid, parse_seeds, plan, run_sweep
from equinox_cli.main import app
from traces import synthesize
from traces.errors import InputError


def tiny(workload, seed):
    """A tenth of a synthetic workload: a cell replays in a fraction of a second."""
    return synthesize(workload, seed=seed, duration_scale=0.1)


def paths(cells):
    return {cell.path.as_posix() for cell in cells}


def test_grid_parsing_and_knob_combinations():
    grid = parse_grid(["alpha=0,1,1", "gamma=0.5"])
    assert grid == {"alpha": [0.0, 1.0], "gamma": [0.5]}
    assert combinations(grid) == [{"alpha": 0.0, "gamma": 0.5}, {"alpha": 1.0, "gamma": 0.5}]
    assert combinations({}) == [{}]
    assert knobs_dir({"gamma": 0.5, "alpha": 1.0}) == "alpha-1_gamma-0.5"
    assert knobs_dir({"delta": 0.1234567}) != knobs_dir({"delta": 0.1234568})
    assert knobs_dir({}) == "default"
    for bad in ("zeta=1", "alpha=", "alpha=x"):
        with pytest.raises(InputError, match="--grid"):
            parse_grid([bad])
    assert parse_seeds(["1,2", "3", "2"]) == [1, 2, 3]
    with pytest.raises(InputError, match="--seed: expected whole numbers"):
        parse_seeds(["1,x"])


def test_plan_multiplies_only_the_schedulers_the_knobs_change():
    cells = plan(["overload", "data/azure.parquet"], ["equinox", "fcfs", "rpm:5", "rpm(5)"], [1, 2], {"alpha": [0, 1]})
    per_seed = {"alpha-0/equinox", "alpha-1/equinox", "default/fcfs", "default/rpm-5"}
    expected = {f"{w}/seed-{s}/{c}" for w in ("overload", "azure.parquet") for s in (1, 2) for c in per_seed}
    assert paths(cells) == expected and len(cells) == len(expected)
    assert paths(plan(["overload"], ["equinox-oracle"], [42], {"beta": [1]})) == {
        "overload/seed-42/beta-1/equinox-oracle"
    }


def test_plan_refuses_bad_input_before_any_work():
    with pytest.raises(InputError, match="--scheduler: unknown scheduler 'nope'"):
        plan(["overload"], ["nope"], [1], {})
    with pytest.raises(InputError, match="--scheduler: scheduler 'fcfs' takes no parameter"):
        plan(["overload"], ["fcfs:2"], [1], {})
    with pytest.raises(InputError, match="a/x.csv and b/x.csv would share the directory 'x.csv'"):
        plan(["a/x.csv", "b/x.csv"], ["fcfs"], [1], {})


def test_a_grid_of_workloads_schedulers_and_seeds_is_gathered_in_one_directory_audit_compares(tmp_path):
    cells = plan(["overload", "on-off-less"], ["equinox", "fcfs"], [1, 2], {"alpha": [0.5, 1]})
    finished = []
    results = run_sweep(cells, tmp_path, load=tiny, jobs=2, on_done=finished.append)
    assert [r.cell for r in results] == cells and sorted(map(id, finished)) == sorted(map(id, results))
    assert all(r.error is None and r.attempts == 1 for r in results), [r.error for r in results]
    found = {p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("run.json")}
    assert found == paths(cells) and len(found) == 12
    run = json.loads((tmp_path / "on-off-less/seed-2/alpha-0.5/equinox/run.json").read_text())
    assert (run["seed"], run["workload"]["name"], run["policy"]["alpha"]) == (2, "on-off-less", 0.5)

    result = CliRunner().invoke(app, ["audit", str(tmp_path), "--format", "json"])
    assert result.exit_code == 0, result.output
    names = [r["name"] for r in json.loads(result.stdout)["runs"]]
    assert len(names) == 12 == len(set(names)) and "overload/seed-1/alpha-0.5/equinox" in names


def test_a_failing_cell_is_retried_and_reported_not_dropped(tmp_path):
    # alpha = beta = 0 is refused by EquinoxKnobs: that cell fails on every attempt.
    cells = plan(["overload"], ["equinox"], [42], {"alpha": [0.0, 1.0], "beta": [0.0]})
    reported = []
    results = run_sweep(cells, tmp_path, load=tiny, jobs=2, retries=2, on_done=reported.append)
    by_name = {r.path.parent.name: r for r in results}
    assert set(by_name) == {"alpha-0_beta-0", "alpha-1_beta-0"} and len(reported) == 2
    failed, ok = by_name["alpha-0_beta-0"], by_name["alpha-1_beta-0"]
    assert "alpha + beta > 0" in failed.error and failed.attempts == 3 and not failed.path.exists()
    assert ok.error is None and ok.attempts == 1 and (ok.path / "requests.parquet").exists()


def test_local_workers_map_workloads_from_files_the_backend_removes():
    """The local backend writes each workload once for its workers to memory-map (no copy per
    worker), and removes the files when it closes."""
    import pyarrow as pa

    from engine.sweep import LocalBackend

    table = tiny("overload", 1)
    backend = LocalBackend({("overload", 1): table}, jobs=1)
    (path,) = backend._files.values()
    assert pa.ipc.open_file(pa.memory_map(path)).read_all().equals(table)
    backend.close()
    assert not Path(path).exists()


def test_cells_of_a_killed_worker_are_retried_on_a_fresh_pool(tmp_path):
    cells = plan(["overload", "on-off-less"], ["fcfs", "vtc", "lcf"], [1], {})
    killed = []

    def kill_a_worker(result):  # as if the kernel killed a worker for memory, mid-sweep
        if not killed:
            killed.append(multiprocessing.active_children()[0].pid)
            os.kill(killed[0], signal.SIGKILL)

    results = run_sweep(cells, tmp_path, load=tiny, jobs=2, retries=1, on_done=kill_a_worker)
    assert all(r.error is None for r in results), [r.error for r in results]
    assert any(r.attempts == 2 for r in results)


def test_unknown_backend_and_missing_ray_are_input_errors(tmp_path, monkeypatch):
    cells = [Cell("overload", 1, "fcfs")]
    with pytest.raises(InputError, match="--backend: unknown backend 'spark'; expected one of local, ray"):
        run_sweep(cells, tmp_path, load=tiny, backend="spark")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    with pytest.raises(InputError, match=r"pip install 'equinox-fair\[ray\]'"):
        run_sweep(cells, tmp_path, load=tiny, backend="ray")
    result = CliRunner().invoke(app, ["sweep", "-w", "overload", "-s", "fcfs", "--backend", "ray", "-o", str(tmp_path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    hint = "the ray backend needs Ray, an optional extra: pip install 'equinox-fair[ray]'"
    assert result.output == f"error: --backend: {hint}\n"  # one line, before any progress bar
    assert not any(Path(tmp_path).iterdir())


def test_sweep_command_writes_summary_and_frontier_and_exits_1_on_failure(tmp_path):
    runner = CliRunner()
    args = ["sweep", "--workload", "on-off-less", "--seed", "1,2", "--out", str(tmp_path), "--retries", "0"]
    result = runner.invoke(app, args + ["--scheduler", "equinox,fcfs", "--grid", "alpha=0.5,1", "--grid", "beta=0.5"])
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("workload,seed,scheduler,alpha,beta,cell,error,jain,")
    assert len(summary) == 1 + 2 * 3 and (tmp_path / "frontier.png").exists()
    assert "on-off-less,2,fcfs,,,on-off-less/seed-2/default/fcfs,," in summary[-1]
    result = runner.invoke(app, args + ["--grid", "alpha=0", "--grid", "beta=0", "--clean"])
    assert result.exit_code == 1
    assert "FAILED cell on-off-less/seed-1/alpha-0_beta-0/equinox after 1 attempt: ValueError" in result.output
    assert not (tmp_path / "on-off-less/seed-1/alpha-0.5_beta-0.5").exists()  # --clean took the old grid's cells


def test_sweep_refuses_an_out_holding_another_grids_runs(tmp_path):
    """`equinox audit OUT` compares every run under OUT: a sweep with another grid must not leave the
    earlier cells beside its own unless told to delete them (--clean)."""
    runner = CliRunner()
    args = ["sweep", "--workload", "on-off-less", "--seed", "1", "--out", str(tmp_path), "--scheduler", "equinox"]
    assert runner.invoke(app, args + ["--grid", "alpha=0.5"]).exit_code == 0
    assert runner.invoke(app, args + ["--grid", "alpha=0.5"]).exit_code == 0  # the same grid again: fine
    summary = (tmp_path / "summary.csv").read_text()
    result = runner.invoke(app, args + ["--grid", "alpha=1"])
    assert result.exit_code == 2
    assert "holds 1 run(s) that are not cells of this sweep (on-off-less/seed-1/alpha-0.5/equinox)" in result.output
    assert (tmp_path / "summary.csv").read_text() == summary and not (tmp_path / "on-off-less/seed-1/alpha-1").exists()
    assert runner.invoke(app, args + ["--grid", "alpha=1", "--clean"]).exit_code == 0
    runs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("requests.parquet"))
    assert runs == ["on-off-less/seed-1/alpha-1/equinox"]
    run_dir = tmp_path / "on-off-less/seed-1/alpha-1/equinox"
    result = runner.invoke(app, ["sweep", "-w", "on-off-less", "-s", "fcfs", "--out", str(run_dir), "--clean"])
    assert result.exit_code == 2 and "is a run directory itself" in result.output and run_dir.is_dir()
