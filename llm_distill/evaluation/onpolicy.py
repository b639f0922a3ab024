"""``eval onpolicy``: a causal-LM student on its own samples, judged by its teacher, on held-out prompts.

For every prompt (rendered as training renders it: the tokenizer's chat template when it has one):

- ``sample_reverse_kl``: the student samples a completion (``--temperature`` / ``--top-p`` / ``--top-k``, one seed per
  prompt); the mean over its tokens (EOS included) of KL(p_S || p_T) at T = 1, with the teacher scoring the same
  prefix — the quantity on-policy distillation with reverse KL drives down, at the states the student visits;
- ``greedy_teacher_nll``: the mean over the tokens of the student's greedy completion of -log p_T(token);
- length statistics of both completions (tokens, EOS included; ``eos_rate``: share that ended before the limit);
- ``exact_match`` when the references are GSM8K answers (the number after ``####``), against the last number of
  the greedy completion.

    llm-distill eval onpolicy --teacher assets/smollm2-135m --student runs/onpolicy-gsm8k \
        --prompts ../shared/data/gsm8k/test.jsonl --limit 200 --max-new-tokens 128 --output runs/onpolicy.json

``--student`` may be the teacher itself (its reverse KL is then 0): that gives the teacher's own exact match.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections.abc import Sequence

import torch
from torch import nn

from ..data import render_prompt
from ..losses import divergence, hard_ce
from ..onpolicy import SamplingSettings, TransformersBackend, completion_batch, eos_ids_of, row_seed
from ..tasks import targets
from ..vocab import check_tokenizers, shared_vocab_size
from .common import check_columns, load_table, rnd, write_json
from .perplexity import load_causal_lm

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gsm8k_reference(answer: str) -> str | None:
    """The final answer of a GSM8K solution: the number after ``####`` (None when there is no ``####``)."""
    if "####" not in answer:
        return None
    found = NUMBER.findall(answer.split("####")[-1])
    return _number(found[0]) if found else None


def last_number(text: str) -> str | None:
    """The last number in a completion (how GSM8K completions are usually graded), normalised."""
    found = NUMBER.findall(text)
    return _number(found[-1]) if found else None


def _number(text: str) -> str:
    value = text.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def _length_stats(completions: list[list[int]], eos_ids: Sequence[int]) -> dict:
    lengths = [len(c) for c in completions]
    return {
        "mean": sum(lengths) / len(lengths),
        "median": statistics.median(lengths),
        "max": max(lengths),
        "eos_rate": sum(bool(c) and c[-1] in eos_ids for c in completions) / len(completions),
    }


@torch.no_grad()
def _score(teacher, student, prompts, completions, *, pad_id: int, vocab: int | None, batch_size: int):
    """(sum of KL(p_S || p_T), sum of teacher NLL, counted tokens) over the completions' tokens."""
    device = next(student.parameters()).device
    kl = nll = 0.0
    count = 0
    for start in range(0, len(prompts), batch_size):
        batch = completion_batch(
            prompts[start : start + batch_size], completions[start : start + batch_size], pad_id, device
        )
        mask, labels = targets(batch, "causal_lm")
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        # Only the counted rows are kept: the completions' positions, from the last prompt token on.
        t = teacher(**inputs).logits[mask][..., :vocab]
        s = student(**inputs).logits[mask][..., :vocab]
        kl += float(divergence(s, t, kind="reverse_kl", temperature=1.0, reduction="sum", scale_by_t2=False))
        nll += float(hard_ce(t, labels[mask], reduction="sum"))
        count += int(mask.sum())
    return kl, nll, count


