"""The compare/report command on tiny teacher/student pairs: files written, Markdown numbers == JSON numbers."""

import json

import pytest
import torch
from _eval_tiny import save, tiny_bert_classifier, tiny_llama, tiny_tokenizer, write_sst2_like

from llm_distill.evaluation import compare
from llm_distill.evaluation.curves import find_trainer_state, read_curves
from llm_distill.evaluation.report import retained_pct

FAST_TIMING = {"timing_examples": 3, "timing_batch_size": 2, "warmup": 1, "repeats": 2}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny models on a shared 2-core machine: thread hand-offs cost more than they save (observed 10x slower).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _md_table(md: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    lines = md.splitlines()
    start = next(
        i
        for i, line in enumerate(lines[:-1])
        if line.startswith(f"| {first_header} |") and lines[i + 1].startswith("|---")
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [c.strip() for c in lines[start].strip("|").split("|")], rows


def _same_number(cell: str, value) -> bool:
    if value is None:
        return cell == "–"
    if isinstance(value, str):
        return cell == value
    # Exact equality: the Markdown must hold the JSON's digits, not a re-rounded copy.
    return float(cell) == float(value) and cell == str(value)


def _check_tables(report: dict, md: str) -> int:
    kind = report["task"]["kind"]
    primary = {"classification": "accuracy", "causal_lm": "bits_per_byte"}[kind]
    headers, rows = _md_table(md, "model")
    by_name = {m["name"]: m for m in report["models"]}
    size_keys = {"params": "parameters", "disk MB": "disk_mb", "latency ms/ex": "latency_ms_per_example",
                 "throughput ex/s": "throughput_examples_per_s", "speed-up ×": "speedup",
                 "compression ×": "compression"}  # fmt: skip
    checked = 0
    assert [r[0] for r in rows] == list(by_name)
    for row in rows:
        m = by_name[row[0]]
        for header, cell in zip(headers[2:], row[2:]):
            if header in size_keys:
                value = m[size_keys[header]]
            elif header == f"{primary} retained %":
                value = m["retained_pct"].get(primary)
            else:
                value = m["quality"][header]
            assert _same_number(cell, value), (row[0], header, cell, value)
            checked += 1
    headers, rows = _md_table(md, "student")
    agree_keys = {"KL(T‖S)": "kl", "top-1 agr.": "top1_agreement", "top-5 agr.": "top5_agreement",
                  "ECE teacher": "ece_teacher", "ECE student": "ece_student", "counted": "num_counted"}  # fmt: skip
    for row in rows:
        for header, cell in zip(headers[1:], row[1:]):
            assert _same_number(cell, by_name[row[0]]["distillation"][agree_keys[header]])
            checked += 1
    return checked


def _write_trainer_state(folder, steps=6):
    ckpt = folder / f"checkpoint-{steps}"
    ckpt.mkdir(parents=True)
    history = [{"step": s, "loss": 3.0 / s, "kd_loss": 2.0 / s, "ce_loss": 1.0 / s, "hidden_loss": 0.5 / s}
               for s in range(1, steps + 1)]  # fmt: skip
    history.append({"step": steps, "eval_accuracy": 0.5, "eval_runtime": 0.1, "epoch": 1.0})
    (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (folder / "checkpoint-2").mkdir()  # an older checkpoint without state must not be chosen
    return ckpt / "trainer_state.json"


def test_report_for_classifiers(tmp_path):
    tok = tiny_tokenizer()
    teacher = save(tiny_bert_classifier(hidden=64, seed=0), tok, tmp_path / "teacher")
    student = save(tiny_bert_classifier(layers=1, hidden=32, seed=1), tok, tmp_path / "student")
    state = _write_trainer_state(tmp_path / "student")
    data = write_sst2_like(tmp_path / "sst2.jsonl", n=8)
    out = tmp_path / "report"
    report = compare.compare(teacher, [student], out, dataset=data, device="cpu", batch_size=4, **FAST_TIMING)

    for name in ("report.json", "report.md", "summary.png", "curves_student.png"):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    md = (out / "report.md").read_text()
    assert _check_tables(on_disk, md) >= 2 * 10 + 6
    assert md.count("(curves_student.png)") == 1 and md.count("(summary.png)") == 1  # each plot shown once

    t, s = on_disk["models"]
    assert t["role"] == "teacher" and s["role"] == "student"
    assert s["parameters"] < t["parameters"] and s["disk_bytes"] < t["disk_bytes"]
    assert s["disk_bytes"] == sum(f.stat().st_size for f in (tmp_path / "student").glob("*.safetensors"))
    assert find_trainer_state(tmp_path / "student") == state
    assert s["training"]["last_step"] == 6 and s["training"]["final"]["kd_loss"] == pytest.approx(2.0 / 6, abs=1e-4)
    assert set(read_curves(state)) == {"loss", "kd_loss", "ce_loss", "hidden_loss", "eval_accuracy"}


def test_report_for_causal_lms_via_cli(tmp_path):
    tok = tiny_tokenizer()
    teacher = save(tiny_llama(hidden=32, seed=0), tok, tmp_path / "t")
    students = [save(tiny_llama(layers=1, seed=s), tok, tmp_path / f"s{s}") for s in (1, 2)]
    text = tmp_path / "text.txt"
    text.write_text(" = Homarus gammarus = \n the film is a charming and often affecting journey .\n" * 8)
    out = tmp_path / "lm-report"
    argv = ["--teacher", teacher, "--student", *students, "--text", str(text), "--output-dir", str(out),
            "--max-length", "32", "--max-tokens", "400", "--device", "cpu", "--timing-examples", "3",
            "--timing-batch-size", "2", "--warmup", "1", "--repeats", "2"]  # fmt: skip
    assert compare.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert (out / "summary.png").stat().st_size > 0
    assert _check_tables(report, md) >= 3 * 9 + 2 * 5
    teacher_entry, first = report["models"][0], report["models"][1]
    assert report["settings"]["stride"] == 16 and report["task"]["unit"] == "tokens"
    q_t, q_s = teacher_entry["quality"], first["quality"]
    # Retained % of a lower-is-better metric is teacher/student (computed on the unrounded values, then rounded).
    assert first["retained_pct"]["bits_per_byte"] == pytest.approx(
        retained_pct(q_s["bits_per_byte"], q_t["bits_per_byte"], "bits_per_byte"), rel=1e-3
    )
    assert 0.0 <= first["distillation"]["top1_agreement"] <= 1.0 and first["distillation"]["kl"] > 0


def test_retained_pct_directions():
    assert retained_pct(0.8, 0.9, "accuracy") == pytest.approx(100 * 0.8 / 0.9)
    assert retained_pct(20.0, 10.0, "perplexity") == pytest.approx(50.0)
    assert retained_pct(None, 1.0, "accuracy") is None and retained_pct(1.0, 0.0, "mcc") is None
