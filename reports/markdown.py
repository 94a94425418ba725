"""The Markdown report: the tables, and the figures as PNG files written next to it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engine.results import atomic_write_text
from reports.audit import AuditResult
from reports.figures import Plot
from reports.policy import Check
from reports.tables import check_table, client_table, delta_table, markdown_table, summary_table, verdict


def to_markdown(result: AuditResult, checks: list[Check] = (), images: list[tuple[Plot, str]] = ()) -> str:
    """Runs side by side, deltas, checks and per-client tables; ``images`` pairs each figure with its file name."""
    parts = ["## Schedulers", "", *(line for text in verdict(result) for line in (text, "")),
             markdown_table(*summary_table(result), left=1), ""]  # fmt: skip
    deltas = delta_table(result)
    if deltas:
        parts += ["## Against the baseline", "", markdown_table(*deltas, left=1), ""]
    if checks:
        failed = sum(c.status == "fail" for c in checks)
        parts += ["## Checks", "", f"{len(checks)} checks, {failed} failed.", ""]
        parts += [markdown_table(*check_table(checks), left=4), ""]
    parts += ["## Per client", "", markdown_table(*client_table(result.runs), left=2), ""]
    if images:
        parts += ["## Figures", ""]
    heading = None
    for plot, file in images:
        if (plot.run or "Across runs") != heading:
            heading = plot.run or "Across runs"
            parts += [f"### {heading}", ""]
        parts += [f"![{plot.title}]({file})", "", f"*{plot.caption}*", ""]
    return "\n".join(parts)


def _write_bytes(data: bytes, path: Path) -> None:
    """Write a file atomically (temporary name, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_markdown(result: AuditResult, plots: list[Plot], path: Path, checks: list[Check] = ()) -> None:
    """Write ``path`` and its figures beside it, named ``<stem>-<figure>.png``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [(plot, f"{path.stem}-{plot.key}.png") for plot in plots]
    for plot, file in images:
        _write_bytes(plot.png, path.parent / file)
    atomic_write_text(to_markdown(result, checks, images), path)
