"""``eval perplexity``: strided sliding-window perplexity and bits-per-byte of a causal LM.

The text is tokenised once and cut into windows of ``max_length`` tokens that start every ``stride`` tokens
(the method of the Hugging Face perplexity guide). Each window scores only the tokens that the previous window
did not, so every token is scored exactly once, with up to ``max_length - stride`` tokens of extra context.

    bits_per_byte = (total NLL in nats) / ln 2 / (UTF-8 bytes of the scored text)

does not depend on the tokenizer, so models with different vocabularies compare on it; perplexity does not.

    python eval/perplexity.py --model runs/student --text ../shared/data/wikitext-2/test.txt --max-length 512
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..losses.divergences import hard_ce
from ..tasks import load_tokenizer_of, model_config
from .common import add_common_args, load_text, resolve_device, resolve_dtype, rnd, write_json
from .stats import ratio_interval


@dataclass(frozen=True)
class Window:
    """Tokens ``[begin, end)`` go through the model; the last ``new_tokens`` of them are scored."""

    begin: int
    end: int
    new_tokens: int


def strided_windows(num_tokens: int, max_length: int, stride: int) -> list[Window]:
    """Windows covering ``num_tokens`` tokens so that each token after the first is a target exactly once, with
    at least ``max_length - stride`` tokens of context (except in the first window)."""
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be >= 2 (a window needs a context token and a target)")
    if not 1 <= stride < max_length:
        # stride == max_length would start each window on a new token with no context; the shift would drop it
        # and that token would never be scored.
        raise ValueError(
            f"stride={stride} must be in [1, max_length={max_length}); use max_length - 1 for (almost) no overlap"
        )
    windows: list[Window] = []
    prev_end = 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + max_length, num_tokens)
        windows.append(Window(begin, end, end - prev_end))
        prev_end = end
        if end == num_tokens:
            break
    return windows


def window_batch(ids: torch.Tensor, windows: list[Window], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` ``(B, L)`` for a list of windows over ``ids`` ``(N,)``.

    ``labels`` is -100 on context tokens and padding, so the usual shifted CE counts only each window's new tokens
    (the first token of the first window has no context and drops out in the shift).
    """
    width = max(w.end - w.begin for w in windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), width), dtype=torch.long)
    labels = torch.full((len(windows), width), -100, dtype=torch.long)
    for row, w in enumerate(windows):
        n = w.end - w.begin
        input_ids[row, :n] = ids[w.begin : w.end]
        attention_mask[row, :n] = 1
        labels[row, n - w.new_tokens : n] = ids[w.end - w.new_tokens : w.end]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def tokenize_for_scoring(
    tokenizer, text: str, *, add_bos: bool | None = None, max_tokens: int | None = None
) -> tuple[torch.Tensor, int]:
    """``(ids (N,), scored_bytes)``. With a BOS token prepended every text token is scored; without one the first
    token has no context, so its bytes are left out of the byte count. ``max_tokens`` truncates (quick runs)."""
    if add_bos is None:
        add_bos = tokenizer.bos_token_id is not None
    if add_bos and tokenizer.bos_token_id is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token")
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast, verbose=False)
    ids = list(enc["input_ids"])
    offsets = enc.get("offset_mapping") if fast else None
    truncated = max_tokens is not None and len(ids) + int(add_bos) > max_tokens
    if truncated:
        ids = ids[: max_tokens - int(add_bos)]
    if not ids:
        raise ValueError("the text produced no tokens")
    if offsets is not None:
        start = 0 if add_bos else offsets[0][1]
        stop = offsets[len(ids) - 1][1] if truncated else len(text)
        scored_bytes = len(text[start:stop].encode("utf-8"))
    else:
        # Slow tokenizers have no offsets: count the bytes of the decoded scored tokens instead.
        scored_bytes = len(tokenizer.decode(ids if add_bos else ids[1:]).encode("utf-8"))
    if add_bos:
        ids = [tokenizer.bos_token_id, *ids]
    return torch.tensor(ids, dtype=torch.long), scored_bytes


