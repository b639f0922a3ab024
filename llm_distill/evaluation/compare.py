"""``report``: compare a teacher with one or more students on one task; write report.json/.md/.html and PNGs.

For every model, in the same run and on the same inputs: quality with its 95 % interval (accuracy/F1/MCC for
classifiers; perplexity and bits-per-byte for causal LMs), % of the teacher's quality, parameters, on-disk size,
and batch-1 latency and batched throughput timed interleaved with the other models (``latency``). For every
student: a paired test against the teacher (and against ``--baseline``, e.g. the same student trained without the
teacher) with its verdict, KL/agreement/ECE with intervals, and its training curves across all stages.

    python eval/compare.py --teacher runs/teacher --student runs/student-4l runs/student-2l \
        --dataset ../shared/data/sst2/validation.jsonl --text-column sentence --output-dir runs/report
    python eval/compare.py --teacher runs/lm-teacher --student runs/lm-student \
        --text ../shared/data/wikitext-2/test.txt --max-length 256 --max-tokens 50000 --output-dir runs/lm-report
"""

from __future__ import annotations

import argparse
import math
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
from .curves import plot_curves, run_curves
from .latency import TimingTarget, text_batcher, time_models, window_batcher
from .metrics import classification_metrics
from .perplexity import load_causal_lm, perplexity_of, tokenize_for_scoring
from .report import retained_pct, write_report
from .stats import paired_bootstrap_difference, paired_proportions, wilson_interval
from .tables import QUALITY_KEYS

TIMING_DEFAULTS = {"timing_examples": 32, "timing_batch_size": 8, "warmup": 2, "repeats": 20, "max_repeats": 60,
                   "timing_threads": 1}  # fmt: skip


