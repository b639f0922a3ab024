"""SST-2 validation accuracy of students distilled with relation knowledge (MiniLMv2 self-attention relations) against
the TinyBERT-style student (hidden states + attention maps, also on pre-softmax scores), logit KD with and without RKD
and the same student trained on labels alone, at the teacher's width (384) and at a narrower width (312) that the
hidden-state term reaches only through projections.

Setting: that of ``quality_sst2.py`` (4-layer students, the first --max-samples SST-2 training sentences, 1 epoch per
stage, the single-stage labels-only student as many steps as both stages together), with a teacher fine-tuned on the
first --teacher-rows sentences (every row of the table uses this one teacher). 384-wide students start from layers
1, 3, 4, 6 of the pretrained MiniLM; 312-wide students (TinyBERT-4's width) cannot take its matrices and start from the
same seeded random init.

    python benchmarks/quality_relations_sst2.py                                  # about 35 minutes on 2 CPU cores
    python benchmarks/quality_relations_sst2.py --max-samples 64 --teacher-rows 64 --eval-rows 32 --out runs/rel_tiny

Finished runs are reused. Prints a Markdown table and writes benchmarks/results/quality_relations_sst2.json.
"""

from __future__ import annotations

import argparse
import json
import os

from _runs import run_training

from llm_distill.evaluation.stats import paired_proportions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALIDATION = "../shared/data/sst2/validation.jsonl"
PRETRAINED = "assets/minilm-l6"


def accuracy(model_dir: str, rows: int | None) -> tuple[float, list[bool]]:
    """Validation accuracy and right/wrong per sentence (for the paired test against the labels-only student)."""
    from llm_distill.evaluation.classification import evaluate_classifier

    result = evaluate_classifier(
        model_dir, VALIDATION, text_columns=("sentence",), max_length=64, limit=rows, keep_correct=True
    )
    return result["accuracy"], result["correct"]


