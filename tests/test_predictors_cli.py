"""`equinox train-predictors`: train and evaluate, exit code 2 on bad input."""

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from engine.replay import replay
from equinox_cli.predictors_cmd import train_predictors
from traces.schema import make_table

app = typer.Typer()
app.command()(train_predictors)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 200
    prompt = rng.integers(10, 500, n)
    table = make_table(rng.choice(["a", "b"], n), np.cumsum(rng.exponential(0.05, n)), prompt, prompt // 4 + 5)
    out = tmp_path_factory.mktemp("cli") / "runs"
    replay(table, ["vtc"], out, preset="a100-llama2-7b")
    return out


@pytest.fixture(scope="module")
def trained(runs):
    bundle = runs.parent / "bundle"
    return invoke(runs, "--out", bundle), bundle


def test_train_prints_the_table_and_writes_a_bundle(trained):
    result, bundle = trained
    assert result.exit_code == 0, result.output
    for text in ("output_tokens", "step_s", "MoPE", "single", "moving avg", "MAE", "p99", f"wrote {bundle}"):
        assert text in result.output
    assert (bundle / "manifest.json").is_file() and (bundle / "models.npz").is_file()


def test_evaluate_scores_a_saved_bundle(runs, trained):
    result = invoke(runs / "vtc", "--evaluate", trained[1])
    assert result.exit_code == 0, result.output
    assert "200 requests" in result.output and "wrote" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["nowhere", "--out", "b"], "nowhere"),
        (["RUNS"], "give --out DIR to train, or --evaluate BUNDLE"),
        (["RUNS", "--out", "b", "--evaluate", "b"], "give --out DIR to train, or --evaluate BUNDLE"),
        (["RUNS", "--out", "b", "--holdout", "1.5"], "--holdout"),
        (["RUNS", "--evaluate", "RUNS"], "expected manifest.json"),
        (["RUNS", "--out", "RUNS"], "is not a predictor bundle; refusing to replace it"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke(*[runs if a == "RUNS" else a for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "b").exists()