def unique_names(paths: Sequence[str]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = Path(p.rstrip("/")).name or p
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def task_name(source: str) -> str:
    """A short name for the data: 'sst2 validation' for ``../shared/data/sst2/validation.jsonl``."""
    path = Path(source)
    if path.suffix:
        return f"{path.parent.name} {path.stem}".strip() if path.parent.name not in ("", ".") else path.stem
    return source


def _entry(name: str, role: str, path: str, model: torch.nn.Module, quality: dict, quality_ci: dict) -> dict:
    disk = safetensors_bytes(path)
    return {
        "name": name,
        "role": role,
        "path": str(path),
        "parameters": count_parameters(model),
        "disk_bytes": disk,
        "disk_mb": disk / 1e6 if disk is not None else None,
        "quality": quality,
        "quality_ci": quality_ci,
    }


def _training(path: str, name: str, out_dir: Path) -> dict | None:
    run = run_curves(path) if Path(path).is_dir() else None
    if run is None:
        return None
    stages = " → ".join(stage for _, stage in run.stages)
    plot = plot_curves(run, out_dir / f"curves_{name}.png", f"{name}: training curves ({stages})")
    return {
        "sources": run.sources,
        "stages": [list(s) for s in run.stages],
        "last_step": run.last_step,
        "final": {k: series[-1][1] for k, series in run.series.items()},
        "plot": Path(plot).name,
    }


def _add_timing(entries: list[dict], timing: dict) -> None:
    for e in entries:
        e.update(timing["models"][e["name"]])
        e.update(timing["ratios"].get(e["name"], {}))


def _finish(entries: list[dict], kind: str) -> None:
    """Fill the teacher-relative columns (retained %, compression) in place."""
    teacher = entries[0]
    for e in entries:
        e["retained_pct"] = (
            {k: retained_pct(e["quality"].get(k), teacher["quality"].get(k), k) for k in QUALITY_KEYS[kind]}
            if e["role"] == "student"
            else {}
        )
        e["compression"] = teacher["parameters"] / e["parameters"]


def _pairs(names: list[str], baseline: str | None) -> list[tuple[str, str]]:
    """(model, against) pairs: every student against the teacher, and every other student against the baseline."""
    pairs = [(n, names[0]) for n in names[1:]]
    if baseline is not None:
        pairs += [(n, baseline) for n in names[1:] if n != baseline]
    return pairs


def _compare_classifiers(paths, names, args, device, timing_kw, baseline) -> dict:
    ds = load_table(args["dataset"], split=args["split"], config_name=args["dataset_config"], limit=args["limit"])
    cols = list(args["text_columns"])
    check_columns(ds, [*cols, args["label_column"]], "text/label")
    n_time = min(timing_kw.pop("num_examples"), len(ds))
    head = ds.select(range(n_time))
    timing_texts = list(zip(*(head[c] for c in cols))) if len(cols) == 2 else head[cols[0]]
    entries, logits, targets, labels = [], {}, [], None
    for i, (path, name) in enumerate(zip(paths, names)):
        model, tok = load_classifier(path, device, args["dtype"])
        if labels is None:
            labels = label_ids(ds[args["label_column"]], model.config.label2id)
        logits[name] = predict_logits(
            model, tok, ds, cols, batch_size=args["batch_size"], max_length=args["max_length"], desc=name
        )
        quality = classification_metrics(logits[name].argmax(-1), labels, num_classes=model.config.num_labels)
        correct = int((logits[name].argmax(-1) == torch.tensor(labels)).sum())
        ci = {"accuracy": list(wilson_interval(correct, len(labels)))}
        entries.append(_entry(name, "teacher" if i == 0 else "student", path, model, quality, ci))
        targets.append(TimingTarget(name, model, text_batcher(tok, timing_texts, device, args["max_length"]), n_time))
    timing = time_models(targets, **timing_kw)
    _add_timing(entries, timing)
    del targets
    teacher_logits = logits[names[0]]
    for e in entries[1:]:
        if logits[e["name"]].shape != teacher_logits.shape:
            e["distillation"] = None
            e["distillation_note"] = f"label sets differ ({logits[e['name']].shape[-1]} vs {teacher_logits.shape[-1]})"
        else:
            e["distillation"] = classifier_agreement(teacher_logits, {"s": logits[e["name"]]}, labels)["s"]
    gold = torch.tensor(labels)
    right = {n: logits[n].argmax(-1) == gold for n in names}
    comparisons = [
        {"model": a, "against": b, "metric": "accuracy", **paired_proportions(right[a], right[b])}
        for a, b in _pairs(names, baseline)
    ]
    task = {"kind": "classification", "source": args["dataset"], "num_examples": len(ds), "unit": "examples",
            "throughput_unit": "examples"}  # fmt: skip
    return {"entries": entries, "task": task, "timing": timing, "comparisons": comparisons}


def _compare_causal_lms(paths, names, args, device, timing_kw, baseline) -> dict:
    text = load_text(args["text"], args["text_columns"][0], args["split"], args["dataset_config"])
    max_length, stride = args["max_length"], args["stride"] or args["max_length"] // 2
    models, entries, windows, targets = {}, [], {}, []
    n_wanted = timing_kw.pop("num_examples")
    for i, (path, name) in enumerate(zip(paths, names)):
        model, tok = load_causal_lm(path, device, args["dtype"])
        models[name] = (model, tok)
        windows[name] = {}
        quality = perplexity_of(model, tok, text, max_length=max_length, stride=stride,
                                batch_size=args["batch_size"], max_tokens=args["max_tokens"], desc=name,
                                windows=windows[name])  # fmt: skip
        ci = quality.pop("intervals")
        ids, _ = tokenize_for_scoring(tok, text, max_tokens=args["max_tokens"])
        # Timing examples: consecutive full windows of the same text (the same ids when tokenizers agree).
        n_time = min(n_wanted, len(ids) // max_length)
        if n_time == 0:
            raise ValueError(f"the text has {len(ids)} tokens, fewer than one timing window of {max_length}")
        entries.append(_entry(name, "teacher" if i == 0 else "student", path, model, quality, ci))
        entries[-1]["num_tokens"] = quality["num_tokens"]
        targets.append(TimingTarget(name, model, window_batcher(ids, max_length, device), n_time))
    timing = time_models(targets, **timing_kw)
    _add_timing(entries, timing)
    for e in entries:
        e["throughput_tokens_per_s"] = e["throughput_examples_per_s"] * max_length
    teacher, t_tok = models[names[0]]
    same = {n: m for n, (m, tok) in list(models.items())[1:] if tok.get_vocab() == t_tok.get_vocab()}
    ids, _ = tokenize_for_scoring(t_tok, text, max_tokens=args["max_tokens"])
    pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else 0
    agreement = {}
    if same:
        agreement = causal_lm_agreement(teacher, same, ids, max_length=max_length, stride=stride,
                                        batch_size=args["batch_size"], pad_id=pad, real_vocab=len(t_tok))  # fmt: skip
    for e in entries[1:]:
        e["distillation"] = agreement.get(e["name"])
        if e["distillation"] is None:
            e["distillation_note"] = "tokenizer differs from the teacher's; compare bits_per_byte instead"
    comparisons = []
    for a, b in _pairs(names, baseline):
        wa, wb = windows[a], windows[b]
        if models[a][1].get_vocab() != models[b][1].get_vocab() or len(wa["nll"]) != len(wb["nll"]):
            continue  # different tokens, different windows: nothing to pair
        test = paired_bootstrap_difference(wa["nll"], wa["tokens"].double(), wb["nll"], wb["tokens"].double(),
                                           higher_is_better=False)  # fmt: skip
        comparisons.append({
            "model": a, "against": b, "metric": "nll_per_token", **test,
            "perplexity_ratio": math.exp(test["difference"]),
            "perplexity_ratio_ci": [math.exp(x) for x in test["difference_ci"]],
        })  # fmt: skip
    task = {"kind": "causal_lm", "source": args["text"], "num_examples": entries[0]["num_tokens"], "unit": "tokens",
            "throughput_unit": f"windows of {max_length} tokens"}  # fmt: skip
    return {"entries": entries, "task": task, "timing": timing, "comparisons": comparisons}


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
    timing_examples: int = TIMING_DEFAULTS["timing_examples"],
    timing_batch_size: int = TIMING_DEFAULTS["timing_batch_size"],
    warmup: int = TIMING_DEFAULTS["warmup"],
    repeats: int = TIMING_DEFAULTS["repeats"],
    max_repeats: int = TIMING_DEFAULTS["max_repeats"],
    timing_threads: int | None = TIMING_DEFAULTS["timing_threads"],
    names: Sequence[str] | None = None,
    baseline: str | None = None,
    name: str | None = None,
) -> dict:
    """Run the comparison and write the report files into ``out_dir``; returns the (rounded) report dict.

    ``baseline``: the name of a student that every other student is also tested against (e.g. the same student
    trained without the teacher). ``name``: what the data are called in titles (default: from the file name).
    """
    if not students:
        raise ValueError("give at least one student to compare with the teacher")
    paths = [teacher, *students]
    names = list(names) if names else unique_names(paths)
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise ValueError(f"names={names} must be {len(paths)} distinct names (teacher first)")
    if baseline is not None and baseline not in names[1:]:
        raise ValueError(f"baseline={baseline!r} must be the name of a student, one of {names[1:]}")
    kinds = {p: model_kind(p) for p in paths}
    if len(set(kinds.values())) != 1:
        raise ValueError(f"teacher and students must be the same kind of model; got {kinds}")
    kind = kinds[teacher]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    args = dict(dataset=dataset, text=text, split=split, dataset_config=dataset_config, limit=limit,
                label_column=label_column, max_length=max_length, stride=stride, max_tokens=max_tokens,
                batch_size=batch_size, dtype=dtype)  # fmt: skip
    timing_kw = dict(num_examples=timing_examples, batch_size=timing_batch_size, warmup=warmup, repeats=repeats,
                     max_repeats=max_repeats, threads=timing_threads)  # fmt: skip
    if kind == "classification":
        if dataset is None:
            raise ValueError("classifiers are compared on a labelled dataset: pass --dataset")
        args["text_columns"] = text_columns or ["sentence"]
        result = _compare_classifiers(paths, names, args, dev, timing_kw, baseline)
        settings = {"max_length": max_length}
    else:
        if text is None:
            raise ValueError("causal LMs are compared on text: pass --text")
        args["text_columns"] = text_columns or ["text"]
        result = _compare_causal_lms(paths, names, args, dev, timing_kw, baseline)
        settings = {"max_length": max_length, "stride": stride or max_length // 2, "max_tokens": max_tokens}
    entries, task, timing = result["entries"], result["task"], result["timing"]
    task["name"] = name or task_name(task["source"])
    _finish(entries, kind)
    for e in entries[1:]:
        e["training"] = _training(e["path"], e["name"], out_dir)
    settings.update(device=str(dev), dtype=dtype, timing_threads=timing["timing"]["threads"])
    settings.update(timing_examples=min(e["timed_examples"] for e in entries), baseline=baseline)
    plots = [e["training"]["plot"] for e in entries if e.get("training")]
    report = {"task": task, "settings": settings, "models": entries, "comparisons": result["comparisons"],
              "timing": timing["timing"], "warnings": timing["warnings"], "plots": plots}  # fmt: skip
    return write_report(report, out_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="report", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="saved teacher folder")
    p.add_argument("--student", nargs="+", required=True, help="one or more saved student folders")
    p.add_argument("--names", nargs="+", default=None, help="display names, teacher first (default: folder names)")
    p.add_argument("--baseline", default=None, help="name of a student every other student is also tested against")
    p.add_argument("--task-name", default=None, help="what the data are called in titles (default: file name)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="classifiers: labelled local file or hub dataset id")
    src.add_argument("--text", help="causal LMs: .txt file, or json/csv/hub dataset with --text-column")
    p.add_argument("--output-dir", required=True, help="folder for report.json, report.md, report.html and PNGs")
    p.add_argument("--text-column", nargs="+", default=None, help="text column(s) (default: sentence / text)")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split", default="validation")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--limit", type=int, default=None, help="classifiers: first N examples")
    p.add_argument("--max-length", type=int, default=128, help="classifier truncation / LM window length")
    p.add_argument("--stride", type=int, default=None, help="LM window stride (default max_length/2)")
    p.add_argument("--max-tokens", type=int, default=None, help="LM: score only the first N tokens")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of the quality pass")
    d = TIMING_DEFAULTS
    p.add_argument("--timing-examples", type=int, default=d["timing_examples"], help="examples (LM: windows) timed")
    p.add_argument("--timing-batch-size", type=int, default=d["timing_batch_size"], help="batch size for throughput")
    p.add_argument("--warmup", type=int, default=d["warmup"], help="untimed warm-up passes per model")
    p.add_argument("--repeats", type=int, default=d["repeats"], help="timing rounds at least (medians reported)")
    p.add_argument("--max-repeats", type=int, default=d["max_repeats"], help="timing rounds at most")
    p.add_argument("--timing-threads", type=int, default=d["timing_threads"],
                   help="torch threads while timing (default 1: robust on shared machines)")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    report = compare(
        a.teacher, a.student, a.output_dir, dataset=a.dataset, text=a.text, text_columns=a.text_column,
        label_column=a.label_column, split=a.split, dataset_config=a.dataset_config, limit=a.limit,
        max_length=a.max_length, stride=a.stride, max_tokens=a.max_tokens, batch_size=a.batch_size,
        device=a.device, dtype=a.dtype, timing_examples=a.timing_examples, timing_batch_size=a.timing_batch_size,
        warmup=a.warmup, repeats=a.repeats, max_repeats=a.max_repeats, timing_threads=a.timing_threads,
        names=a.names, baseline=a.baseline, name=a.task_name,
    )  # fmt: skip
    print((Path(a.output_dir) / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {a.output_dir}/report.json, report.md, report.html and {len(report['plots'])} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
