"""The report's tables as rows of display strings, shared by ``report.md`` and ``report.html``.

Numbers come from the rounded report dict (``report.json``) and are only *formatted* here — sizes as 22.7 M,
percentages to one decimal, times to three significant digits — so that what a reader sees is what the JSON holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

QUALITY_KEYS = {"classification": ("accuracy", "f1", "f1_macro", "mcc"), "causal_lm": ("perplexity", "bits_per_byte")}
PRIMARY = {"classification": "accuracy", "causal_lm": "bits_per_byte"}
LOWER_IS_BETTER = {"perplexity", "bits_per_byte", "nll_per_token"}
PERCENT_KEYS = {"accuracy", "f1", "f1_macro", "top1_agreement", "top5_agreement"}
DASH = "–"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def fmt_count(n: int | float | None) -> str:
    """22713216 -> '22.7 M'; 1234 -> '1.2 k'; 999 -> '999'."""
    if n is None:
        return DASH
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:g}"


def fmt_bytes(n: int | float | None) -> str:
    """90909090 -> '90.9 MB' (decimal units, as disk sizes are usually quoted)."""
    if n is None:
        return DASH
    for div, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:g} B"


def fmt_sig(x: float | None, digits: int = 3) -> str:
    """Three significant digits without scientific notation for everyday magnitudes: 5.213 -> '5.21',
    412.7 -> '413', 0.012345 -> '0.0123'."""
    if x is None:
        return DASH
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    if decimals > 6:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{decimals}f}"


def fmt_pct(x: float | None) -> str:
    """A fraction as a percentage to one decimal: 0.85321 -> '85.3 %'."""
    return DASH if x is None else f"{100 * x:.1f} %"


def fmt_ci(ci: list[float] | None, fmt=fmt_sig) -> str:
    """'[lo, hi]' with each end formatted by ``fmt``, without the unit (the value beside it, or the header, has it)."""
    if not ci:
        return ""
    return "[" + ", ".join(fmt(v).split(" ")[0].rstrip("×") for v in ci) + "]"


def with_ci(value: float | None, ci: list[float] | None, fmt=fmt_sig) -> str:
    if value is None:
        return DASH
    return f"{fmt(value)} {fmt_ci(ci, fmt)}".rstrip()


def fmt_points(diff: float | None) -> str:
    """A difference of two fractions in percentage points, signed: -0.0034 -> '−0.3 pt'."""
    if diff is None:
        return DASH
    return f"{100 * diff:+.1f} pt".replace("-", "−")


def fmt_p(p: float | None) -> str:
    if p is None:
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def fmt_ratio(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}×"


def speed_words(ratio: float | None, ci: list[float] | None, verdict: str | None) -> str:
    """'1.38× [1.33, 1.42] faster' or '0.97× [0.92, 1.03] within noise'."""
    if ratio is None:
        return DASH
    return f"{fmt_ratio(ratio)} {fmt_ci(ci, lambda v: f'{v:.2f}')} {verdict or ''}".strip()


def title(report: dict) -> str:
    names = [m["name"] for m in report["models"]]
    return f"Distillation report: {names[0]} vs {', '.join(names[1:])} on {report['task']['name']}"


def quality_table(report: dict) -> Table:
    kind = report["task"]["kind"]
    keys = QUALITY_KEYS[kind]
    primary = PRIMARY[kind]
    headers = ["model", "role", *(f"{k} (95 % CI)" if k in report["models"][0]["quality_ci"] else k for k in keys)]
    headers.append(f"{primary}: % of teacher")
    rows = []
    for m in report["models"]:
        cells = [m["name"], m["role"]]
        for k in keys:
            fmt = fmt_pct if k in PERCENT_KEYS else fmt_sig
            cells.append(with_ci(m["quality"].get(k), m["quality_ci"].get(k), fmt))
        retained = m.get("retained_pct", {}).get(primary)
        cells.append(DASH if retained is None else f"{retained:.1f} %")
        rows.append(cells)
    notes = [
        f"{report['task']['num_examples']} {report['task']['unit']}. Intervals: "
        + ("Wilson score (accuracy)." if kind == "classification" else "bootstrap over the scoring windows.")
        + " % of teacher = 100·student/teacher"
        + (" (teacher/student for perplexity)" if kind == "causal_lm" else "")
        + ": a ratio of point estimates; whether a difference is real is the paired test's call below."
    ]
    return Table("Quality", headers, rows, notes)


def comparison_table(report: dict) -> Table | None:
    comps = report.get("comparisons") or []
    if not comps:
        return None
    kind = report["task"]["kind"]
    if kind == "classification":
        headers = ["model", "against", "Δ accuracy", "95 % CI", "only model right / only other right",
                   "p (McNemar mid-p; exact)", "verdict"]  # fmt: skip
        rows = [
            [
                c["model"],
                c["against"],
                fmt_points(c["difference"]),
                fmt_ci(c["difference_ci"], fmt_points),
                f"{c['b']} / {c['c']}",
                f"{fmt_p(c['mid_p'])}; {fmt_p(c['exact_p'])}",
                c["verdict"],
            ]  # fmt: skip
            for c in comps
        ]
        note = ("Paired on the same examples: the difference of accuracies with Newcombe's paired score interval; "
                "McNemar's test on the examples exactly one of the two gets right; "
                "verdict at mid-p < 0.05.")  # fmt: skip
    else:
        headers = ["model", "against", "perplexity ratio", "95 % CI", "p (paired bootstrap)", "verdict"]
        rows = [
            [
                c["model"],
                c["against"],
                fmt_ratio(c["perplexity_ratio"]),
                fmt_ci(c["perplexity_ratio_ci"], fmt_ratio),
                fmt_p(c["p_value"]),
                c["verdict"],
            ]  # fmt: skip
            for c in comps
        ]
        note = ("Paired on the same windows (same tokenizer): ratio of perplexities = exp(Δ NLL per token), "
                "bootstrap over windows; verdict at p < 0.05.")  # fmt: skip
    return Table("Is the difference real? (paired tests)", headers, rows, [note])


def speed_table(report: dict) -> Table:
    t = report["timing"]
    unit = report["task"]["throughput_unit"]
    headers = ["model", "parameters", "disk", "batch-1 latency, ms", "rounds: median [IQR]",
               "speed-up vs teacher (95 % CI)", f"throughput, {unit}/s", "rounds: median [IQR]",
               "throughput vs teacher (95 % CI)", "compression"]  # fmt: skip
    rows = []
    for m in report["models"]:
        student = m["role"] != "teacher"
        rows.append([
            m["name"], fmt_count(m["parameters"]), fmt_bytes(m["disk_bytes"]),
            fmt_sig(m["latency_ms_per_example"]), with_ci(m["latency_typical_ms"], m["latency_rounds_iqr_ms"]),
            speed_words(m.get("speedup"), m.get("speedup_ci"), m.get("speedup_verdict")) if student else "1×",
            fmt_sig(m["throughput_examples_per_s"]), with_ci(m["throughput_typical"], m["throughput_rounds_iqr"]),
            speed_words(m.get("throughput_ratio"), m.get("throughput_ratio_ci"), m.get("throughput_ratio_verdict"))
            if student else "1×",
            fmt_ratio(m["compression"]),
        ])  # fmt: skip
    notes = [
        f"Timed interleaved in one process on {t['device']} with {t['threads']} thread(s): {t['rounds']} rounds, each "
        f"running every model on the same {report['settings']['timing_examples']} examples one after the other, at "
        f"batch 1 and in batches of {t['batch_size']}, after {t['warmup']} warm-up rounds. Latency and throughput are "
        "the best of rounds (each input's fastest run: other processes only ever add time); the rounds' median and "
        "interquartile range show the spread, and how disturbed the machine was (the timing process got "
        f"{fmt_pct(t['cpu_share'])} of the CPU time it asked for). Speed-ups are ratios of best-of-rounds figures, "
        "with 95 % intervals from a bootstrap over rounds."
    ]
    return Table("Size and speed", headers, rows, notes)


def agreement_table(report: dict) -> Table | None:
    students = [m for m in report["models"] if m.get("distillation")]
    if not students:
        return None
    headers = ["student", "KL(T‖S) (95 % CI)", "top-1 agreement (95 % CI)", "top-5 agreement (95 % CI)",
               "ECE teacher", "ECE student", "counted"]  # fmt: skip
    rows = []
    for m in students:
        d = m["distillation"]
        rows.append([
            m["name"], with_ci(d["kl"], d.get("kl_ci")),
            with_ci(d["top1_agreement"], d.get("top1_agreement_ci"), fmt_pct),
            with_ci(d["top5_agreement"], d.get("top5_agreement_ci"), fmt_pct), fmt_sig(d["ece_teacher"]),
            fmt_sig(d["ece_student"]), fmt_count(d["num_counted"]),
        ])  # fmt: skip
    unit = "examples" if report["task"]["kind"] == "classification" else "windows"
    notes = [f"KL at T = 1 in nats per {report['task']['unit'][:-1]}; intervals: bootstrap over {unit}."]
    skipped = [f"{m['name']}: {m['distillation_note']}" for m in report["models"] if m.get("distillation_note")]
    if skipped:
        notes.append("Not computed: " + "; ".join(skipped))
    return Table("Teacher-student agreement", headers, rows, notes)


def report_tables(report: dict) -> list[Table]:
    tables = [quality_table(report), comparison_table(report), speed_table(report), agreement_table(report)]
    return [t for t in tables if t is not None]
