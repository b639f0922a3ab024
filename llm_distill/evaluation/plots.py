"""The report's summary figure: quality with its interval, size, and speed with its spread, one panel each.

Bars encode magnitudes, so their axes start at 0 (parameters, latency, throughput). Quality is drawn as points
with 95 % error bars on an axis zoomed to the intervals: differences of a point or two matter there and a bar
from 0 would hide them; the teacher's value is a dashed reference line.
"""

from __future__ import annotations

from pathlib import Path

from .tables import PERCENT_KEYS, PRIMARY, fmt_count, fmt_sig

TEACHER_COLOUR = "#555555"
STUDENT_COLOURS = ("#3b7dd8", "#e07b39", "#4aa564", "#9467bd", "#c44e52")


def _colours(models: list[dict]) -> list[str]:
    out, i = [], 0
    for m in models:
        if m["role"] == "teacher":
            out.append(TEACHER_COLOUR)
        else:
            out.append(STUDENT_COLOURS[i % len(STUDENT_COLOURS)])
            i += 1
    return out


def _quality_panel(ax, report: dict, colours: list[str]) -> None:
    kind = report["task"]["kind"]
    key = PRIMARY[kind]
    scale = 100.0 if key in PERCENT_KEYS else 1.0
    models = report["models"]
    xs = range(len(models))
    for x, m, c in zip(xs, models, colours):
        v = m["quality"][key] * scale
        lo, hi = (b * scale for b in m["quality_ci"].get(key, [m["quality"][key]] * 2))
        ax.errorbar([x], [v], yerr=[[v - lo], [hi - v]], fmt="o", color=c, markersize=8, capsize=6, linewidth=2)
        label = f"{v:.1f} %" if scale == 100 else fmt_sig(v)
        ax.annotate(label, (x, v), xytext=(9, -3), textcoords="offset points", fontsize=9, color=c)
    teacher = models[0]["quality"][key] * scale
    ax.axhline(teacher, color=TEACHER_COLOUR, linestyle="--", linewidth=1, label=f"teacher {teacher:.1f}")
    lows = [b[0] * scale for b in (m["quality_ci"].get(key) for m in models) if b]
    highs = [b[1] * scale for b in (m["quality_ci"].get(key) for m in models) if b]
    if lows:
        pad = 0.25 * (max(highs) - min(lows)) + 1e-9
        top = max(highs) + pad
        ax.set_ylim(min(lows) - pad, min(top, 100.0 + pad / 4) if scale == 100 else top)
    unit = " (%)" if scale == 100 else ""
    arrow = "lower is better" if kind == "causal_lm" else "higher is better"
    ax.set_title(f"{key}{unit}, 95 % CI ({arrow})")
    ax.set_xticks(list(xs), [m["name"] for m in models])
    ax.set_xlim(-0.5, len(models) - 0.3)


def _bar_panel(ax, models, colours, values, title, label_fmt, rounds=None, spreads=None) -> None:
    """Bars from 0; with ``rounds``, every round as a grey dot and (``spreads``: (median, [p25, p75]) per model)
    the rounds' median and interquartile range as a black point and line beside the bar."""
    xs = list(range(len(models)))
    ax.bar(xs, values, color=colours, width=0.6)
    for x, samples in zip(xs, rounds or []):
        jitter = [x - 0.2 + 0.4 * i / max(1, len(samples) - 1) for i in range(len(samples))]
        ax.scatter(jitter, samples, s=7, color="black", alpha=0.3, zorder=3, linewidths=0)
    for x, (median, (p25, p75)) in zip(xs, spreads or []):
        ax.errorbar([x + 0.36], [median], yerr=[[median - p25], [p75 - median]], fmt="o", color="black",
                    markersize=4, capsize=3, linewidth=1.2)  # fmt: skip
    for x, v in zip(xs, values):
        ax.annotate(label_fmt(v), (x, v), xytext=(-4, 3), textcoords="offset points", fontsize=9, ha="right")
    ax.set_ylim(bottom=0)
    ax.set_xlim(-0.5, len(models) - 0.3)
    ax.set_title(title)
    ax.set_xticks(xs, [m["name"] for m in models])


def summary_plot(report: dict, path: str | Path) -> str:
    """Quality (points, 95 % CI), parameters, batch-1 latency and throughput (bars from 0: best of rounds; dots:
    every timing round; black: the rounds' median and interquartile range), titled with the model and task names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    colours = _colours(models)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _quality_panel(axes[0, 0], report, colours)
    _bar_panel(axes[0, 1], models, colours, [m["parameters"] / 1e6 for m in models], "parameters (millions)",
               lambda v: fmt_count(v * 1e6))  # fmt: skip
    _bar_panel(axes[1, 0], models, colours, [m["latency_ms_per_example"] for m in models],
               "batch-1 latency, ms per example (lower is better)\nbar: best of rounds; dots: rounds; "
               "black: median, IQR", lambda v: f"{fmt_sig(v)} ms",
               rounds=[m["latency_rounds_ms"] for m in models],
               spreads=[(m["latency_typical_ms"], m["latency_rounds_iqr_ms"]) for m in models])  # fmt: skip
    unit = report["task"]["throughput_unit"]
    _bar_panel(axes[1, 1], models, colours, [m["throughput_examples_per_s"] for m in models],
               f"throughput, {unit}/s at batch {report['timing']['batch_size']} (higher is better)\n"
               "bar: best of rounds; dots: rounds; black: median, IQR", fmt_sig,
               rounds=[m["throughput_rounds"] for m in models],
               spreads=[(m["throughput_typical"], m["throughput_rounds_iqr"]) for m in models])  # fmt: skip
    for ax in axes.flat:
        ax.tick_params(axis="x", labelsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.title.set_fontsize(10)
    names = " vs ".join(m["name"] for m in models)
    sizes = ", ".join(f"{m['name']} {fmt_count(m['parameters'])}" for m in models)
    fig.suptitle(f"{names} on {report['task']['name']} ({report['task']['num_examples']} {report['task']['unit']})"
                 f"\nparameters: {sizes}", fontsize=11)  # fmt: skip
    bottom = 0.0
    if report.get("warnings"):
        fig.text(0.5, 0.01, "the machine was busy while timing: speed-ups (side by side) hold, absolute times are "
                 "inflated; see the report's warnings", ha="center", fontsize=9, color="#c62828")  # fmt: skip
        bottom = 0.03
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
