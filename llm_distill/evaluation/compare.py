"""``report``: compare a teacher with one or more students on one task and write report.json, report.md and PNGs.

For every model, in the same run and on the same inputs: quality (accuracy/F1/MCC for classifiers; perplexity and
bits-per-byte for causal LMs) with the % of the teacher's retained, parameters, on-disk safetensors size, latency
per example and throughput; for every student, KL/agreement/ECE against the teacher and its training curves (from
a ``trainer_state.json`` in its folder or latest checkpoint).

    python eval/compare.py --teacher runs/teacher --student runs/student-4l runs/student-2l \
        --dataset ../shared/data/sst2/validation.jsonl --text-column sentence --output-dir runs/report
    python eval/compare.py --teacher runs/lm-teacher --student runs/lm-student \
        --text ../shared/data/wikitext-2/test.txt --max-length 256 --max-tokens 50000 --output-dir runs/lm-report
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .agreement import causal_lm_agreement, classifier_agreement
from .classification import label_ids, load_classifier, predict_logits
from .common import (
    check_columns,
    count_parameters,
    load_table,
    load_text,
    model_kind,
    resolve_device,
    safetensors_bytes,
)
from .curves import find_trainer_state, plot_curves, read_curves
from .latency import text_batcher, time_forward, window_batcher
from .metrics import classification_metrics
from .perplexity import load_causal_lm, perplexity_of, tokenize_for_scoring
from .report import QUALITY_KEYS, retained_pct, write_report


def unique_names(paths: Sequence[str]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = Path(p.rstrip("/")).name or p
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def _entry(name: str, role: str, path: str, model: torch.nn.Module, quality: dict, timing: dict) -> dict:
    disk = safetensors_bytes(path)
    return {
        "name": name,
        "role": role,
        "path": str(path),
        "parameters": count_parameters(model),
        "disk_bytes": disk,
        "disk_mb": disk / 1e6 if disk is not None else None,
        "quality": quality,
        "latency_ms_per_example": timing["latency_ms_per_example"],
        "throughput_examples_per_s": timing["throughput_examples_per_s"],
        "timed_examples": timing["timed_examples"],
    }


def _training(path: str, name: str, out_dir: Path) -> dict | None:
    state = find_trainer_state(path) if Path(path).is_dir() else None
    if state is None:
        return None
    curves = read_curves(state)
    if not curves:
        return None
    plot = plot_curves(curves, out_dir / f"curves_{name}.png", f"{name}: training curves")
    return {
        "source": str(state),
        "last_step": max(step for series in curves.values() for step, _ in series),
        "final": {k: series[-1][1] for k, series in curves.items()},
        "plot": Path(plot).name,
    }


def _finish(entries: list[dict], kind: str) -> None:
    """Fill the teacher-relative columns (retained %, speed-up, compression) in place."""
    teacher = entries[0]
    for e in entries:
        e["retained_pct"] = (
            {k: retained_pct(e["quality"].get(k), teacher["quality"].get(k), k) for k in QUALITY_KEYS[kind]}
            if e["role"] == "student"
            else {}
        )
        e["speedup"] = teacher["latency_ms_per_example"] / e["latency_ms_per_example"]
        e["compression"] = teacher["parameters"] / e["parameters"]


def _compare_classifiers(paths, names, args, device, timing_kw) -> tuple[list[dict], dict]:
    ds = load_table(args["dataset"], split=args["split"], config_name=args["dataset_config"], limit=args["limit"])
    cols = list(args["text_columns"])
    check_columns(ds, [*cols, args["label_column"]], "text/label")
    n_time = min(timing_kw.pop("num_examples"), len(ds))
    head = ds.select(range(n_time))
    timing_texts = list(zip(*(head[c] for c in cols))) if len(cols) == 2 else head[cols[0]]
    entries, logits, labels = [], {}, None
    for i, (path, name) in enumerate(zip(paths, names)):
        model, tok = load_classifier(path, device, args["dtype"])
        if labels is None:
            labels = label_ids(ds[args["label_column"]], model.config.label2id)
        logits[name] = predict_logits(
            model, tok, ds, cols, batch_size=args["batch_size"], max_length=args["max_length"], desc=name
        )
        quality = classification_metrics(logits[name].argmax(-1), labels, num_classes=model.config.num_labels)
        timing = time_forward(model, text_batcher(tok, timing_texts, device, args["max_length"]), n_time, **timing_kw)
        entries.append(_entry(name, "teacher" if i == 0 else "student", path, model, quality, timing))
        del model
    teacher_logits = logits[names[0]]
    for e in entries[1:]:
        if logits[e["name"]].shape != teacher_logits.shape:
            e["distillation"] = None
            e["distillation_note"] = f"label sets differ ({logits[e['name']].shape[-1]} vs {teacher_logits.shape[-1]})"
        else:
            e["distillation"] = classifier_agreement(teacher_logits, {"s": logits[e["name"]]}, labels)["s"]
    task = {"kind": "classification", "source": args["dataset"], "num_examples": len(ds), "unit": "examples"}
    return entries, task


def _compare_causal_lms(paths, names, args, device, timing_kw) -> tuple[list[dict], dict]:
    text = load_text(args["text"], args["text_columns"][0], args["split"], args["dataset_config"])
    max_length, stride = args["max_length"], args["stride"] or args["max_length"] // 2
    models, entries = {}, []
    n_wanted = timing_kw.pop("num_examples")
    for i, (path, name) in enumerate(zip(paths, names)):
        model, tok = load_causal_lm(path, device, args["dtype"])
        models[name] = (model, tok)
        quality = perplexity_of(
            model,
            tok,
            text,
            max_length=max_length,
            stride=stride,
            batch_size=args["batch_size"],
            max_tokens=args["max_tokens"],
            desc=name,
        )
        ids, _ = tokenize_for_scoring(tok, text, max_tokens=args["max_tokens"])
        # Timing examples: consecutive full windows of the same text (the same ids when tokenizers agree).
        n_time = min(n_wanted, len(ids) // max_length)
        if n_time == 0:
            raise ValueError(f"the text has {len(ids)} tokens, fewer than one timing window of {max_length}")
        timing = time_forward(model, window_batcher(ids, max_length, device), n_time, **timing_kw)
        entries.append(_entry(name, "teacher" if i == 0 else "student", path, model, quality, timing))
        entries[-1]["num_tokens"] = quality["num_tokens"]
        entries[-1]["throughput_tokens_per_s"] = timing["throughput_examples_per_s"] * max_length
    teacher, t_tok = models[names[0]]
    same = {n: m for n, (m, tok) in list(models.items())[1:] if tok.get_vocab() == t_tok.get_vocab()}
    ids, _ = tokenize_for_scoring(t_tok, text, max_tokens=args["max_tokens"])
    pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else 0
    agreement = {}
    if same:
        agreement = causal_lm_agreement(
            teacher,
            same,
            ids,
            max_length=max_length,
            stride=stride,
            batch_size=args["batch_size"],
            pad_id=pad,
            real_vocab=len(t_tok),
        )
    for e in entries[1:]:
        e["distillation"] = agreement.get(e["name"])
        if e["distillation"] is None:
            e["distillation_note"] = "tokenizer differs from the teacher's; compare bits_per_byte instead"
    task = {"kind": "causal_lm", "source": args["text"], "num_examples": entries[0]["num_tokens"], "unit": "tokens"}
    return entries, task


def compare(
    teacher: str,
    students: Sequence[str],
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    text: str | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
    split: str = "validation",
    dataset_config: str | None = None,
    limit: int | None = None,
    max_length: int = 128,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 16,
    device: str | None = "auto",
    dtype: str = "float32",
    timing_examples: int = 16,
    timing_batch_size: int = 8,
    warmup: int = 2,
    repeats: int = 5,
    names: Sequence[str] | None = None,
) -> dict:
    """Run the comparison and write the report files into ``out_dir``; returns the (rounded) report dict."""
    if not students:
        raise ValueError("give at least one student to compare with the teacher")
    paths = [teacher, *students]
    names = list(names) if names else unique_names(paths)
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise ValueError(f"names={names} must be {len(paths)} distinct names (teacher first)")
    kinds = {p: model_kind(p) for p in paths}
    if len(set(kinds.values())) != 1:
        raise ValueError(f"teacher and students must be the same kind of model; got {kinds}")
    kind = kinds[teacher]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    args = dict(
        dataset=dataset,
        text=text,
        split=split,
        dataset_config=dataset_config,
        limit=limit,
        label_column=label_column,
        max_length=max_length,
        stride=stride,
        max_tokens=max_tokens,
        batch_size=batch_size,
        dtype=dtype,
    )
    timing_kw = dict(num_examples=timing_examples, batch_size=timing_batch_size, warmup=warmup, repeats=repeats)
    if kind == "classification":
        if dataset is None:
            raise ValueError("classifiers are compared on a labelled dataset: pass --dataset")
        args["text_columns"] = text_columns or ["sentence"]
        entries, task = _compare_classifiers(paths, names, args, dev, timing_kw)
        settings = {"max_length": max_length}
    else:
        if text is None:
            raise ValueError("causal LMs are compared on text: pass --text")
        args["text_columns"] = text_columns or ["text"]
        entries, task = _compare_causal_lms(paths, names, args, dev, timing_kw)
        settings = {"max_length": max_length, "stride": stride or max_length // 2, "max_tokens": max_tokens}
    _finish(entries, kind)
    for e in entries[1:]:
        e["training"] = _training(e["path"], e["name"], out_dir)
    settings.update(device=str(dev), dtype=dtype, torch_threads=torch.get_num_threads())
    n_timed = [e["timed_examples"] for e in entries]
    settings.update(timing_examples=min(n_timed), timing_batch_size=timing_batch_size, warmup=warmup, repeats=repeats)
    plots = [e["training"]["plot"] for e in entries if e.get("training")]
    report = {"task": task, "settings": settings, "models": entries, "plots": plots}
    return write_report(report, out_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="report", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="saved teacher folder")
    p.add_argument("--student", nargs="+", required=True, help="one or more saved student folders")
    p.add_argument("--names", nargs="+", default=None, help="display names, teacher first (default: folder names)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="classifiers: labelled local file or hub dataset id")
    src.add_argument("--text", help="causal LMs: .txt file, or json/csv/hub dataset with --text-column")
    p.add_argument("--output-dir", required=True, help="folder for report.json, report.md and the PNGs")
    p.add_argument("--text-column", nargs="+", default=None, help="text column(s) (default: sentence / text)")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split", default="validation")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--limit", type=int, default=None, help="classifiers: first N examples")
    p.add_argument("--max-length", type=int, default=128, help="classifier truncation / LM window length")
    p.add_argument("--stride", type=int, default=None, help="LM window stride (default max_length/2)")
    p.add_argument("--max-tokens", type=int, default=None, help="LM: score only the first N tokens")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of the quality pass")
    p.add_argument("--timing-examples", type=int, default=16, help="examples (LM: windows) timed per model")
    p.add_argument("--timing-batch-size", type=int, default=8, help="batch size of the throughput measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up passes")
    p.add_argument("--repeats", type=int, default=5, help="timed passes; the median is reported")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    report = compare(
        a.teacher,
        a.student,
        a.output_dir,
        dataset=a.dataset,
        text=a.text,
        text_columns=a.text_column,
        label_column=a.label_column,
        split=a.split,
        dataset_config=a.dataset_config,
        limit=a.limit,
        max_length=a.max_length,
        stride=a.stride,
        max_tokens=a.max_tokens,
        batch_size=a.batch_size,
        device=a.device,
        dtype=a.dtype,
        timing_examples=a.timing_examples,
        timing_batch_size=a.timing_batch_size,
        warmup=a.warmup,
        repeats=a.repeats,
        names=a.names,
    )
    print((Path(a.output_dir) / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {a.output_dir}/report.json, report.md and {len(report['plots'])} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