def params(model_dir: str) -> int:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(model_dir).num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quality_relations_sst2")
    parser.add_argument("--max-samples", type=int, default=4000, help="student training rows")
    parser.add_argument("--teacher-rows", type=int, default=16000, help="teacher fine-tuning rows")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per stage")
    parser.add_argument("--eval-rows", type=int, default=None, help="validation rows (default: all 872)")
    ns = parser.parse_args()
    os.chdir(ROOT)
    from llm_distill.assets import fetch

    pretrained = fetch("minilm", PRETRAINED)
    teacher = f"{ns.out}/teacher"
    seconds, cmd = run_training(
        "finetune",
        "configs/minilm_sst2_teacher.yaml",
        ["--dataset.max_samples", str(ns.teacher_rows), "--warmup_steps", "100", "--output_dir", teacher],
        [teacher],
    )
    rows = [
        {
            "model": f"teacher: MiniLM-L6 fine-tuned on {ns.teacher_rows} SST-2 sentences",
            "width": 384,
            "dir": teacher,
            "seconds": seconds,
            "command": cmd,
        }
    ]
    # No evaluation inside the runs: accuracy is measured below, once per final model.
    common = [
        "--teacher_model_name_or_path", teacher,
        "--dataset.max_samples", str(ns.max_samples),
        "--dataset.eval_path", "null",
    ]  # fmt: skip
    stage = ["--num_train_epochs", str(ns.epochs)]
    double = ["--num_train_epochs", str(2 * ns.epochs)]
    shapes = {
        384: f"{{num_layers: 4, layer_init: [1, 3, 4, 6], init_from: {pretrained}}}",
        312: f"{{num_layers: 4, hidden_size: 312, intermediate_size: 1200, init_from: {pretrained}}}",
    }
    for width, shape in shapes.items():
        student = ["--student.from_teacher", shape]
        runs = [
            ("labels only (no teacher)", "finetune", "configs/bert_sst2_logit_kd.yaml", double, "labels_only", []),
            (
                "TinyBERT-style: hidden + attention maps, then logit KD",
                "train",
                "configs/tinybert_sst2.yaml",
                stage,
                "tinybert",
                ["stage1-intermediate", "stage2-prediction"],
            ),
            (
                "MiniLMv2 relations (Q-Q, K-K, V-V, last layer), then logit KD",
                "train",
                "configs/minilmv2_sst2.yaml",
                stage,
                "minilmv2",
                ["stage1-relations", "stage2-prediction"],
            ),
        ]
        if width == 384:
            runs += [
                ("logit KD (T = 2) + CE", "train", "configs/bert_sst2_logit_kd.yaml", double, "logit_kd", []),
                ("logit KD (T = 2) + CE + RKD (distance 1, angle 2)", "train", "configs/bert_sst2_rkd.yaml", double,
                 "logit_kd_rkd", []),
            ]  # fmt: skip
            runs.insert(
                2,
                (
                    "TinyBERT-style on pre-softmax scores (attention_on: scores)",
                    "train",
                    "configs/tinybert_sst2.yaml",
                    stage + ["--attention_on", "scores"],
                    "tinybert_scores",
                    ["stage1-intermediate", "stage2-prediction"],
                ),
            )
        for label, verb, recipe, epochs, name, stages in runs:
            out = f"{ns.out}/w{width}/{name}"
            dirs = [f"{out}/{s}" for s in stages] or [out]
            seconds, cmd = run_training(verb, recipe, [*common, *epochs, *student, "--output_dir", out], dirs)
            rows.append(
                {"model": f"student: {label}", "width": width, "dir": dirs[-1], "seconds": seconds, "command": cmd,
                 "labels_only": name == "labels_only"}
            )  # fmt: skip

    teacher_acc = None
    labels_only_correct = {}
    for row in rows:
        row["accuracy"], correct = accuracy(row["dir"], ns.eval_rows)
        row["parameters"] = params(row["dir"])
        teacher_acc = teacher_acc or row["accuracy"]
        row["retained_pct"] = 100.0 * row["accuracy"] / teacher_acc
        if row.pop("labels_only", False):
            labels_only_correct[row["width"]] = correct
        elif row["width"] in labels_only_correct:  # the labels-only run is the first of each width
            row["vs_labels_only"] = paired_proportions(correct, labels_only_correct[row["width"]])
    os.makedirs("benchmarks/results", exist_ok=True)
    settings = {k: getattr(ns, k) for k in ("max_samples", "teacher_rows", "epochs", "eval_rows")}
    with open("benchmarks/results/quality_relations_sst2.json", "w") as fh:
        json.dump({"settings": settings, "rows": rows}, fh, indent=2)
    print(
        f"\nSST-2 validation ({ns.eval_rows or 872} sentences); students: first {ns.max_samples} training sentences\n"
    )
    print("Paired against the labels-only student of the same width on the same sentences: Newcombe's 95 % interval")
    print("of the difference, McNemar's mid-p on the sentences exactly one of the two gets right, verdict at 0.05.\n")
    print("| model | width | params | accuracy | % of teacher | vs labels only (95 % CI) | mid-p | verdict | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pair = r.get("vs_labels_only")
        paired = " | "
        if pair:
            lo, hi = (100 * v for v in pair["difference_ci"])
            paired = (
                f"{100 * pair['difference']:+.2f} pts [{lo:+.1f}, {hi:+.1f}] | {pair['mid_p']:.2g} | {pair['verdict']}"
            )
        print(
            f"| {r['model']} | {r['width']} | {r['parameters'] / 1e6:.1f} M | {100 * r['accuracy']:.2f} % | "
            f"{r['retained_pct']:.1f} % | {paired} | {r['seconds'] / 60:.1f} min |"
        )
    print("\nCommands:\n")
    for r in rows:
        print(r["command"])


if __name__ == "__main__":
    main()