def onpolicy_metrics(
    teacher: nn.Module,
    student: nn.Module,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    answers: Sequence[str] | None = None,
    *,
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 8,
    chat_template: str | bool = "auto",
) -> dict:
    """The metrics of this verb for already loaded models (both in eval mode on one device); ``tokenizer`` is the
    student's (the teacher must map tokens to the same ids). ``answers``: GSM8K solutions for exact match, or None.

    This is the function a report calls for a causal student."""
    settings = settings or SamplingSettings()
    if not prompts:
        raise ValueError("there are no prompts to evaluate on")
    student.eval()
    teacher.eval()
    vocab = shared_vocab_size(teacher.config.vocab_size, student.config, tokenizer, "causal_lm")
    eos = eos_ids_of(tokenizer, student)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    backend = TransformersBackend(eos, pad, vocab_size=vocab)
    ids = [render_prompt(tokenizer, p, chat_template) for p in prompts]
    greedy_settings = SamplingSettings(settings.max_new_tokens, temperature=0.0)
    sampled, greedy = [], []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        seeds = [row_seed(seed, i) for i in range(start, start + len(chunk))]
        sampled += backend.generate(student, chunk, seeds, settings)
        greedy += backend.generate(student, chunk, seeds, greedy_settings)
    kl, _, kl_tokens = _score(teacher, student, ids, sampled, pad_id=pad, vocab=vocab, batch_size=batch_size)
    _, nll, nll_tokens = _score(teacher, student, ids, greedy, pad_id=pad, vocab=vocab, batch_size=batch_size)
    result = {
        "num_prompts": len(ids),
        "max_new_tokens": settings.max_new_tokens,
        "generation_temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k,
        "seed": seed,
        "sample_reverse_kl": kl / max(kl_tokens, 1),
        "sample_tokens": kl_tokens,
        "greedy_teacher_nll": nll / max(nll_tokens, 1),
        "greedy_tokens": nll_tokens,
        "sample_length": _length_stats(sampled, eos),
        "greedy_length": _length_stats(greedy, eos),
        "exact_match": None,
    }
    references = [gsm8k_reference(a) for a in answers] if answers is not None else []
    if references and all(r is not None for r in references):
        texts = tokenizer.batch_decode(greedy, skip_special_tokens=True)
        hits = [last_number(text) == ref for text, ref in zip(texts, references)]
        result.update(exact_match=sum(hits) / len(hits), exact_match_count=sum(hits))
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval onpolicy", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="saved causal LM folder that scores the student's completions")
    p.add_argument("--student", required=True, help="saved causal LM folder (its tokenizer renders the prompts)")
    p.add_argument("--prompts", required=True, help="json/jsonl/csv/parquet file, saved dataset folder or hub id")
    p.add_argument("--split", default="test", help="split of a hub dataset (default test)")
    p.add_argument(
        "--prompt-column", default=None, help="prompt text column (default: question if present, else prompt)"
    )
    p.add_argument("--messages-column", default=None, help="chat messages column instead of a prompt column")
    p.add_argument(
        "--answer-column", default=None, help="GSM8K-style answers for exact match (default: answer if present)"
    )
    p.add_argument("--limit", type=int, default=200, help="first N prompts (default 200; GSM8K test is held out)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per completion (default 256)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the sampled completions")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass of the sampled completions (1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="top-k of the sampled completions (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled completions (one stream per prompt)")
    p.add_argument("--chat-template", default="auto", choices=["auto", "true", "false"], help="render prompts with it")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    p.add_argument("--dtype", default="float32", help="model dtype (default float32)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call and per scoring forward")
    p.add_argument("--output", default=None, help="write the result as JSON to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    table = load_table(args.prompts, split=args.split, limit=args.limit)
    column = (
        args.messages_column or args.prompt_column or ("question" if "question" in table.column_names else "prompt")
    )
    check_columns(table, [column], "prompt")
    answer_column = args.answer_column or ("answer" if "answer" in table.column_names else None)
    if answer_column:
        check_columns(table, [answer_column], "answer")
    student, tokenizer = load_causal_lm(args.student, args.device, args.dtype)
    teacher, teacher_tokenizer = load_causal_lm(args.teacher, next(student.parameters()).device, args.dtype)
    check_tokenizers(teacher_tokenizer, tokenizer)
    chat = {"auto": "auto", "true": True, "false": False}[args.chat_template]
    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k)
    result = onpolicy_metrics(
        teacher,
        student,
        tokenizer,
        list(table[column]),
        list(table[answer_column]) if answer_column else None,
        settings=settings,
        seed=args.seed,
        batch_size=args.batch_size,
        chat_template=chat,
    )
    result = rnd({"teacher": args.teacher, "student": args.student, "prompts": args.prompts, **result})
    match = "" if result["exact_match"] is None else f"  exact match {result['exact_match']}"
    print(
        f"sample reverse KL {result['sample_reverse_kl']}/token  teacher NLL of greedy {result['greedy_teacher_nll']}"
        f"/token  sampled length {result['sample_length']['mean']}  greedy length {result['greedy_length']['mean']}"
        f"{match}  ({result['num_prompts']} prompts)"
    )
    if args.output:
        write_json(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
