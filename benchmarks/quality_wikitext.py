"""WikiText-2 test perplexity: SmolLM2-135M teacher; a 6-layer student distilled from cached top-64 teacher logits,
with KD alone and with KD + CE; the same student trained with cross-entropy only on the same tokens and steps.

All students start from the same weights (embeddings, final norm and teacher layers 5, 10, ..., 30) and train on
WikiText-2 *valid* text (all of it, packed into blocks of --max-length tokens; at the defaults the students take
1,600 of its 2,148 blocks, each at most once, in the same order); perplexity is measured on the first --eval-tokens
tokens of WikiText-2 *test*.

    python benchmarks/quality_wikitext.py                 # defaults below, tens of minutes on 2 CPU cores
    python benchmarks/quality_wikitext.py --steps 50      # a quick look

Finished steps are reused, so an interrupted benchmark picks up where it stopped. Prints a Markdown table and
writes benchmarks/results/quality_wikitext.json.
"""

from __future__ import annotations

import argparse
import json
import os

from _runs import run_timed, run_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_TEXT = "../shared/data/wikitext-2/valid.txt"
TEST_TEXT = "../shared/data/wikitext-2/test.txt"
RECIPE = "configs/causal_lm_cached.yaml"


def perplexity(model_dir: str, tokens: int) -> dict:
    from llm_distill.evaluation.perplexity import load_causal_lm, perplexity_of

    model, tokenizer = load_causal_lm(model_dir, device="cpu")
    with open(TEST_TEXT) as fh:
        text = fh.read()
    return perplexity_of(model, tokenizer, text, max_length=256, stride=128, max_tokens=tokens, desc=model_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quality_wikitext")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    ns = parser.parse_args()
    os.chdir(ROOT)
    from llm_distill.assets import fetch

    teacher = fetch("smollm2", "assets/smollm2-135m")
    common = [
        "--teacher_model_name_or_path",
        teacher,
        "--dataset.path",
        TRAIN_TEXT,
        "--dataset.max_samples",
        "null",
        "--dataset.max_length",
        str(ns.max_length),
        "--dataset.eval_size",
        "0",
        "--eval_strategy",
        "no",
        "--max_steps",
        str(ns.steps),
        "--per_device_train_batch_size",
        str(ns.batch_size),
        "--gradient_accumulation_steps",
        "1",
        "--save_strategy",
        "no",
        "--learning_rate",
        "3e-4",
    ]
    store = f"{ns.out}/teacher-top64"
    cache_s, cache_cmd = run_timed("cache-logits", RECIPE, [*common, "--cache.output_dir", store], store)
    cached = ["--teacher_logits_path", store, "--loss_chunk_size", "128"]
    runs = {
        "kd": ("train", [*cached, "--kd_weight", "1.0", "--ce_weight", "0.0"]),
        "kd_ce": ("train", [*cached, "--kd_weight", "0.5", "--ce_weight", "0.5"]),
        "ce_only": ("finetune", []),
    }
    (kd_s, kd_cmd), (mix_s, mix_cmd), (ce_s, ce_cmd) = (
        run_training(verb, RECIPE, [*common, *extra, "--output_dir", f"{ns.out}/{name}"], [f"{ns.out}/{name}"])
        for name, (verb, extra) in runs.items()
    )
    table = [
        {
            "model": "teacher: SmolLM2-135M (Q4_1 weights, de-quantised)",
            "dir": teacher,
            "seconds": None,
            "command": "llm-distill fetch-teacher smollm2 --output assets/smollm2-135m",
        },
        {
            "model": "student 6L: KD only, cached top-64 teacher logits",
            "dir": f"{ns.out}/kd",
            "seconds": cache_s + kd_s,
            "command": f"{cache_cmd} && {kd_cmd}",
        },
        {
            "model": "student 6L: 0.5 KD (same store) + 0.5 CE",
            "dir": f"{ns.out}/kd_ce",
            "seconds": cache_s + mix_s,
            "command": f"{cache_cmd} && {mix_cmd}",
        },
        {
            "model": "student 6L: cross-entropy only (no teacher)",
            "dir": f"{ns.out}/ce_only",
            "seconds": ce_s,
            "command": ce_cmd,
        },
    ]
    from transformers import AutoModelForCausalLM

    for row in table:
        row.update(perplexity(row["dir"], ns.eval_tokens))
        row["parameters"] = AutoModelForCausalLM.from_pretrained(row["dir"]).num_parameters()
    os.makedirs("benchmarks/results", exist_ok=True)
    settings = {k: getattr(ns, k) for k in ("steps", "batch_size", "max_length", "eval_tokens")}
    with open("benchmarks/results/quality_wikitext.json", "w") as fh:
        json.dump({"settings": settings, "cache_seconds": cache_s, "rows": table}, fh, indent=2)
    print(
        f"\nWikiText-2 test, first {table[0]['num_tokens']} tokens, window 256 / stride 128; students trained "
        f"{ns.steps} steps x {ns.batch_size} x {ns.max_length} tokens of WikiText-2 valid\n"
    )
    print("| model | params | perplexity | bits/byte | time (store + training) | command |")
    print("|---|---|---|---|---|---|")
    for r in table:
        wall = f"{r['seconds'] / 60:.1f} min" if r["seconds"] else "-"
        print(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['perplexity']:.2f} | {r['bits_per_byte']:.3f} "
            f"| {wall} | `{r['command']}` |"
        )


if __name__ == "__main__":
    main()
