"""Writing a comparison: ``report.json``, ``report.md``, ``report.html`` and the PNGs beside them.

The report dict is rounded once (``common.rnd``) before anything is written; the Markdown and HTML show those very
values through the formatters of ``tables`` (22.7 M, 85.3 %), never values of their own.
"""

from __future__ import annotations

from pathlib import Path

from .common import rnd, write_json
from .plots import summary_plot
from .report_html import html_page
from .tables import LOWER_IS_BETTER, Table, report_tables, title

SUMMARY_PLOT = "summary.png"


def retained_pct(student: float | None, teacher: float | None, key: str) -> float | None:
    """Share of the teacher's quality the student keeps, in %: 100·S/T, or 100·T/S for lower-is-better metrics
    (perplexity, bits per byte). None when undefined (missing value or a zero denominator)."""
    if student is None or teacher is None:
        return None
    num, den = (teacher, student) if key in LOWER_IS_BETTER else (student, teacher)
    return 100.0 * num / den if den else None


def markdown_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.headers) + " |", "|" + "|".join("---" for _ in table.headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows]
    return lines


def markdown(report: dict) -> str:
    task = report["task"]
    lines = [f"# {title(report)}", ""]
    settings = ", ".join(f"{k}={v}" for k, v in report["settings"].items())
    lines += [f"Task: {task['kind']} on `{task['source']}` ({task['num_examples']} {task['unit']}). {settings}.", ""]
    if report.get("warnings"):
        lines += ["> **Timing warnings**", ">"] + [f"> - {w}" for w in report["warnings"]] + [""]
    for table in report_tables(report):
        lines += [f"## {table.title}", "", *markdown_table(table), ""]
        lines += [*table.notes, ""] if table.notes else []
    lines += [f"![summary]({SUMMARY_PLOT})", ""]
    trained = [m for m in report["models"] if m.get("training")]
    if trained:
        lines += ["## Training curves", ""]
        for m in trained:
            tr = m["training"]
            stages = " → ".join(name for _, name in tr["stages"])
            finals = ", ".join(f"{k} {v}" for k, v in tr["final"].items())
            lines += [
                f"- {m['name']}: {stages} ({tr['last_step']} steps); last values: {finals}",
                "",
                f"  ![{m['name']} training curves]({tr['plot']})",
                "",
            ]
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | Path) -> dict:
    """Round ``report`` once, plot, and write ``report.json``, ``report.md`` and ``report.html`` to ``out_dir``.

    Returns the rounded report that was written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = rnd(report)
    summary_plot(report, out_dir / SUMMARY_PLOT)
    report["plots"] = [*report.get("plots", []), SUMMARY_PLOT]
    write_json(report, out_dir / "report.json")
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    (out_dir / "report.html").write_text(html_page(report, out_dir), encoding="utf-8")
    return report
