"""WikiText-2 test perplexity of a 6-layer SmolLM2-135M student distilled (KD + CE) with token-level data selection
by excess loss (student NLL - teacher NLL, as in selective language modelling, Rho-1) keeping 70 % and 50 % of each
row's tokens, against the same student on all tokens, at the same steps.

Setting: that of ``quality_wikitext.py`` (students from the teacher's embeddings, final norm and layers 5, 10, ..., 30;
--steps steps x --batch-size blocks of --max-length tokens of WikiText-2 *valid*, each block at most once, in the same
order; perplexity and bits per byte on the first --eval-tokens tokens of WikiText-2 *test*, window 256, stride 128),
but with a live teacher: the scores come from each micro-batch's teacher and student forward passes, which a top-k
logit store cannot give. KD and CE are computed on the kept tokens only; every row sees the same forward passes.

    python benchmarks/quality_selection_wikitext.py                      # about 50 minutes on 2 quiet CPU cores
    python benchmarks/quality_selection_wikitext.py --steps 3 --eval-tokens 512 --out runs/sel_tiny

Finished runs are reused. Prints a Markdown table and writes benchmarks/results/quality_selection_wikitext.json.
"""

from __future__ import annotations

import argparse
import json
import os

from _runs import run_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_TEXT = "../shared/data/wikitext-2/valid.txt"
TEST_TEXT = "../shared/data/wikitext-2/test.txt"
RECIPE = "configs/causal_lm_token_selection.yaml"


def perplexity(model_dir: str, tokens: int) -> dict:
    from llm_distill.evaluation.perplexity import load_causal_lm, perplexity_of

    model, tokenizer = load_causal_lm(model_dir, device="cpu")
    with open(TEST_TEXT) as fh:
        text = fh.read()
    return perplexity_of(model, tokenizer, text, max_length=256, stride=128, max_tokens=tokens, desc=model_dir)


def selection_logs(run_dir: str) -> dict:
    """The kept fraction and excess-loss scores the run logged, averaged over its logging steps."""
    with open(os.path.join(run_dir, "trainer_state.json")) as fh:
        logs = [e for e in json.load(fh)["log_history"] if "selection_kept_fraction" in e]
    keys = ("selection_kept_fraction", "selection_score_mean", "selection_score_std", "selection_kept_score_mean")
    return {k: sum(e[k] for e in logs) / len(logs) for k in keys} if logs else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quality_selection_wikitext")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    ns = parser.parse_args()
    os.chdir(ROOT)
    from llm_distill.assets import fetch

    teacher = fetch("smollm2", "assets/smollm2-135m")
    common = [
        "--teacher_model_name_or_path", teacher,
        "--dataset.path", TRAIN_TEXT,
        "--dataset.max_samples", "null",
        "--dataset.max_length", str(ns.max_length),
        "--dataset.eval_size", "0",
        "--eval_strategy", "no",
        "--max_steps", str(ns.steps),
        "--per_device_train_batch_size", str(ns.batch_size),
        "--gradient_accumulation_steps", "1",
        "--save_strategy", "no",
        "--learning_rate", "3e-4",
        "--logging_steps", "10",
    ]  # fmt: skip
    arms = {
        "all_tokens": ("all tokens (no selection)", ["--data_selection", "null"]),
        "keep70": ("excess-loss selection, keep 70 %", ["--data_selection.keep", "0.7"]),
        "keep50": ("excess-loss selection, keep 50 %", ["--data_selection.keep", "0.5"]),
    }
    table = [
        {
            "model": "teacher: SmolLM2-135M (Q4_1 weights, de-quantised)",
            "dir": teacher,
            "seconds": None,
            "command": "llm-distill fetch-teacher smollm2 --output assets/smollm2-135m",
        }
    ]
    for name, (label, extra) in arms.items():
        out = f"{ns.out}/{name}"
        seconds, cmd = run_training("train", RECIPE, [*common, *extra, "--output_dir", out], [out])
        table.append(
            {
                "model": f"student 6L, 0.5 KD + 0.5 CE: {label}",
                "dir": out,
                "seconds": seconds,
                "command": cmd,
                **selection_logs(out),
            }
        )
    from transformers import AutoModelForCausalLM

    for row in table:
        row.update(perplexity(row["dir"], ns.eval_tokens))
        row["parameters"] = AutoModelForCausalLM.from_pretrained(row["dir"]).num_parameters()
    os.makedirs("benchmarks/results", exist_ok=True)
    settings = {k: getattr(ns, k) for k in ("steps", "batch_size", "max_length", "eval_tokens")}
    with open("benchmarks/results/quality_selection_wikitext.json", "w") as fh:
        json.dump({"settings": settings, "rows": table}, fh, indent=2)
    print(
        f"\nWikiText-2 test, first {table[0]['num_tokens']} tokens, window 256 / stride 128; students trained "
        f"{ns.steps} steps x {ns.batch_size} x {ns.max_length} tokens of WikiText-2 valid, live teacher\n"
    )
    print("| model | params | perplexity | bits/byte | kept fraction | mean excess (all / kept) | training time |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        wall = f"{r['seconds'] / 60:.1f} min" if r["seconds"] else "-"
        kept = f"{r['selection_kept_fraction']:.3f}" if "selection_kept_fraction" in r else "-"
        score = (
            f"{r['selection_score_mean']:.2f} / {r['selection_kept_score_mean']:.2f}"
            if "selection_score_mean" in r
            else "-"
        )
        print(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['perplexity']:.2f} | {r['bits_per_byte']:.3f} "
            f"| {kept} | {score} | {wall} |"
        )
    for r in table:
        print(f"- {r['model']}: `{r['command']}`")


if __name__ == "__main__":
    main()
