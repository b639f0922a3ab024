"""``eval distill``: how closely students follow a teacher on held-out data.

Per student: KL(teacher‖student) at T = 1 averaged over counted tokens (causal LM) or examples (classifier),
top-1 and top-5 agreement, and the 15-bin expected calibration error of teacher and student against the true
next token / label (see ``metrics.AgreementAccumulator``).

Causal LMs are scored on the strided windows of ``eval perplexity`` (each token counted once). A student whose
tokenizer is not the teacher's is scored on the positions where both predict the next token after the same text
(top-1 agreement through the exact vocabulary map, ``cross_agreement``). Classifiers may have different tokenizers but
must share the label set.

    python eval/distill.py --teacher runs/teacher --student runs/student \
        --text ../shared/data/wikitext-2/valid.txt --max-length 256 --max-tokens 20000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..vocab import same_vocabulary
from .classification import label_ids, load_classifier, predict_logits
from .common import add_common_args, check_columns, load_table, load_text, model_kind, rnd, write_json
from .cross_agreement import cross_tokenizer_agreement
from .metrics import AgreementAccumulator
from .perplexity import load_causal_lm, strided_windows, tokenize_for_scoring, window_batch


def agreement_from_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15
) -> dict:
    """Agreement metrics for aligned ``(N, C)`` logits and ``(N,)`` targets (one row per counted position)."""
    acc = AgreementAccumulator(n_bins=n_bins)
    acc.update(student_logits, teacher_logits, targets)
    return acc.compute()


@torch.no_grad()
def causal_lm_agreement(
    teacher,
    students: dict[str, torch.nn.Module],
    ids: torch.Tensor,
    *,
    max_length: int,
    stride: int,
    batch_size: int = 8,
    pad_id: int = 0,
    real_vocab: int | None = None,
) -> dict[str, dict]:
    """Agreement of each student with the teacher over strided windows of ``ids`` ``(N,)``.

    The teacher runs once per window batch and every student reuses its logits. ``real_vocab`` (the tokenizer
    length) trims padded embedding tails so a 152064-row head compares with a 151936-row one.
    """
    device = next(teacher.parameters()).device
    accs = {name: AgreementAccumulator() for name in students}
    windows = strided_windows(len(ids), max_length, stride)
    for start in tqdm(range(0, len(windows), batch_size), desc="teacher-student agreement", unit="batch"):
        batch = window_batch(ids, windows[start : start + batch_size], pad_id)
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        # Causal shift: logits at t predict token t+1, so position t counts where labels[t+1] != -100.
        targets = batch["labels"][:, 1:].to(device)
        mask = targets != -100
        # Each window is one bootstrap unit: its rows are the window's counted tokens.
        window_ids = torch.arange(start, start + mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
        t_logits = teacher(**inputs).logits[:, :-1]
        vocab = real_vocab or t_logits.shape[-1]
        t_rows = t_logits[mask][:, :vocab]
        for name, student in students.items():
            s_logits = student(**inputs).logits[:, :-1]
            if s_logits.shape[-1] < vocab:
                raise ValueError(f"student {name!r} has {s_logits.shape[-1]} logits per token, fewer than {vocab}")
            accs[name].update(s_logits[mask][:, :vocab], t_rows, targets[mask], units=window_ids)
    return {name: acc.compute() for name, acc in accs.items()}


def classifier_agreement(
    teacher_logits: torch.Tensor, student_logits: dict[str, torch.Tensor], labels: Sequence[int]
) -> dict[str, dict]:
    targets = torch.tensor(list(labels), dtype=torch.long)
    return {name: agreement_from_logits(s, teacher_logits, targets) for name, s in student_logits.items()}


def run(
    teacher_path: str,
    student_paths: Sequence[str],
    *,
    dataset: str | None = None,
    text: str | None = None,
    text_columns: Sequence[str] = ("sentence",),
    label_column: str = "label",
    split: str = "validation",
    dataset_config: str | None = None,
    limit: int | None = None,
    max_length: int = 256,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
    device: str | None = "auto",
    dtype: str = "float32",
) -> dict:
    """Load the models named by path and compute the agreement of each student (keyed by its path)."""
    kind = model_kind(teacher_path)
    if kind == "classification":
        if dataset is None:
            raise ValueError("classifiers are compared on a labelled dataset: pass dataset=... (--dataset)")
        ds = load_table(dataset, split=split, config_name=dataset_config, limit=limit)
        check_columns(ds, [*text_columns, label_column], "text/label")
        teacher, tok = load_classifier(teacher_path, device, dtype)
        labels = label_ids(ds[label_column], teacher.config.label2id)
        kw = {"batch_size": batch_size, "max_length": max_length}
        t_logits = predict_logits(teacher, tok, ds, text_columns, desc="teacher", **kw)
        del teacher
        s_logits = {}
        for path in student_paths:
            student, s_tok = load_classifier(path, device, dtype)
            s_logits[path] = predict_logits(student, s_tok, ds, text_columns, desc=path, **kw)
        return {"kind": kind, "students": classifier_agreement(t_logits, s_logits, labels)}
    if text is None:
        raise ValueError("causal LMs are compared on text: pass text=... (--text, a .txt file or dataset)")
    teacher, tok = load_causal_lm(teacher_path, device, dtype)
    students, other_tokenizers = {}, {}
    for path in student_paths:
        students[path], s_tok = load_causal_lm(path, device, dtype)
        if not same_vocabulary(tok, s_tok):
            other_tokenizers[path] = s_tok
    raw = load_text(text, text_columns[0], split, dataset_config)
    ids, _ = tokenize_for_scoring(tok, raw, max_tokens=max_tokens)
    stride = max_length // 2 if stride is None else stride
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    shared = {path: model for path, model in students.items() if path not in other_tokenizers}
    per_student = {}
    if shared:
        per_student = causal_lm_agreement(
            teacher,
            shared,
            ids,
            max_length=max_length,
            stride=stride,
            batch_size=batch_size,
            pad_id=pad_id,
            real_vocab=len(tok),
        )
    for path, s_tok in other_tokenizers.items():
        per_student[path] = cross_tokenizer_agreement(
            teacher, tok, students[path], s_tok, raw, max_length=max_length, batch_size=batch_size,
            max_positions=max_tokens,
        )  # fmt: skip
    per_student = {path: per_student[path] for path in student_paths}
    return {"kind": kind, "max_length": max_length, "stride": stride, "students": per_student}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval distill", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="saved teacher folder")
    p.add_argument("--student", nargs="+", required=True, help="one or more saved student folders")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="classifiers: labelled local file or hub id")
    src.add_argument("--text", help="causal LMs: .txt file, or json/csv/hub dataset with --text-column")
    p.add_argument("--text-column", nargs="+", default=None, help="text column(s) (default: sentence / text)")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split", default="validation")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--limit", type=int, default=None, help="classifiers: first N examples")
    p.add_argument("--max-length", type=int, default=256, help="LM window / classifier truncation length")
    p.add_argument("--stride", type=int, default=None, help="LM window stride (default max_length/2)")
    p.add_argument("--max-tokens", type=int, default=None, help="LM: score only the first N tokens")
    add_common_args(p, batch_size=8)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cols = args.text_column or (["sentence"] if args.dataset else ["text"])
    result = run(
        args.teacher,
        args.student,
        dataset=args.dataset,
        text=args.text,
        text_columns=cols,
        label_column=args.label_column,
        split=args.split,
        dataset_config=args.dataset_config,
        limit=args.limit,
        max_length=args.max_length,
        stride=args.stride,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    )
    result = rnd({"teacher": args.teacher, **result})
    for name, m in result["students"].items():
        if m.get("cross_tokenizer"):
            print(
                f"{name}: top1 {m['top1_agreement']} at {m['aligned_positions']} aligned positions "
                f"({m['aligned_share']} of its predictions; another tokenizer: compare bits per byte, not KL)"
            )
            continue
        print(
            f"{name}: KL {m['kl']}  top1 {m['top1_agreement']}  top5 {m['top5_agreement']}  "
            f"ECE teacher {m['ece_teacher']} student {m['ece_student']}  ({m['num_counted']} counted)"
        )
    if args.output:
        write_json(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
