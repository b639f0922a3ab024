"""Rendering a comparison: ``report.json``, ``report.md`` and the summary PNG.

The report dict is rounded once (``common.rnd``) before anything is written; the Markdown cells are ``str()`` of
those very values, so every number in ``report.md`` is exactly a number in ``report.json``.
"""

from __future__ import annotations

from pathlib import Path

from .common import rnd, write_json

QUALITY_KEYS = {"classification": ("accuracy", "f1", "f1_macro", "mcc"), "causal_lm": ("perplexity", "bits_per_byte")}
PRIMARY = {"classification": "accuracy", "causal_lm": "bits_per_byte"}
LOWER_IS_BETTER = {"perplexity", "bits_per_byte"}

# (header, key in a model entry) of the main table, after the quality columns.
SIZE_COLUMNS = (
    ("params", "parameters"),
    ("disk MB", "disk_mb"),
    ("latency ms/ex", "latency_ms_per_example"),
    ("throughput ex/s", "throughput_examples_per_s"),
    ("speed-up ×", "speedup"),
    ("compression ×", "compression"),
)
DISTILL_COLUMNS = (
    ("KL(T‖S)", "kl"),
    ("top-1 agr.", "top1_agreement"),
    ("top-5 agr.", "top5_agreement"),
    ("ECE teacher", "ece_teacher"),
    ("ECE student", "ece_student"),
    ("counted", "num_counted"),
)


def retained_pct(student: float | None, teacher: float | None, key: str) -> float | None:
    """Share of the teacher's quality the student keeps, in %: 100·S/T, or 100·T/S for lower-is-better metrics
    (perplexity, bits per byte). None when undefined (missing value or a zero denominator)."""
    if student is None or teacher is None:
        return None
    num, den = (teacher, student) if key in LOWER_IS_BETTER else (student, teacher)
    return 100.0 * num / den if den else None


def cell(value) -> str:
    """A Markdown cell for one JSON value; no formatting of its own so the digits stay those of the JSON."""
    return "–" if value is None else str(value)


def _table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def markdown(report: dict) -> str:
    kind = report["task"]["kind"]
    qkeys = QUALITY_KEYS[kind]
    primary = PRIMARY[kind]
    task = report["task"]
    lines = [f"# Distillation report: {task['source']}", ""]
    settings = ", ".join(f"{k}={v}" for k, v in report["settings"].items())
    lines += [f"Task: {kind} on `{task['source']}` ({task['num_examples']} {task['unit']}). Settings: {settings}.", ""]
    headers = ["model", "role", *qkeys, f"{primary} retained %", *(h for h, _ in SIZE_COLUMNS)]
    rows = []
    for m in report["models"]:
        rows.append(
            [m["name"], m["role"], *(m["quality"].get(k) for k in qkeys), m["retained_pct"].get(primary)]
            + [m.get(key) for _, key in SIZE_COLUMNS]
        )
    lines += ["## Quality, size and speed", "", *_table(headers, rows), ""]
    lines += [
        "Retained % is 100·student/teacher (100·teacher/student for perplexity and bits per byte). Latency: batch 1, "
        "median of repeats; throughput: batches of the timing batch size; both on the same inputs for every model.",
        "",
    ]
    students = [m for m in report["models"] if m["role"] == "student"]
    distill_rows = [
        [m["name"], *(m["distillation"].get(k) for _, k in DISTILL_COLUMNS)] for m in students if m.get("distillation")
    ]
    if distill_rows:
        lines += [
            "## Teacher-student agreement",
            "",
            *_table(["student", *(h for h, _ in DISTILL_COLUMNS)], distill_rows),
            "",
        ]
    skipped = [f"- {m['name']}: {m['distillation_note']}" for m in students if m.get("distillation_note")]
    if skipped:
        lines += ["Agreement not computed:", *skipped, ""]
    trained = [m for m in students if m.get("training")]
    if trained:
        lines += ["## Training curves", ""]
        for m in trained:
            tr = m["training"]
            finals = ", ".join(f"{k}={v}" for k, v in tr["final"].items())
            lines += [
                f"- {m['name']}: `{tr['source']}` (up to step {tr['last_step']}); last values: {finals}",
                f"  ![{m['name']} curves]({tr['plot']})",
            ]
        lines.append("")
    shown = {m["training"]["plot"] for m in trained}  # curves are already under their student
    lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"] if p not in shown] + [""]
    return "\n".join(lines)


def summary_plot(report: dict, path: str | Path) -> str:
    """Bar charts: primary-metric retained %, parameters, latency and throughput per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = report["task"]["kind"]
    primary = PRIMARY[kind]
    names = [m["name"] for m in report["models"]]
    panels = [
        # The teacher keeps 100 % of itself by definition; its JSON entry has no retained_pct.
        (
            f"{primary} retained %",
            [100.0 if m["role"] == "teacher" else m["retained_pct"].get(primary) for m in report["models"]],
        ),
        ("parameters (M)", [m["parameters"] / 1e6 for m in report["models"]]),
        ("latency ms / example (batch 1)", [m["latency_ms_per_example"] for m in report["models"]]),
        ("throughput examples / s", [m["throughput_examples_per_s"] for m in report["models"]]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    colors = ["#555555"] + ["#3b7dd8"] * (len(names) - 1)
    for ax, (title, values) in zip(axes.flat, panels):
        ax.bar(names, [v if v is not None else 0.0 for v in values], color=colors)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{kind}: {report['task']['source']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def write_report(report: dict, out_dir: str | Path) -> dict:
    """Round ``report`` once, plot, and write ``report.json`` + ``report.md`` (+ ``summary.png``) to ``out_dir``.

    Returns the rounded report that was written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = rnd(report)
    report["plots"] = [*report.get("plots", []), Path(summary_plot(report, out_dir / "summary.png")).name]
    write_json(report, out_dir / "report.json")
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    return report
