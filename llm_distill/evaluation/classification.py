"""``eval classification``: accuracy, F1 (binary and macro) and MCC of a saved sequence classifier on a dataset.

    python eval/classification.py --model runs/student --dataset ../shared/data/sst2/validation.jsonl \
        --text-column sentence --label-column label
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..tasks import load_tokenizer_of, model_config
from .common import add_common_args, check_columns, load_table, resolve_device, resolve_dtype, rnd, write_json
from .metrics import classification_metrics


def load_classifier(path: str, device: str | torch.device | None = "auto", dtype: str = "float32"):
    """(model in eval mode on ``device``, tokenizer) from a saved ``AutoModelForSequenceClassification`` folder."""
    from transformers import AutoModelForSequenceClassification

    model_config(path, "--model")  # a missing folder or one without a tokenizer is refused before the weights load
    tokenizer = load_tokenizer_of(path, "--model")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=resolve_dtype(dtype))
    model.to(resolve_device(device) if not isinstance(device, torch.device) else device).eval()
    if tokenizer.pad_token is None:
        # Decoder classifiers (e.g. a Llama with a score head) ship without a pad token; reuse EOS for batching.
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def label_ids(values: Sequence, label2id: dict[str, int] | None) -> list[int]:
    """Integer class ids for a label column that holds ints, or strings named in the model's ``label2id``."""
    out = []
    lookup = {str(k).lower(): v for k, v in (label2id or {}).items()}
    for v in values:
        if isinstance(v, bool) or v is None:
            raise ValueError(f"label {v!r} is not a class id; expected an int or a name from label2id")
        if isinstance(v, int):
            out.append(v)
        elif isinstance(v, str) and v.lower() in lookup:
            out.append(int(lookup[v.lower()]))
        elif isinstance(v, str) and v.lstrip("-").isdigit():
            out.append(int(v))
        else:
            raise ValueError(f"label {v!r} is neither an int nor one of the model's label names {sorted(lookup)}")
    return out


def encode_batches(
    ds, tokenizer, text_columns: Sequence[str], batch_size: int, max_length: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenised batches (padded to the longest in the batch) of one text or a text pair per example."""
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns={list(text_columns)}: give one column, or two for sentence pairs")
    for start in range(0, len(ds), batch_size):
        rows = ds[start : start + batch_size]
        texts = [rows[c] for c in text_columns]
        yield tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


@torch.no_grad()
def predict_logits(
    model, tokenizer, ds, text_columns: Sequence[str], *, batch_size: int = 32, max_length: int = 128, desc: str = ""
) -> torch.Tensor:
    """``(N, C)`` fp32 CPU logits for every row of ``ds``, in order."""
    device = next(model.parameters()).device
    chunks = []
    total = (len(ds) + batch_size - 1) // batch_size
    for enc in tqdm(encode_batches(ds, tokenizer, text_columns, batch_size, max_length), total=total, desc=desc):
        enc = {k: v.to(device) for k, v in enc.items()}
        chunks.append(model(**enc).logits.float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, model.config.num_labels)


def evaluate_classifier(
    model_path: str,
    dataset: str,
    *,
    text_columns: Sequence[str] = ("sentence",),
    label_column: str = "label",
    split: str = "validation",
    dataset_config: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    device: str | None = "auto",
    dtype: str = "float32",
    keep_correct: bool = False,
) -> dict:
    """Metrics of ``model_path`` on ``dataset`` (a local json/csv/tsv/parquet file or a hub id).

    Returns the unrounded metrics plus ``num_examples``, ``num_labels`` and ``seconds``; with ``keep_correct``, also
    ``correct``: right/wrong per example, in dataset order (for paired comparisons of two models).
    """
    ds = load_table(dataset, split=split, config_name=dataset_config, limit=limit)
    check_columns(ds, [*text_columns, label_column], "text/label")
    model, tokenizer = load_classifier(model_path, device, dtype)
    labels = label_ids(ds[label_column], model.config.label2id)
    start = time.perf_counter()
    logits = predict_logits(
        model, tokenizer, ds, text_columns, batch_size=batch_size, max_length=max_length, desc=f"classify {model_path}"
    )
    preds = logits.argmax(-1).tolist()
    result = classification_metrics(preds, labels, num_classes=model.config.num_labels)
    result.update(num_examples=len(labels), num_labels=model.config.num_labels, seconds=time.perf_counter() - start)
    if keep_correct:
        result["correct"] = [p == y for p, y in zip(preds, labels)]
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval classification", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved AutoModelForSequenceClassification folder (or hub id)")
    p.add_argument("--dataset", required=True, help="local .json/.jsonl/.csv/.tsv/.parquet file or a hub dataset id")
    p.add_argument("--dataset-config", default=None, help="hub dataset config name, e.g. sst2 for glue")
    p.add_argument("--split", default="validation", help="split of a hub dataset (ignored for a single file)")
    p.add_argument("--text-column", nargs="+", default=["sentence"], help="one text column, or two for sentence pairs")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    add_common_args(p, batch_size=32)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = evaluate_classifier(
        args.model,
        args.dataset,
        text_columns=args.text_column,
        label_column=args.label_column,
        split=args.split,
        dataset_config=args.dataset_config,
        limit=args.limit,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        dtype=args.dtype,
    )
    result = rnd({"model": args.model, "dataset": args.dataset, **result})
    for key in ("accuracy", "f1", "f1_macro", "mcc"):
        print(f"{key:>9}: {result[key]}")
    print(f"{'examples':>9}: {result['num_examples']}")
    if args.output:
        write_json(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
