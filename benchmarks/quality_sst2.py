"""SST-2 validation accuracy: teacher, TinyBERT-style student (both stages), logit-only KD, labels only.

The teacher is the PyPI MiniLM-L6 fine-tuned on all of SST-2 train. Every student has the same shape (4 layers of
width 384) and the same start: layers 1, 3, 4, 6 of the *pretrained* MiniLM, not of the fine-tuned teacher, so that
the no-teacher baseline inherits nothing of the task from the teacher. Each student sees the same training rows for
the same number of optimizer steps; only the training signal differs.

    python benchmarks/quality_sst2.py                      # all rows (about 45 minutes on 2 CPU cores)
    python benchmarks/quality_sst2.py --max-samples 2000   # a smaller student subset

Finished runs (a trainer_state.json in their folder) are reused, so an interrupted benchmark picks up where it
stopped. Prints a Markdown table and writes benchmarks/results/quality_sst2.json.
"""

from __future__ import annotations

import argparse
import json
import os

from _runs import run_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALIDATION = "../shared/data/sst2/validation.jsonl"
PRETRAINED = "assets/minilm-l6"


def accuracy(model_dir: str) -> float:
    from llm_distill.evaluation.classification import evaluate_classifier

    return evaluate_classifier(model_dir, VALIDATION, text_columns=("sentence",), max_length=64)["accuracy"]


def params(model_dir: str) -> int:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(model_dir).num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quality_sst2")
    parser.add_argument(
        "--max-samples",
        type=int,
        default=4000,
        help="student training rows (SST-2 train has 67,349; the teacher sees them all)",
    )
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per stage")
    parser.add_argument("--skip-logit-kd", action="store_true", help="leave out the logit-only KD row")
    ns = parser.parse_args()
    os.chdir(ROOT)
    from llm_distill.assets import fetch

    pretrained = fetch("minilm", PRETRAINED)
    teacher = f"{ns.out}/teacher"
    seconds, cmd = run_training(
        "finetune",
        "configs/minilm_sst2_teacher.yaml",
        ["--dataset.max_samples", "null", "--warmup_steps", "100", "--output_dir", teacher],
        [teacher],
    )
    rows = [
        {
            "model": "teacher: MiniLM-L6 fine-tuned on all of SST-2 train",
            "dir": teacher,
            "seconds": seconds,
            "command": cmd,
        }
    ]
    common = ["--teacher_model_name_or_path", teacher, "--dataset.max_samples", str(ns.max_samples)]
    stage_epochs = ["--num_train_epochs", str(ns.epochs)]
    # The single-stage students get as many steps as both TinyBERT stages together.
    double = ["--num_train_epochs", str(2 * ns.epochs)]
    student = ["--student.from_teacher", f"{{num_layers: 4, layer_init: [1, 3, 4, 6], init_from: {pretrained}}}"]

    tiny = f"{ns.out}/tinybert"
    seconds, cmd = run_training(
        "train",
        "configs/tinybert_sst2.yaml",
        [*common, *stage_epochs, *student, "--output_dir", tiny],
        [f"{tiny}/stage1-intermediate", f"{tiny}/stage2-prediction"],
    )
    rows.append(
        {
            "model": "student: TinyBERT-style (hidden + attention, then logit KD)",
            "dir": f"{ns.out}/tinybert/stage2-prediction",
            "seconds": seconds,
            "command": cmd,
        }
    )
    labels_only = f"{ns.out}/labels_only"
    seconds, cmd = run_training(
        "finetune",
        "configs/bert_sst2_logit_kd.yaml",
        [*common, *double, *student, "--output_dir", labels_only],
        [labels_only],
    )
    rows.append(
        {
            "model": "student: labels only (no teacher)",
            "dir": f"{ns.out}/labels_only",
            "seconds": seconds,
            "command": cmd,
        }
    )
    if not ns.skip_logit_kd:
        seconds, cmd = run_training(
            "train",
            "configs/bert_sst2_logit_kd.yaml",
            [*common, *double, *student, "--output_dir", f"{ns.out}/logit_kd"],
            [f"{ns.out}/logit_kd"],
        )
        rows.append(
            {"model": "student: logit KD + CE", "dir": f"{ns.out}/logit_kd", "seconds": seconds, "command": cmd}
        )

    teacher_acc = None
    for row in rows:
        row["accuracy"] = accuracy(row["dir"])
        row["parameters"] = params(row["dir"])
        teacher_acc = teacher_acc or row["accuracy"]
        row["retained_pct"] = 100.0 * row["accuracy"] / teacher_acc
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/quality_sst2.json", "w") as fh:
        json.dump({"max_samples": ns.max_samples, "epochs_per_stage": ns.epochs, "rows": rows}, fh, indent=2)
    print(f"\nSST-2 validation (872 sentences); student training rows: first {ns.max_samples} of SST-2 train\n")
    print("| model | params | accuracy | % of teacher | training time | command |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        wall = f"{r['seconds'] / 60:.1f} min"
        print(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {100 * r['accuracy']:.2f} % | "
            f"{r['retained_pct']:.1f} % | {wall} | `{r['command']}` |"
        )


if __name__ == "__main__":
    main()
