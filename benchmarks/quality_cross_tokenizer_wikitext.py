"""WikiText-2 bits per byte of a 6-layer student with GPT-2's tokenizer distilled from SmolLM2-135M (another
tokenizer): cross-entropy only against ULD, the exact vocabulary map and the hybrid of both (each + CE), at the same
steps on the same raw text; plus the transplanted student before any training and the teacher.

Setting: every student is ``configs/cross_tokenizer_wikitext.yaml``'s — the teacher's embeddings, final norm and 6
layers, with the GPT-2 tokenizer transplanted (shared tokens copied, the others the mean of their teacher pieces) —
and starts from the same weights. Training text: WikiText-2 *valid*, cut at word boundaries into chunks of about
--chunk-chars characters; the last --heldout-share of the chunks is a validation split carved from it (bits per
byte on its first --heldout-chars characters, for choosing ``--kd-weight``); the rest are read --steps x
--batch-size rows, in the same order for every arm. Metric: bits per byte on the first --eval-chars characters of
WikiText-2 *test* (window 256, stride 128, in each model's own tokens: bits per byte does not depend on the
tokenizer).

    python benchmarks/quality_cross_tokenizer_wikitext.py --gold          # about an hour on 2 quiet CPU cores
    python benchmarks/quality_cross_tokenizer_wikitext.py --steps 3 --eval-chars 2000 --out runs/xtok_tiny

Finished runs are reused. Prints a Markdown table and writes benchmarks/results/quality_cross_tokenizer_wikitext.json
(only for the default --out).
"""

from __future__ import annotations

import argparse
import json
import os

from _runs import run_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_TEXT = "../shared/data/wikitext-2/valid.txt"
TEST_TEXT = "../shared/data/wikitext-2/test.txt"
GPT2 = "../shared/data/tokenizers/gpt2"
RECIPE = "configs/cross_tokenizer_wikitext.yaml"
DEFAULT_OUT = "runs/quality_cross_tokenizer_wikitext"
TEST_SCORES = ("bits_per_byte", "perplexity", "num_tokens", "num_bytes", "intervals")  # kept of each test-text score


def write_chunks(out: str, chunk_chars: int, heldout_share: float) -> tuple[str, str]:
    """WikiText-2 valid in chunks of about ``chunk_chars`` characters (whole words, paragraphs not joined), split into
    training and held-out JSONL files."""
    chunks = []
    with open(TRAIN_TEXT, encoding="utf-8") as fh:
        for line in fh:
            words, current = line.split(), []
            for word in words:
                current.append(word)
                if sum(len(w) + 1 for w in current) >= chunk_chars:
                    chunks.append(" " + " ".join(current))
                    current = []
            if current:
                chunks.append(" " + " ".join(current))
    cut = int(len(chunks) * (1 - heldout_share))
    paths = (f"{out}/data/train.jsonl", f"{out}/data/heldout.jsonl")
    os.makedirs(f"{out}/data", exist_ok=True)
    for path, rows in zip(paths, (chunks[:cut], chunks[cut:])):
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": text}) + "\n" for text in rows)
    return paths


def transplanted_student(teacher_dir: str, out: str) -> str:
    """The students' common start, saved: what every arm trains from (the recipe builds the same one, seeded)."""
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    from transformers import AutoModelForCausalLM

    from llm_distill.student import student_from_teacher
    from llm_distill.tasks import load_tokenizer_of
    from llm_distill.vocab import transplant_tokenizer

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype="float32")
    student = student_from_teacher(teacher, num_layers=6)
    tokenizer = load_tokenizer_of(GPT2, "student tokenizer")
    report = transplant_tokenizer(student, tokenizer, load_tokenizer_of(teacher_dir, "teacher"))
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(os.path.join(out, "transplant.json"), "w") as fh:
        json.dump(report.to_dict(), fh, indent=2)
    return out


def bits_per_byte(model_dir: str, test_text: str, heldout_text: str) -> dict:
    """Bits per byte on the test text (with its interval and counts) and on the held-out training chunks."""
    from llm_distill.evaluation.perplexity import load_causal_lm, perplexity_of

    model, tokenizer = load_causal_lm(model_dir, device="cpu")
    test = perplexity_of(model, tokenizer, test_text, max_length=256, stride=128, desc=model_dir)
    heldout = perplexity_of(model, tokenizer, heldout_text, max_length=256, stride=128, desc=f"{model_dir} held-out")
    return {**{k: test[k] for k in TEST_SCORES}, "heldout_bits_per_byte": heldout["bits_per_byte"]}


def earlier_scores(result_path: str, settings: dict) -> dict[str, dict]:
    """Scores of an earlier run of this script with the same settings, by model folder, for the folders saved before
    that run wrote them (trained runs are reused, so their scores are too; adding --gold scores only the new arm)."""
    if not os.path.exists(result_path):
        return {}
    with open(result_path) as fh:
        earlier = json.load(fh)
    if any(earlier["settings"].get(k) != v for k, v in settings.items()):
        return {}
    written = os.path.getmtime(result_path)
    return {
        r["dir"]: {k: r[k] for k in (*TEST_SCORES, "heldout_bits_per_byte")}
        for r in earlier["rows"]
        if "bits_per_byte" in r and os.path.getmtime(os.path.join(r["dir"], "config.json")) < written
    }


