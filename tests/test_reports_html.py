"""Figures, the HTML and Markdown reports, and the HTML report rendered in headless Chromium."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib import colormaps
from matplotlib.colors import to_hex
from test_reports_audit import write_run

from reports.audit import audit
from reports.figures import client_colours, palette, render, run_colours
from reports.html import to_html
from reports.markdown import write_markdown
from reports.policy import Policy, evaluate

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A baseline, two runs (one with Equinox counters), their checks and figures."""
    root = tmp_path_factory.mktemp("report")
    write_run(root / "base" / "vtc")
    write_run(root / "runs" / "vtc", busy_s=10.0)
    write_run(root / "runs" / "equinox", scheduler="equinox", counters=True)
    result = audit([root / "runs"], baseline=root / "base")
    checks = evaluate(result.runs, Policy(max_service_diff=0.02, min_jain=0.9, max_regression_pct=10))
    return root, result, checks, render(result)


def test_palette_is_keyed_by_sorted_name():
    tab10 = [to_hex(c) for c in colormaps["tab10"].colors]
    assert palette(["vtc", "fcfs", "lcf"]) == {"fcfs": tab10[0], "lcf": tab10[1], "vtc": tab10[2]}
    assert palette(["lcf", "fcfs", "vtc", "fcfs"]) == palette(["vtc", "fcfs", "lcf"])
    many = palette(f"c{i:02d}" for i in range(27))
    assert len(set(many.values())) == 27 and many["c00"] == to_hex(colormaps["tab20"].colors[0])


def test_colours_are_shared_across_runs(report):
    _, result, _, _ = report
    assert run_colours(result) == palette(["equinox", "vtc"])
    assert client_colours(result) == palette(["a", "b"])


def test_figures(report):
    _, _, _, plots = report
    keys = [p.key for p in plots]
    assert keys == [
        "service-difference",
        "latency",
        "1-equinox-service",
        "1-equinox-ttft",
        "1-equinox-counters",
        "2-vtc-service",
        "2-vtc-ttft",
    ]
    assert [p.run for p in plots] == [None, None, "equinox", "equinox", "equinox", "vtc", "vtc"]
    for plot in plots:
        assert plot.png.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", plot.png[16:24])
        assert 800 <= width <= 1100 and 300 <= height <= 900


def test_html_is_self_contained(report):
    _, result, checks, plots = report
    page = to_html(result, plots, checks)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from a network
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(plots) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert page.count("<table>") == 5  # runs, baseline, checks, and one per-client table per run
    assert '<tr class="fail"><td>equinox</td><td>service_diff</td>' in page
    assert 'id="baseline"' in page and "0.75 → 0.5 (-33.3%)" in page


def test_markdown_writes_figures_next_to_it(report, tmp_path):
    _, result, checks, plots = report
    write_markdown(result, plots, tmp_path / "report.md", checks)
    text = (tmp_path / "report.md").read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert links == [f"report-{p.key}.png" for p in plots]
    assert all((tmp_path / link).read_bytes() == plot.png for link, plot in zip(links, plots))
    for heading in ("## Schedulers", "## Against the baseline", "## Checks", "## Per client", "### Across runs"):
        assert heading in text
    assert "### equinox" in text and "### vtc" in text


class _Dom(HTMLParser):
    """The body's attributes and the count of each tag in a dumped DOM."""

    def __init__(self, text: str):
        super().__init__()
        self.body, self.tags = {}, {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "body":
            self.body = dict(attrs)


def test_html_report_renders_in_headless_chromium(report, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing and CI is set: .ci/run installs the Debian package chromium")
        pytest.skip(f"headless Chromium not installed ({CHROMIUM}; Debian package chromium)")
    _, result, checks, plots = report
    page = tmp_path / "report.html"
    page.write_text(to_html(result, plots, checks))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    flags += [f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom"]
    done = subprocess.run([str(CHROMIUM), *flags, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Dom(done.stdout)
    assert dom.body.get("data-rendered") == "ok", (dom.body, done.stderr[-2000:])
    assert dom.body["data-images"] == dom.body["data-images-loaded"] == str(len(plots))
    assert dom.body["data-tables"] == "5" and dom.body["data-errors"] == "0"
    assert dom.tags["img"] == len(plots) and dom.tags["table"] == 5 and dom.tags["figure"] == len(plots)
