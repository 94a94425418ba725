"""Knob sweeps: the grid, parallel cells, failures retried and reported."""

import pytest
from typer.testing import CliRunner

from engine.sweep import cell_name, cells, parse_grid, run_sweep
from equinox_cli.main import app
from traces import synthesize
from traces.errors import InputError


def test_grid_parsing_and_cells():
    grid = parse_grid(["alpha=0,1", "gamma=0.5"])
    assert grid == {"alpha": [0.0, 1.0], "gamma": [0.5]}
    assert cells(grid) == [{"alpha": 0.0, "gamma": 0.5}, {"alpha": 1.0, "gamma": 0.5}]
    assert cell_name({"gamma": 0.5, "alpha": 1.0}) == "alpha-1_gamma-0.5"
    for bad in ("zeta=1", "alpha=", "alpha=x"):
        with pytest.raises(InputError, match="--grid"):
            parse_grid([bad])


def test_a_failing_cell_is_retried_and_reported_not_dropped(tmp_path):
    workload = synthesize("overload", duration_scale=0.1)
    # alpha = beta = 0 is refused by EquinoxKnobs: that cell fails on every attempt.
    grid = {"alpha": [0.0, 1.0], "beta": [0.0]}
    results = run_sweep(workload, "equinox", grid, tmp_path, jobs=2, retries=2)
    by_name = {r.path.name: r for r in results}
    assert set(by_name) == {"alpha-0_beta-0", "alpha-1_beta-0"}
    failed, ok = by_name["alpha-0_beta-0"], by_name["alpha-1_beta-0"]
    assert failed.error is not None and "alpha + beta > 0" in failed.error and failed.attempts == 3
    assert ok.error is None and (ok.path / "equinox" / "requests.parquet").exists()


def test_sweep_command_writes_summary_and_frontier_and_exits_1_on_failure(tmp_path):
    runner = CliRunner()
    args = ["sweep", "--workload", "on-off-less", "--out", str(tmp_path), "--retries", "0"]
    result = runner.invoke(app, args + ["--grid", "alpha=0.5,1", "--grid", "beta=0.5"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "summary.csv").read_text().count("\n") == 3 and (tmp_path / "frontier.png").exists()
    result = runner.invoke(app, args + ["--grid", "alpha=0", "--grid", "beta=0"])
    assert result.exit_code == 1 and "FAILED cell alpha-0_beta-0" in result.output