def read_texts(heldout_path: str, chars: int, heldout_chars: int) -> tuple[str, str]:
    with open(TEST_TEXT, encoding="utf-8") as fh:
        test = fh.read()[:chars]
    with open(heldout_path, encoding="utf-8") as fh:
        heldout = "".join(json.loads(line)["text"] for line in fh)[:heldout_chars]
    return test, heldout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=160, help="student (GPT-2) tokens per row")
    parser.add_argument("--chunk-chars", type=int, default=500)
    parser.add_argument("--heldout-share", type=float, default=0.05)
    parser.add_argument("--eval-chars", type=int, default=66356)
    parser.add_argument("--heldout-chars", type=int, default=20000, help="characters of the held-out split scored")
    parser.add_argument("--kd-weight", type=float, default=0.5)
    parser.add_argument("--gold", action="store_true", help="add TRL's GOLD trainer (ULD) as a side-by-side arm")
    ns = parser.parse_args()
    os.chdir(ROOT)
    from llm_distill.assets import fetch

    teacher = fetch("smollm2", "assets/smollm2-135m")
    train_path, heldout_path = write_chunks(ns.out, ns.chunk_chars, ns.heldout_share)
    start = transplanted_student(teacher, f"{ns.out}/transplant")
    common = [
        "--teacher_model_name_or_path", teacher,
        "--dataset.path", train_path,
        "--dataset.eval_size", "0",
        "--dataset.max_length", str(ns.max_length),
        "--eval_strategy", "no",
        "--max_steps", str(ns.steps),
        "--per_device_train_batch_size", str(ns.batch_size),
        "--save_strategy", "no",
        "--kd_weight", str(ns.kd_weight),
        "--ce_weight", str(round(1 - ns.kd_weight, 6)),
    ]  # fmt: skip
    table = [
        {"model": "teacher: SmolLM2-135M (its own tokenizer)", "dir": teacher, "seconds": None, "command": None},
        {
            "model": "student before training: 6 teacher layers, GPT-2 tokenizer transplanted",
            "dir": start,
            "seconds": None,
            "command": None,
        },
    ]
    arms = {
        "ce_only": ("CE only (no teacher)", "finetune", []),
        "uld": (f"ULD + CE ({ns.kd_weight:g} / {1 - ns.kd_weight:g})", "train", ["--cross_tokenizer_loss", "uld"]),
        "exact": (f"exact map + CE ({ns.kd_weight:g} / {1 - ns.kd_weight:g})", "train",
                  ["--cross_tokenizer_loss", "exact"]),
        "hybrid": (f"hybrid (exact + ULD of the rest) + CE ({ns.kd_weight:g} / {1 - ns.kd_weight:g})", "train",
                   ["--cross_tokenizer_loss", "hybrid"]),
    }  # fmt: skip
    for name, (label, verb, extra) in arms.items():
        out = f"{ns.out}/{name}"
        overrides = [*common, *extra, "--output_dir", out]
        if verb == "finetune":
            overrides += ["--kd_weight", "0.0", "--ce_weight", "1.0"]
        seconds, cmd = run_training(verb, RECIPE, overrides, [out])
        table.append({"model": f"student: {label}", "dir": out, "seconds": seconds, "command": cmd})
    if ns.gold:
        from _trl_gold import run_gold

        out = f"{ns.out}/trl_gold"
        gold = run_gold(
            teacher_dir=teacher, student_dir=start, train_jsonl=train_path, out=out, steps=ns.steps,
            batch_size=ns.batch_size, learning_rate=3e-4, max_length=ns.max_length, seed=42,
        )  # fmt: skip
        table.append(
            {
                "model": "student: TRL GOLD (ULD), same start, text and steps",
                "dir": out,
                "seconds": gold["train_seconds"],
                "command": "benchmarks/_trl_gold.py",
                "gold": gold["settings"],
            }
        )

    settings = {k: getattr(ns, k) for k in ("steps", "batch_size", "max_length", "chunk_chars", "heldout_share",
                                            "eval_chars", "heldout_chars", "kd_weight")}  # fmt: skip
    result_path = "benchmarks/results/quality_cross_tokenizer_wikitext.json" if ns.out == DEFAULT_OUT else (
        f"{ns.out}/result.json")  # fmt: skip
    scored = earlier_scores(result_path, settings)
    test_text, heldout_text = read_texts(heldout_path, ns.eval_chars, ns.heldout_chars)
    for row in table:
        row.update(scored.get(row["dir"]) or bits_per_byte(row["dir"], test_text, heldout_text))
    ce_only = next(r for r in table if r["dir"].endswith("/ce_only"))["bits_per_byte"]
    for row in table:
        row["vs_ce_only_pct"] = 100.0 * (row["bits_per_byte"] / ce_only - 1)
    with open(os.path.join(start, "transplant.json")) as fh:
        settings["transplant"] = json.load(fh)
    os.makedirs(os.path.dirname(result_path), exist_ok=True)
    with open(result_path, "w") as fh:
        json.dump({"settings": settings, "rows": table}, fh, indent=2)

    print(f"\nWikiText-2 test, first {ns.eval_chars} characters ({table[0]['num_bytes']} bytes); students: {ns.steps} "
          f"steps x {ns.batch_size} rows of WikiText-2 valid (<= {ns.max_length} GPT-2 tokens each)\n")  # fmt: skip
    print("| model | test bits/byte (95 % CI) | vs CE only | held-out train bits/byte | time/step | tokens scored |")
    print("|---|---|---|---|---|---|")
    for r in table:
        lo, hi = r["intervals"]["bits_per_byte"]
        step = f"{r['seconds'] / ns.steps:.2f} s" if r["seconds"] else "-"
        bpb = f"{r['bits_per_byte']:.4f} [{lo:.4f}, {hi:.4f}]"
        print(f"| {r['model']} | {bpb} | {r['vs_ce_only_pct']:+.2f} % | {r['heldout_bits_per_byte']:.4f} | {step} | "
              f"{r['num_tokens']} |")  # fmt: skip
    print("\nCommands:")
    for r in table:
        if r["command"]:
            print(r["command"])
    print(f"\nwritten to {result_path}")


if __name__ == "__main__":
    main()
