"""The self-contained HTML report: inline CSS, figures as base64 PNG, no network.

A small script marks ``<body>`` once the page has loaded: ``data-rendered="ok"`` when
every image decoded (non-zero natural width) and no script error occurred, with
``data-images``, ``data-images-loaded``, ``data-tables`` and ``data-errors`` counts
(the browser test reads them).
"""

from __future__ import annotations

import base64
import struct
from html import escape

from reports.audit import AuditResult
from reports.figures import Plot, client_colours, run_colours
from reports.policy import Check
from reports.tables import check_table, client_table, delta_table, summary_table, verdict

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24; margin: 0; }
header, main { max-width: 1120px; margin: 0 auto; padding: 0 20px; }
header { border-bottom: 1px solid #d0d7de; padding-bottom: 8px; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
nav a { margin-right: 12px; } .meta { color: #57606a; margin: 2px 0 8px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { padding: 3px 9px; border-bottom: 1px solid #eaeef2; white-space: nowrap; }
th { background: #f6f8fa; position: sticky; top: 0; text-align: left; } td.num, th.num { text-align: right; }
tr.fail td { background: #ffebe9; } tr.skip td { color: #57606a; } tr.pass td:nth-child(3) { color: #1a7f37; }
td.reason { white-space: normal; min-width: 320px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
figure { margin: 14px 0 22px; } img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 13px; max-width: 900px; } figcaption b { color: #1b1f24; }
details summary { cursor: pointer; margin: 6px 0; }
"""

SCRIPT = """
const auditErrors = [];
window.addEventListener("error", (event) => auditErrors.push(String(event.message)));
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  const marks = document.body.dataset;
  marks.images = images.length;
  marks.imagesLoaded = loaded;
  marks.tables = document.querySelectorAll("table").length;
  marks.errors = auditErrors.length;
  marks.rendered = loaded === images.length && auditErrors.length === 0 ? "ok" : "broken";
});
"""


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


def _table(header, rows, left: int, colours: dict | None = None, column: int | None = None, row_classes=None) -> str:
    """An HTML table, columns from ``left`` on right-aligned; header cells that name a key of ``colours``,
    and the body cells of ``column``, get that colour's swatch."""
    colours = colours or {}

    def cell(tag: str, i: int, text: str, marked: bool) -> str:
        css = ' class="reason"' if header[i] == "reason" else ' class="num"' if i >= left else ""
        mark = _swatch(colours[text]) if marked and text in colours else ""
        return f"<{tag}{css}>{mark}{escape(str(text))}</{tag}>"

    head = "".join(cell("th", i, h, True) for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        css = f' class="{row_classes[r]}"' if row_classes else ""
        body.append(f"<tr{css}>" + "".join(cell("td", i, v, i == column) for i, v in enumerate(row)) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _figure(plot: Plot) -> str:
    width, height = struct.unpack(">II", plot.png[16:24])  # the PNG header's IHDR size
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure id="fig-{escape(plot.key)}"><img src="data:image/png;base64,{data}" alt="{escape(plot.title)}" '
        f'width="{width}" height="{height}"><figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)}'
        "</figcaption></figure>"
    )


def _checks(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "skip")}
    line = f"{len(checks)} checks: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped."
    return f'<p class="meta">{line}</p>' + _table(*check_table(checks), left=4, row_classes=[c.status for c in checks])


def to_html(result: AuditResult, plots: list[Plot], checks: list[Check] = ()) -> str:
    """The whole report as one HTML document."""
    runs, clients = run_colours(result), client_colours(result)
    names = [run["name"] for run in result.runs]
    sections = ['<section id="summary"><h2>Runs side by side</h2>']
    sections += [f'<p class="verdict">{escape(line)}</p>' for line in verdict(result)]
    sections.append(_table(*summary_table(result), 1, runs))
    deltas = delta_table(result)
    if deltas:
        sections += ['</section><section id="baseline"><h2>Against the baseline</h2>', _table(*deltas, 1, runs)]
    if checks:
        sections += ['</section><section id="checks"><h2>Checks</h2>', _checks(checks)]
    sections.append('</section><section id="comparison"><h2>Across runs</h2>')
    sections += [_figure(p) for p in plots if p.run is None]
    nav = ["summary", "baseline" if deltas else None, "checks" if checks else None, "comparison"]
    links = [f'<a href="#{n}">{n}</a>' for n in nav if n]
    for i, run in enumerate(result.runs):
        anchor = f"run-{i + 1}"
        links.append(f'<a href="#{anchor}">{_swatch(runs[run["name"]])}{escape(run["name"])}</a>')
        req = run["requests"]
        workload = run["workload"].get("name") if isinstance(run["workload"], dict) else run["workload"]
        meta = (
            f"scheduler {run['scheduler']} · workload {workload} · "
            f"{req['total']:,} requests, {req['rejected']:,} rejected, {req['preemptions']:,} preemptions · "
            f"{run['path']}"
        )
        sections += [
            f'</section><section id="{anchor}"><h2>{_swatch(runs[run["name"]])}{escape(run["name"])}</h2>',
            f'<p class="meta">{escape(meta)}</p>',
            *(_figure(p) for p in plots if p.run == run["name"]),
            f"<details><summary>Per client ({len(run['clients'])} clients)</summary>",
            _table(*client_table([run]), 2, clients, column=1),
            "</details>",
        ]
    sections.append("</section>")
    title = "Equinox audit: " + ", ".join(names)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head>\n<body><header><h1>{escape(title)}</h1>"
        f"<nav>{' '.join(links)}</nav></header><main>\n" + "\n".join(sections) + "\n</main></body></html>\n"
    )