@torch.no_grad()
def window_nll(
    model, ids: torch.Tensor, *, max_length: int, stride: int, batch_size: int = 8, pad_id: int = 0, desc: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL in nats ``(W,)`` float64, scored tokens ``(W,)`` int64) of each strided window of ``ids`` ``(N,)``.

    Windows score disjoint runs of tokens, so they are the units a bootstrap interval resamples.
    """
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's max_position_embeddings={limit}")
    device = next(model.parameters()).device
    windows = strided_windows(len(ids), max_length, stride)
    nll, counted = [], []
    for start in tqdm(range(0, len(windows), batch_size), desc=desc or "perplexity", unit="batch"):
        batch = window_batch(ids, windows[start : start + batch_size], pad_id)
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        logits = model(**inputs).logits
        shifted = batch["labels"][:, 1:].to(device)
        nll.append(hard_ce(logits[:, :-1], shifted, reduction="none").double().sum(-1).cpu())
        counted.append((shifted != -100).sum(-1).cpu())
    return torch.cat(nll), torch.cat(counted)


def strided_nll(
    model, ids: torch.Tensor, *, max_length: int, stride: int, batch_size: int = 8, pad_id: int = 0, desc: str = ""
) -> tuple[float, int, int]:
    """(total NLL in nats, number of scored tokens, number of windows) of ``ids`` ``(N,)`` under ``model``."""
    nll, counted = window_nll(
        model, ids, max_length=max_length, stride=stride, batch_size=batch_size, pad_id=pad_id, desc=desc
    )
    return float(nll.sum()), int(counted.sum()), len(nll)


def perplexity_intervals(nll: torch.Tensor, counted: torch.Tensor, scored_bytes: int) -> dict[str, list[float]]:
    """95 % bootstrap intervals over windows of perplexity and bits per byte.

    Bits per byte resample NLL per token and scale it by the whole text's tokens per byte (window byte counts are
    not tracked), so its interval is the perplexity interval in other units.
    """
    lo, hi = ratio_interval(nll, counted.double())
    per_byte = float(counted.sum()) / scored_bytes / math.log(2)
    return {"perplexity": [math.exp(lo), math.exp(hi)], "bits_per_byte": [lo * per_byte, hi * per_byte]}


def perplexity_of(
    model,
    tokenizer,
    text: str,
    *,
    max_length: int = 512,
    stride: int | None = None,
    batch_size: int = 8,
    add_bos: bool | None = None,
    max_tokens: int | None = None,
    desc: str = "",
    windows: dict | None = None,
) -> dict:
    """Perplexity, bits-per-byte, their 95 % intervals (``intervals``) and their ingredients (unrounded) for an
    already loaded model. Pass a dict as ``windows`` to receive the per-window ``nll`` and ``tokens`` tensors."""
    stride = max_length // 2 if stride is None else stride
    ids, scored_bytes = tokenize_for_scoring(tokenizer, text, add_bos=add_bos, max_tokens=max_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll_w, count_w = window_nll(
        model, ids, max_length=max_length, stride=stride, batch_size=batch_size, pad_id=pad_id, desc=desc
    )
    nll, count = float(nll_w.sum()), int(count_w.sum())
    if count == 0:
        raise ValueError("no token was scored: the text is a single token long")
    if windows is not None:
        windows.update(nll=nll_w, tokens=count_w)
    return {
        "perplexity": math.exp(nll / count),
        "bits_per_byte": nll / math.log(2) / scored_bytes,
        "intervals": perplexity_intervals(nll_w, count_w, scored_bytes),
        "nll_per_token": nll / count,
        "nll_sum": nll,
        "num_tokens": count,
        "num_bytes": scored_bytes,
        "num_windows": len(nll_w),
        "max_length": max_length,
        "stride": stride,
        "add_bos": bool(add_bos if add_bos is not None else tokenizer.bos_token_id is not None),
    }


def load_causal_lm(path: str, device: str | torch.device | None = "auto", dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    model_config(path, "--model")  # a missing folder or one without a tokenizer is refused before the weights load
    tokenizer = load_tokenizer_of(path, "--model")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    model.to(resolve_device(device) if not isinstance(device, torch.device) else device).eval()
    return model, tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval perplexity", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved AutoModelForCausalLM folder (or hub id)")
    p.add_argument("--text", required=True, help="a .txt file (read verbatim), a json/csv file or a hub dataset id")
    p.add_argument("--text-column", default="text", help="column joined with blank lines when --text is a dataset")
    p.add_argument("--split", default="test", help="split of a hub dataset")
    p.add_argument("--dataset-config", default=None, help="hub dataset config, e.g. wikitext-2-raw-v1")
    p.add_argument("--max-length", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--stride", type=int, default=None, help="tokens between window starts (default max_length/2)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens (quick runs)")
    p.add_argument("--no-bos", action="store_true", help="do not prepend the tokenizer's BOS token")
    add_common_args(p, batch_size=8)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    text = load_text(args.text, args.text_column, args.split, args.dataset_config)
    model, tokenizer = load_causal_lm(args.model, args.device, args.dtype)
    result = perplexity_of(
        model,
        tokenizer,
        text,
        max_length=args.max_length,
        stride=args.stride,
        batch_size=args.batch_size,
        add_bos=False if args.no_bos else None,
        max_tokens=args.max_tokens,
        desc=f"perplexity {args.model}",
    )
    result = rnd({"model": args.model, "text": args.text, **result})
    ci = result["intervals"]
    print(
        f"perplexity {result['perplexity']} {ci['perplexity']}  bits/byte {result['bits_per_byte']} "
        f"{ci['bits_per_byte']} (95 % bootstrap over windows)  "
        f"({result['num_tokens']} tokens, {result['num_bytes']} bytes, window {result['max_length']}, "
        f"stride {result['stride']}, {result['num_windows']} windows)"
    )
    if args.output:
        write_json(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
