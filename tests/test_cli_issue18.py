"""Issue 18, item 10: `equinox --version`, replay --help naming every scheduler, `traces inspect` on a
trace without conversations, progress lines when stderr is not a terminal, and the counter figure's
named clients."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from rich.console import Console
from typer.testing import CliRunner

from equinox_cli.common import LineProgress
from equinox_cli.main import app
from reports.figures import counter_clients
from schedulers import POLICIES

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("equinox ") and len(result.output.split()) == 2


def test_replay_help_lists_every_scheduler():
    text = " ".join(runner.invoke(app, ["replay", "--help"]).output.replace("│", " ").split())
    for name in POLICIES:
        assert name in text, name
    assert "equinox, equinox-oracle" in text


def test_inspect_mooncake_says_no_conversation_ids_and_how_much_prefix_repeats():
    result = runner.invoke(app, ["traces", "inspect", str(DATA / "mooncake_sample.jsonl")], terminal_width=300)
    assert result.exit_code == 0, result.output
    first = next(line for line in result.output.splitlines() if line.strip())
    assert "0 conversations" not in first
    # 10 lines, 112 hash ids of which 80 distinct: 32 of 112 (29%) repeat an earlier block
    assert first.startswith("10 requests, 5 clients (no conversation ids) over 10.5 s")
    assert first.endswith("10 with prefix hashes: 112 blocks, 80 distinct, 29% repeat an earlier block")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_line_progress_prints_periodic_lines_not_only_the_last():
    buffer, clock = io.StringIO(), Clock()
    progress = LineProgress(Console(file=buffer, width=200), every_s=5.0, clock=clock)
    task = progress.add_task("overload / vtc", total=1000)
    for done, now in ((100, 1.0), (300, 5.5), (400, 7.0), (700, 11.0), (1000, 12.0), (1000, 13.0)):
        clock.now = now
        progress.update(task, completed=done)
    assert buffer.getvalue().splitlines() == [
        "overload / vtc: started (1,000 to do)",
        "overload / vtc: 300/1,000 (30%), 5.5 s",
        "overload / vtc: 700/1,000 (70%), 11.0 s",
        "overload / vtc: done, 1,000/1,000 in 12.0 s",
    ]


def test_replay_in_a_pipe_prints_progress_lines(tmp_path):
    result = runner.invoke(app, ["replay", "-s", "fcfs", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "overload / fcfs: started (1,620 to do)"
    assert lines[1].startswith("overload / fcfs: done, 1,620/1,620 in ")


def test_counter_figure_names_the_extreme_clients_only():
    rows = [(t, f"client-{c}", float(t * (c + 1))) for t in (0.0, 1.0) for c in range(8)]
    counters = pd.DataFrame(rows, columns=["time_s", "client_id", "ufc"])
    # final UFC grows with the client number: the two lowest and the two highest
    assert counter_clients(counters) == ["client-0", "client-1", "client-6", "client-7"]
    few = counters[counters["client_id"].isin(["client-3", "client-5", "client-1"])]
    assert counter_clients(few) == ["client-1", "client-3", "client-5"]


def test_sigterm_mid_replay_removes_the_temporary_directory_and_exits_143(tmp_path):
    """Item 6: SIGTERM while a run is being written leaves no ``.<scheduler>.*.tmp`` behind."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "equinox_cli.main", "replay", "--workload", "dist-shift"]
    proc = subprocess.Popen(
        [*command, "-s", "fcfs,vtc,equinox", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    for _ in range(2000):  # wait (by state, not by time) until the first run is being written
        if out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir()):
            break
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the replay ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output
    assert output.splitlines()[-1] == "terminated (SIGTERM): the run being written was discarded"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert not (out / "equinox").exists()


def test_a_rerun_removes_what_a_killed_replay_left(tmp_path):
    out = tmp_path / "out"
    for stale in (".fcfs.k9x2ab.tmp", ".fcfs.77yyzz.old"):
        (out / stale / "fcfs").mkdir(parents=True)
        (out / stale / "fcfs" / "steps.parquet").write_bytes(b"partial")
    (out / ".vtc.keepme.tmp").mkdir()  # another scheduler's: not this replay's to remove
    result = runner.invoke(app, ["replay", "-s", "fcfs", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"removed 2 temporary directories an interrupted replay left in {out}" in result.output
    assert sorted(p.name for p in out.iterdir()) == [".vtc.keepme.tmp", "fcfs"]


ROOT = Path(__file__).parent.parent


def test_docs_stand_alone():
    """Item 7: README and docs point at nothing outside the repository (no shared/ folder, no
    design file a user does not have), and the design reference is in docs/DESIGN.md."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        text = page.read_text()
        for needle in ("shared/", "ALGORITHMS.md", "ANCHORS.md"):
            assert needle not in text, f"{page.relative_to(ROOT)} mentions {needle}"
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    for heading in ("## Schedulers", "## Metrics", "## Workloads", "## The engine"):
        assert heading in design
    from traces import SYNTHETIC_WORKLOADS

    for name in SYNTHETIC_WORKLOADS:
        assert f"| `{name}` |" in design, name


def test_readme_main_command_replays_fcfs_vtc_and_equinox_on_a_built_in_workload():
    """Item 8: the two-commands shape, with the project's namesake in the main job."""
    readme = (ROOT / "README.md").read_text()
    main = next(line for line in readme.splitlines() if line.startswith("pip install -e . && equinox replay"))
    assert "--workload lmsys --scheduler fcfs,vtc,equinox" in main and "&& equinox audit runs/lmsys" in main


def test_the_readme_main_job_shows_what_the_readme_says(tmp_path):
    """Item 8, measured: on lmsys FCFS breaks the VTC bound and has the lowest Jain's index, while VTC
    and Equinox keep the bound; the audit's first line says so."""
    out = tmp_path / "runs" / "lmsys"
    assert (
        runner.invoke(app, ["replay", "--workload", "lmsys", "-s", "fcfs,vtc,equinox", "--out", str(out)]).exit_code
        == 0
    )
    result = runner.invoke(app, ["audit", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "VTC bound kept by equinox, vtc; broken by fcfs."
    import json

    runs = {
        r["name"]: r for r in json.loads(runner.invoke(app, ["audit", str(out), "--format", "json"]).stdout)["runs"]
    }
    jain = {name: run["fairness"]["jain"] for name, run in runs.items()}
    assert jain["fcfs"] < min(jain["vtc"], jain["equinox"])
    assert runs["fcfs"]["fairness"]["jain_ttft"] > max(
        runs["vtc"]["fairness"]["jain_ttft"], runs["equinox"]["fairness"]["jain_ttft"]
    )
