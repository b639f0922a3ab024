"""The report command on tiny teacher/student pairs: files written, tables == formatted JSON, intervals, verdicts,
training curves across stages, and a self-contained HTML page."""

import base64
import json
import os
import re
from html.parser import HTMLParser

import pytest
import torch
from _eval_tiny import save, tiny_bert_classifier, tiny_llama, tiny_tokenizer, write_sst2_like

from llm_distill.evaluation import compare
from llm_distill.evaluation.curves import run_curves, stage_folders
from llm_distill.evaluation.report import retained_pct
from llm_distill.evaluation.stats import wilson_interval
from llm_distill.evaluation.tables import (
    fmt_bytes,
    fmt_count,
    fmt_p,
    fmt_pct,
    fmt_points,
    fmt_sig,
    report_tables,
    speed_words,
    with_ci,
)

FAST_TIMING = {"timing_examples": 3, "timing_batch_size": 2, "warmup": 1, "repeats": 2, "max_repeats": 2}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny models on a shared 2-core machine: thread hand-offs cost more than they save (observed 10x slower).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _write_stage(folder, steps: int, keys: tuple[str, ...], teacher: str | None, mtime: float, eval_acc=None):
    """A finished stage as the trainer leaves it: trainer_state.json (+ distillation.json for distillation runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"step": s, **{k: 1.0 / s for k in keys}} for s in range(5, steps + 1, 5)]
    if eval_acc is not None:
        history.append({"step": steps, "eval_accuracy": eval_acc, "eval_loss": 0.4, "eval_runtime": 0.1})
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": steps, "log_history": history}))
    if teacher is not None:
        (folder / "distillation.json").write_text(json.dumps({"teacher": teacher}))
    os.utime(folder / "trainer_state.json", (mtime, mtime))


def _md_tables(md: str) -> dict[str, list[list[str]]]:
    """{section title: rows (header row first)} of every table under a '## ' heading."""
    tables, section, lines = {}, None, md.splitlines()
    for line in lines:
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("|") and not line.startswith("|---") and section:
            tables.setdefault(section, []).append([c.strip() for c in line.strip("|").split(" | ")])
    return tables


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.srcs, self.rows, self._row, self._cell = [], [], [], None, None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        self.srcs += [v for k, v in attrs.items() if k in ("src", "href")]
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self.rows.append(self._row)


@pytest.fixture(scope="module")
def classifier_report(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("cls")
    tok = tiny_tokenizer()
    teacher = save(tiny_bert_classifier(hidden=64, seed=0), tok, tmp / "teacher")
    # A two-stage distillation run (stage folders side by side) and a plain fine-tuning run, as the demo makes.
    run = tmp / "kd-run"
    _write_stage(run / "stage1-features", 20, ("loss", "hidden_loss", "attention_loss"), teacher, 1_000_000)
    kd = save(tiny_bert_classifier(layers=1, hidden=32, seed=1), tok, run / "stage2-logits")
    _write_stage(run / "stage2-logits", 10, ("loss", "kd_loss", "agreement"), teacher, 2_000_000, eval_acc=0.5)
    plain = save(tiny_bert_classifier(layers=1, hidden=32, seed=2), tok, tmp / "plain")
    _write_stage(tmp / "plain", 30, ("loss",), None, 3_000_000, eval_acc=0.6)
    (tmp / "sst2").mkdir()
    data = write_sst2_like(tmp / "sst2" / "validation.jsonl", n=24)
    out = tmp / "report"
    report = compare.compare(teacher, [kd, plain], out, dataset=data, device="cpu", batch_size=8,
                             names=["teacher", "kd-4L", "plain-4L"], baseline="plain-4L", **FAST_TIMING)  # fmt: skip
    return report, out


def test_report_files_and_json(classifier_report):
    report, out = classifier_report
    for name in ("report.json", "report.md", "report.html", "summary.png", "curves_kd-4L.png", "curves_plain-4L.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "report.json").read_text()) == report
    md = (out / "report.md").read_text()
    assert md.count("(summary.png)") == 1 and md.count("(curves_kd-4L.png)") == 1
    title = md.splitlines()[0]
    assert (
        title == "# Distillation report: teacher vs kd-4L, plain-4L on sst2 validation"
        and str(out) not in md.splitlines()[0]
    )


def test_markdown_tables_are_the_formatted_json(classifier_report):
    report, out = classifier_report
    md_tables = _md_tables((out / "report.md").read_text())
    for table in report_tables(report):
        assert md_tables[table.title] == [table.headers, *table.rows], table.title
    teacher, kd, plain = report["models"]
    quality = md_tables["Quality"]
    assert quality[1][2] == with_ci(teacher["quality"]["accuracy"], teacher["quality_ci"]["accuracy"], fmt_pct)
    assert re.fullmatch(r"\d+\.\d % \[\d+\.\d, \d+\.\d\]", quality[2][2])  # one decimal, with its interval
    speed = md_tables["Size and speed"]
    assert speed[1][1] == fmt_count(teacher["parameters"]) and re.fullmatch(r"\d+\.\d k", speed[1][1])
    assert speed[2][2] == fmt_bytes(kd["disk_bytes"]) and speed[2][2].endswith(" kB")
    assert speed[2][5] == speed_words(kd["speedup"], kd["speedup_ci"], kd["speedup_verdict"])
    assert speed[1][5] == "1×"


def test_intervals_and_paired_verdicts(classifier_report):
    report, _ = classifier_report
    n = report["task"]["num_examples"]
    teacher, kd, plain = report["models"]
    for m in report["models"]:
        correct = round(m["quality"]["accuracy"] * n)
        assert m["quality_ci"]["accuracy"] == pytest.approx(list(wilson_interval(correct, n)), abs=1e-4)
    pairs = [(c["model"], c["against"]) for c in report["comparisons"]]
    assert pairs == [("kd-4L", "teacher"), ("plain-4L", "teacher"), ("kd-4L", "plain-4L")]
    acc = {m["name"]: m["quality"]["accuracy"] for m in report["models"]}
    for c in report["comparisons"]:
        # Accuracy difference = (only A right − only B right) / n, from the same discordant counts McNemar tests.
        assert c["difference"] == pytest.approx((c["b"] - c["c"]) / n, abs=1e-4)
        assert c["difference"] == pytest.approx(acc[c["model"]] - acc[c["against"]], abs=2e-4)
        assert c["verdict"] in ("better", "worse", "within noise") and 0 <= c["mid_p"] <= c["exact_p"] <= 1
    d = kd["distillation"]
    assert d["kl_ci"][0] <= d["kl"] <= d["kl_ci"][1] and d["num_units"] == n
    assert kd["retained_pct"]["accuracy"] == pytest.approx(
        retained_pct(acc["kd-4L"], acc["teacher"], "accuracy"), rel=1e-3
    )
    assert report["timing"]["threads"] == 1 and report["timing"]["rounds"] == 2


def test_training_curves_span_all_stages(classifier_report):
    report, _ = classifier_report
    teacher, kd, plain = report["models"]
    assert kd["training"]["stages"] == [[0, "stage1-features"], [20, "stage2-logits"]]
    assert kd["training"]["last_step"] == 30 and kd["training"]["final"]["eval_accuracy"] == 0.5
    assert plain["training"]["stages"] == [[0, "plain"]] and plain["training"]["last_step"] == 30


def test_run_curves_order_and_siblings(tmp_path):
    run = tmp_path / "run"
    _write_stage(run / "b-second", 10, ("loss", "kd_loss"), "T", 2_000)
    _write_stage(run / "a-first", 12, ("loss", "hidden_loss"), "T", 1_000)
    _write_stage(run / "other-teacher", 6, ("loss",), "U", 500)
    _write_stage(run / "later", 6, ("loss",), "T", 3_000)
    assert [p.name for p in stage_folders(run / "b-second")] == ["a-first", "b-second"]
    curves = run_curves(run / "b-second")
    assert curves.stages == [(0, "a-first"), (12, "b-second")] and curves.last_step == 22
    assert curves.series["kd_loss"][0] == (12 + 5, 1.0 / 5)  # stage 2's step 5 is global step 17
    assert [s for s, _ in curves.series["loss"]] == [5, 10, 17, 22]
    (run / "a-first" / "distillation.json").unlink()  # a plain fine-tuning folder is never taken as a stage
    assert [p.name for p in stage_folders(run / "b-second")] == ["b-second"]


def test_html_is_self_contained_and_holds_the_tables(classifier_report):
    report, out = classifier_report
    html = (out / "report.html").read_text()
    page = _Page()
    page.feed(html)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert page.srcs and all(s.startswith("data:image/png;base64,") for s in page.srcs), page.srcs
    assert len(page.srcs) == 3  # summary + both students' curves
    for src in page.srcs:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", html) and "url(" not in html
    rows = [r for r in page.rows if r]
    expected = [row for t in report_tables(report) for row in [t.headers, *t.rows]]
    assert rows == expected
    assert "<title>Distillation report: teacher vs kd-4L, plain-4L on sst2 validation</title>" in html


def test_report_for_causal_lms_via_cli(tmp_path, capsys):
    tok = tiny_tokenizer()
    teacher = save(tiny_llama(hidden=32, seed=0), tok, tmp_path / "t")
    students = [save(tiny_llama(layers=1, seed=s), tok, tmp_path / f"s{s}") for s in (1, 2)]
    text = tmp_path / "text.txt"
    text.write_text(" = Homarus gammarus = \n the film is a charming and often affecting journey .\n" * 12)
    out = tmp_path / "lm-report"
    argv = ["--teacher", teacher, "--student", *students, "--text", str(text), "--output-dir", str(out),
            "--max-length", "32", "--max-tokens", "600", "--device", "cpu", "--timing-examples", "3",
            "--timing-batch-size", "2", "--warmup", "1", "--repeats", "2", "--max-repeats", "2",
            "--baseline", "s2"]  # fmt: skip
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("# Distillation report") == 1  # the report is printed once
    report = json.loads((out / "report.json").read_text())
    assert (out / "summary.png").stat().st_size > 0 and (out / "report.html").stat().st_size > 0
    teacher_entry, first = report["models"][0], report["models"][1]
    assert report["settings"]["stride"] == 16 and report["task"]["unit"] == "tokens"
    for m in report["models"]:
        lo, hi = m["quality_ci"]["perplexity"]
        assert lo <= m["quality"]["perplexity"] <= hi
    q_t, q_s = teacher_entry["quality"], first["quality"]
    assert first["retained_pct"]["bits_per_byte"] == pytest.approx(
        retained_pct(q_s["bits_per_byte"], q_t["bits_per_byte"], "bits_per_byte"), rel=1e-3
    )
    comps = {(c["model"], c["against"]): c for c in report["comparisons"]}
    assert set(comps) == {("s1", "t"), ("s2", "t"), ("s1", "s2")}
    c = comps[("s1", "t")]
    assert c["perplexity_ratio"] == pytest.approx(q_s["perplexity"] / q_t["perplexity"], rel=1e-3)
    assert c["perplexity_ratio_ci"][0] <= c["perplexity_ratio"] <= c["perplexity_ratio_ci"][1]
    d = first["distillation"]
    assert 0.0 <= d["top1_agreement"] <= 1.0 and d["kl"] > 0 and d["kl_ci"][0] <= d["kl"] <= d["kl_ci"][1]
    md_tables = _md_tables((out / "report.md").read_text())
    assert md_tables["Is the difference real? (paired tests)"][0][2] == "perplexity ratio"


def test_formatting_rules():
    assert fmt_count(22_713_216) == "22.7 M" and fmt_count(19_234_567) == "19.2 M" and fmt_count(950) == "950"
    assert fmt_count(134_515_008) == "134.5 M" and fmt_count(7_241_732_096) == "7.2 B"
    assert fmt_bytes(90_900_000) == "90.9 MB" and fmt_bytes(None) == "–"
    assert fmt_pct(0.853211) == "85.3 %" and fmt_points(-0.0034) == "−0.3 pt" and fmt_points(0.021) == "+2.1 pt"
    assert fmt_sig(5.213) == "5.21" and fmt_sig(412.7) == "413" and fmt_sig(0.012345) == "0.0123"
    assert with_ci(0.8532, [0.829, 0.876], fmt_pct) == "85.3 % [82.9, 87.6]"
    assert fmt_p(0.0391) == "0.039" and fmt_p(0.0002) == "<0.001"
    assert speed_words(1.383, [1.33, 1.42], "faster") == "1.38× [1.33, 1.42] faster"


def test_retained_pct_directions():
    assert retained_pct(0.8, 0.9, "accuracy") == pytest.approx(100 * 0.8 / 0.9)
    assert retained_pct(20.0, 10.0, "perplexity") == pytest.approx(50.0)
    assert retained_pct(None, 1.0, "accuracy") is None and retained_pct(1.0, 0.0, "mcc") is None
