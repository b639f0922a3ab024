"""``report.html``: the tables and plots of a report in one self-contained file.

Plots are embedded as base64 ``data:`` URIs and the style sheet is inline: the file opens offline, can be mailed or
attached to a ticket on its own, and loads nothing from anywhere.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from .tables import report_tables, title

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; white-space: normal; vertical-align: bottom; }
td:first-child, th:first-child { text-align: left; font-weight: 600; }
p.note { color: #555; font-size: 0.88em; max-width: 1000px; }
.warn { background: #fff4e0; border-left: 4px solid #e08a00; padding: 0.5em 1em; }
.verdict-better, .verdict-faster { color: #1a7f37; font-weight: 600; }
.verdict-worse, .verdict-slower { color: #c62828; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; }
.scroll { overflow-x: auto; }  /* a table wider than the page scrolls in its box instead of running off the edge */
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _cell(text: str, tag: str = "td") -> str:
    cls = ""
    for word in ("better", "worse", "faster", "slower"):
        if text == word or text.endswith(f" {word}"):
            cls = f' class="verdict-{word}"'
    return f"<{tag}{cls}>{escape(text)}</{tag}>"


def html_page(report: dict, out_dir: str | Path) -> str:
    """The whole page; PNGs named in the report are read from ``out_dir`` and embedded."""
    out_dir = Path(out_dir)
    task = report["task"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title(report))}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title(report))}</h1>",
        f"<p>Task: {escape(task['kind'])} on <code>{escape(str(task['source']))}</code> "
        f"({task['num_examples']} {escape(task['unit'])}).</p>",
    ]
    if report.get("warnings"):
        items = "".join(f"<li>{escape(w)}</li>" for w in report["warnings"])
        parts.append(f'<div class="warn"><strong>Timing warnings</strong><ul>{items}</ul></div>')
    for table in report_tables(report):
        parts.append(f'<h2>{escape(table.title)}</h2><div class="scroll"><table>')
        parts.append("<tr>" + "".join(_cell(h, "th") for h in table.headers) + "</tr>")
        parts += ["<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in table.rows]
        parts.append("</table></div>")
        parts += [f'<p class="note">{escape(n)}</p>' for n in table.notes]
    parts.append("<h2>Summary</h2>")
    parts.append(f'<img alt="summary plot" src="{data_uri(out_dir / "summary.png")}">')
    trained = [m for m in report["models"] if m.get("training")]
    if trained:
        parts.append("<h2>Training curves</h2>")
        for m in trained:
            tr = m["training"]
            stages = " → ".join(name for _, name in tr["stages"])
            parts.append(f"<p><strong>{escape(m['name'])}</strong>: {escape(stages)} ({tr['last_step']} steps)</p>")
            parts.append(f'<img alt="{escape(m["name"])} training curves" src="{data_uri(out_dir / tr["plot"])}">')
    settings = ", ".join(f"{k}={v}" for k, v in report["settings"].items())
    parts.append(f'<p class="note">Settings: {escape(settings)}. Numbers as in report.json.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
