"""Cross-tokenizer coverage: SmolLM2-135M (teacher tokenizer and model) against the GPT-2 tokenizer (student).

Measured, all on real text and the real models, before any training:

1. alignment: on every paragraph of WikiText-2 *valid* (each a document ending in EOS), the share of the student's
   counted prediction positions that get an aligned teacher position, and the groups where boundaries differ;
2. the exact vocabulary map: matched entries, and the share of the teacher's probability mass (SmolLM2 forward, T=1)
   on matched ids, at all its counted positions and at aligned ones, over the first --mass-tokens teacher tokens;
3. the transplant: GPT-2 rows copied exactly vs mean-initialised vs mean of all rows, and bits per byte on the first
   --eval-tokens GPT-2 tokens of WikiText-2 *test* (cut at a line end, the same characters for every model; window
   256, stride 128, no BOS) for the teacher, the 6-layer student from teacher layers 5, 10, ..., 30 with the
   teacher's tokenizer, the same student transplanted to GPT-2, and the whole teacher transplanted to GPT-2;
4. the three cross-vocabulary losses between the transplanted 6-layer student and the teacher at aligned positions
   (their starting scale, for choosing weights later).

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/cross_tokenizer_coverage.py           # a few minutes, 2 cores

Prints Markdown tables and writes benchmarks/results/cross_tokenizer_coverage.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALID = "../shared/data/wikitext-2/valid.txt"
TEST = "../shared/data/wikitext-2/test.txt"
GPT2_DIR = "../shared/data/tokenizers/gpt2"
LAYERS = [5, 10, 15, 20, 25, 30]


def gpt2_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(os.path.join(GPT2_DIR, "vocab.json"), os.path.join(GPT2_DIR, "merges.txt"))
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def paragraphs(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]


def alignment_stats(lines: list[str], student_tok, teacher_tok, batch: int = 256) -> dict:
    from llm_distill.vocab import align_batch, text_example

    counted = paired = groups = group_student = group_teacher = 0
    kinds = {"with_digits": 0, "non_ascii": 0, "other": 0}
    for start in range(0, len(lines), batch):
        texts = lines[start : start + batch]
        aligned = align_batch([text_example(line, add_eos=True) for line in texts], student_tok, teacher_tok)
        counted += int(aligned.counted_positions().sum())
        paired += int(aligned.pair_mask.sum())
        for text, row in zip(texts, aligned.groups):
            groups += len(row)
            group_student += sum(g.student_end - g.student_start for g in row)
            group_teacher += sum(g.teacher_end - g.teacher_start for g in row)
            for g in row:
                chars = text[g.char_start : g.char_end]
                digits, non_ascii = any(c.isdigit() for c in chars), any(ord(c) > 127 for c in chars)
                kinds["with_digits" if digits else "non_ascii" if non_ascii else "other"] += 1
    return {
        "paragraphs": len(lines),
        "student_counted_positions": counted,
        "aligned_positions": paired,
        "aligned_share": paired / counted,
        "groups": groups,
        "student_tokens_in_groups": group_student,
        "teacher_tokens_in_groups": group_teacher,
        "groups_by_text": kinds,
    }


@torch.no_grad()
def mass_and_losses(lines, student_tok, teacher_tok, teacher, student, vocab_map, max_tokens: int) -> dict:
    """Teacher mass on matched ids (all counted positions, aligned positions) and the three losses at the latter."""
    from llm_distill.losses import exact_map_divergence, hybrid_loss, matched_mass, uld_loss
    from llm_distill.vocab import align_batch, gather_positions, text_example

    rows, total = [], 0
    for line in lines:
        n = len(teacher_tok(line)["input_ids"])
        if total + n > max_tokens:
            break
        rows.append(text_example(line, add_eos=True))
        total += n
    aligned = align_batch(rows, student_tok, teacher_tok)
    teacher_logits = teacher(**aligned.teacher_inputs()).logits.float()
    teacher_counted = aligned.teacher_attention_mask[:, 1:].bool()  # teacher positions followed by a real token
    ids_t, ids_s = vocab_map.teacher_ids, vocab_map.student_ids
    mass_all = matched_mass(teacher_logits[:, :-1][teacher_counted], ids_t)
    t_at = gather_positions(teacher_logits, aligned.teacher_positions)[aligned.pair_mask]
    mass_aligned = matched_mass(t_at, ids_t)
    top1_matched = torch.isin(t_at.argmax(-1), ids_t).float().mean()
    inputs = aligned.student_inputs()
    s_logits = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
    s_at = gather_positions(s_logits, aligned.student_positions)[aligned.pair_mask]
    return {
        "teacher_tokens": int(aligned.teacher_attention_mask.sum()),
        "teacher_predicting_positions": int(teacher_counted.sum()),
        "aligned_positions": int(aligned.pair_mask.sum()),
        "teacher_mass_on_matched_all_positions": mass_all.mean().item(),
        "teacher_mass_on_matched_aligned_positions": mass_aligned.mean().item(),
        "teacher_mass_on_matched_aligned_p10": mass_aligned.quantile(0.1).item(),
        "teacher_top1_matched_share_aligned": top1_matched.item(),
        "initial_losses_6L_transplanted": {
            "exact_forward_kl": exact_map_divergence(s_at, t_at, ids_s, ids_t).item(),
            "uld": uld_loss(s_at, t_at).item(),
            "hybrid_1_1": hybrid_loss(s_at, t_at, ids_s, ids_t).item(),
        },
    }


def test_prefix(student_tok, tokens: int) -> str:
    """The first ``tokens`` GPT-2 tokens of the test text, cut back to the end of a line."""
    with open(TEST, encoding="utf-8") as fh:
        text = fh.read()
    offsets = student_tok(text, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    end = offsets[min(tokens, len(offsets)) - 1][1]
    return text[: text.rfind("\n", 0, end) + 1]


def bits_per_byte(model, tokenizer, text: str, name: str) -> dict:
    from llm_distill.evaluation.perplexity import perplexity_of

    start = time.perf_counter()
    result = perplexity_of(model, tokenizer, text, max_length=256, stride=128, add_bos=False, desc=name)
    keep = ("bits_per_byte", "perplexity", "num_tokens", "num_bytes")
    return {"model": name, **{k: result[k] for k in keep}, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="assets/smollm2-135m")
    parser.add_argument("--mass-tokens", type=int, default=1024)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--output", default="benchmarks/results/cross_tokenizer_coverage.json")
    parser.add_argument(
        "--alignment-only", action="store_true", help="tokenizers only (no model): redo the alignment section"
    )
    ns = parser.parse_args()
    os.chdir(ROOT)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_distill.student import student_from_teacher
    from llm_distill.vocab import build_exact_map, transplant_tokenizer

    student_tok = gpt2_tokenizer()
    teacher_tok = AutoTokenizer.from_pretrained(ns.teacher)
    valid = paragraphs(VALID)
    if ns.alignment_only:
        with open(ns.output) as fh:
            result = json.load(fh)
        result["alignment"] = alignment_stats(valid, student_tok, teacher_tok)
        with open(ns.output, "w") as fh:
            json.dump(result, fh, indent=2)
        print(json.dumps(result["alignment"], indent=2))
        return
    teacher = AutoModelForCausalLM.from_pretrained(ns.teacher, dtype=torch.float32).eval()
    vocab_map = build_exact_map(student_tok, teacher_tok)

    result: dict = {"teacher": ns.teacher, "student_tokenizer": GPT2_DIR}
    result["alignment"] = alignment_stats(valid, student_tok, teacher_tok)
    result["exact_map"] = {
        "matched_entries": len(vocab_map),
        "student_vocab": vocab_map.student_size,
        "teacher_vocab": vocab_map.teacher_size,
        "student_share": vocab_map.student_coverage(),
        "teacher_share": vocab_map.teacher_coverage(),
    }

    student_own = student_from_teacher(teacher, num_layers=6, layer_init=LAYERS).eval()
    student = copy.deepcopy(student_own)
    report = transplant_tokenizer(student, student_tok, teacher_tok, vocab_map=vocab_map)
    result["transplant"] = report.to_dict()
    result["exact_map"].update(
        mass_and_losses(valid, student_tok, teacher_tok, teacher, student, vocab_map, ns.mass_tokens)
    )

    text = test_prefix(student_tok, ns.eval_tokens)
    result["eval_text"] = {"path": TEST, "characters": len(text), "gpt2_tokens_requested": ns.eval_tokens}
    rows = [
        bits_per_byte(teacher, teacher_tok, text, "teacher SmolLM2-135M, own tokenizer"),
        bits_per_byte(student_own, teacher_tok, text, "6L student (layers 5..30), teacher tokenizer"),
        bits_per_byte(student, student_tok, text, "6L student, GPT-2 tokenizer (transplant)"),
    ]
    del student_own, student
    whole = copy.deepcopy(teacher)
    transplant_tokenizer(whole, student_tok, teacher_tok, vocab_map=vocab_map)
    rows.append(bits_per_byte(whole, student_tok, text, "teacher, GPT-2 tokenizer (transplant)"))
    result["bits_per_byte"] = rows

    a, m, t = result["alignment"], result["exact_map"], result["transplant"]
    print("\n| measure | value |\n|---|---|")
    print(
        f"| student counted positions aligned | {a['aligned_share']:.2%} ({a['aligned_positions']:,} / "
        f"{a['student_counted_positions']:,}, {a['paragraphs']:,} paragraphs) |"
    )
    print(
        f"| groups (boundaries differ) | {a['groups']:,}: {a['student_tokens_in_groups']:,} student vs "
        f"{a['teacher_tokens_in_groups']:,} teacher tokens; by text {a['groups_by_text']} |"
    )
    print(
        f"| exact map entries | {m['matched_entries']:,} ({m['student_share']:.1%} of GPT-2, "
        f"{m['teacher_share']:.1%} of SmolLM2) |"
    )
    print(
        f"| teacher mass on matched ids | {m['teacher_mass_on_matched_all_positions']:.2%} all positions, "
        f"{m['teacher_mass_on_matched_aligned_positions']:.2%} aligned (p10 "
        f"{m['teacher_mass_on_matched_aligned_p10']:.2%}); "
        f"top-1 matched {m['teacher_top1_matched_share_aligned']:.1%}"
        f" ({m['aligned_positions']} aligned positions) |"
    )
    print(
        f"| transplant | {t['copied']:,} copied ({t['copied_share']:.1%}), {t['mean_initialised']:,} mean of "
        f"teacher pieces, {t['fallback']} mean of all rows |"
    )
    losses = m["initial_losses_6L_transplanted"]
    print(
        f"| 6L transplanted vs teacher at aligned positions | exact fKL {losses['exact_forward_kl']:.3f}, "
        f"ULD {losses['uld']:.3f}, hybrid {losses['hybrid_1_1']:.3f} |"
    )
    print(f"\nBits per byte, first {len(text):,} characters of WikiText-2 test (window 256, stride 128, no BOS):\n")
    print("| model | bits/byte | perplexity (own tokens) | tokens | bytes |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['bits_per_byte']:.3f} | {r['perplexity']:.2f} | {r['num_tokens']:,} | "
            f"{r['num_bytes']:,} |"
        )
    os.makedirs(os.path.dirname(ns.output), exist_ok=True)
    with open(ns.output, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"\nwrote {ns.output}")


if __name__ == "__main__":
    main()
