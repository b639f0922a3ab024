"""SST-2: who teaches — two teachers, mutual learning, an EMA teacher, born-again generations — against one teacher
and against the labels alone, in the setting of quality_sst2.py.

Two teachers: the PyPI MiniLM-L6 fine-tuned (configs/minilm_sst2_teacher.yaml, 1 epoch) on two disjoint slices of
SST-2 train, rows 4,000-13,999 (teacher A) and 14,000-23,999 (teacher B), neither of which holds the students' rows
(the first 4,000). Every student has the same shape and start (layers 1, 3, 4, 6 of the *pretrained* MiniLM), sees
the same first 4,000 rows for the same steps (2 epochs = 250 optimizer steps of 32) with the recipe's KD + CE
(0.5 / 0.5, T = 2) where a teacher is involved; only who teaches differs.

    python benchmarks/who_teaches_sst2.py                          # everything (about 45 minutes on 2 CPU cores)
    python benchmarks/who_teaches_sst2.py --out runs/wt_tiny --max-samples 64 --teacher-rows 64 --steps 2  # smoke

Finished runs (a trainer_state.json in their folder) are reused, so an interrupted benchmark picks up where it
stopped. Prints Markdown tables and writes benchmarks/results/who_teaches_sst2.json.
"""

from __future__ import annotations

import argparse
import json
import os

from _runs import run_training, train_seconds

from llm_distill.evaluation.stats import paired_proportions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = "../shared/data/sst2/train.jsonl"
VALIDATION = "../shared/data/sst2/validation.jsonl"
PRETRAINED = "assets/minilm-l6"
RECIPE = "configs/bert_sst2_logit_kd.yaml"


def accuracy(model_dir: str, max_rows: int | None) -> tuple[float, list[bool]]:
    """Validation accuracy and right/wrong per sentence (for the paired test against the labels-only student)."""
    from llm_distill.evaluation.classification import evaluate_classifier

    result = evaluate_classifier(
        model_dir, VALIDATION, text_columns=("sentence",), max_length=64, limit=max_rows, keep_correct=True
    )
    return result["accuracy"], result["correct"]


def write_slices(out: str, rows: int, max_samples: int) -> dict[str, str]:
    """Teacher A's and B's training rows: two disjoint slices of SST-2 train after the students' rows."""
    os.makedirs(f"{out}/data", exist_ok=True)
    lines = open(TRAIN).read().splitlines(keepends=True)
    paths = {}
    for i, name in enumerate("ab"):
        start = max_samples + i * rows
        paths[name] = f"{out}/data/train_{name}.jsonl"
        if not os.path.exists(paths[name]):
            with open(paths[name], "w") as fh:
                fh.writelines(lines[start : start + rows])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/multi_sst2")
    parser.add_argument("--max-samples", type=int, default=4000, help="student training rows (the first N)")
    parser.add_argument("--teacher-rows", type=int, default=10000, help="training rows of each teacher")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: 2 epochs)")
    parser.add_argument("--ema-decay", type=float, default=0.98)
    parser.add_argument("--eval-rows", type=int, default=None, help="validation rows (default: all 872)")
    ns = parser.parse_args()
    os.chdir(ROOT)
    from llm_distill.assets import fetch

    pretrained = fetch("minilm", PRETRAINED)
    out = ns.out
    length = ["--max_steps", str(ns.steps)] if ns.steps else ["--num_train_epochs", "2.0"]
    slices = write_slices(out, ns.teacher_rows, ns.max_samples)
    rows: dict[str, dict] = {}

    def run(key: str, label: str, verb: str, recipe: str, overrides: list[str], dirs: list[str], evaluate: str):
        seconds, command = run_training(verb, recipe, overrides, dirs)
        rows[key] = {"model": label, "dir": evaluate, "seconds": seconds, "command": command}

    teacher_length = ["--max_steps", str(ns.steps)] if ns.steps else []
    if ns.eval_rows:  # the runs' own final evaluation too (a smoke run need not read all 872 sentences)
        length += ["--dataset.max_eval_samples", str(ns.eval_rows)]
        teacher_length += ["--dataset.max_eval_samples", str(ns.eval_rows)]
    for name in "ab":
        folder = f"{out}/teacher_{name}"
        run(
            f"teacher_{name}",
            f"teacher {name.upper()}: MiniLM-L6 fine-tuned on {ns.teacher_rows} other SST-2 rows",
            "finetune",
            "configs/minilm_sst2_teacher.yaml",
            ["--dataset.path", slices[name], "--dataset.max_samples", "null", *teacher_length, "--output_dir", folder],
            [folder],
            folder,
        )
    ta, tb = f"{out}/teacher_a", f"{out}/teacher_b"
    student = ["--student.from_teacher", f"{{num_layers: 4, layer_init: [1, 3, 4, 6], init_from: {pretrained}}}"]
    common = ["--dataset.max_samples", str(ns.max_samples), *length, *student]
    no_teacher = ["--teacher_model_name_or_path", "null"]

    def student_run(key: str, label: str, verb: str, extra: list[str], dirs: list[str] | None = None, at=None):
        folder = f"{out}/{key}"
        run(key, label, verb, RECIPE, [*common, *extra, "--output_dir", folder], dirs or [folder], at or folder)

    # The teacher path of the labels-only run only names the tokenizer; no teacher is loaded.
    student_run("labels_only", "labels only (no teacher)", "finetune", ["--teacher_model_name_or_path", ta])
    student_run("kd_a", "KD from teacher A", "train", ["--teacher_model_name_or_path", ta])
    student_run("kd_b", "KD from teacher B", "train", ["--teacher_model_name_or_path", tb])
    student_run(
        "two_mixture",
        "KD from A and B: mixture of their distributions (0.5 / 0.5)",
        "train",
        [*no_teacher, "--teachers", f"[{ta}, {tb}]", "--multi_teacher", "mixture"],
    )
    student_run(
        "mutual",
        "deep mutual learning, student 1 of 2",
        "train",
        [*no_teacher, "--online_distillation", "mutual"],
    )
    rows["mutual_1"] = {
        **rows["mutual"],
        "model": "deep mutual learning, student 2 of 2",
        "dir": f"{out}/mutual/student_1",
    }
    student_run(
        "ema",
        f"EMA teacher (decay {ns.ema_decay})",
        "train",
        [*no_teacher, "--self_teacher", "ema", "--ema_decay", str(ns.ema_decay)],
    )
    ban = f"{out}/born_again"
    run(
        "born_again_1",
        "born-again generation 1 (taught by the labels-only student)",
        "train",
        RECIPE,
        [*common, "--teacher_model_name_or_path", f"{out}/labels_only", "--generations", "2", "--output_dir", ban],
        [f"{ban}/gen1", f"{ban}/gen2"],
        f"{ban}/gen1",
    )
    rows["born_again_2"] = {**rows["born_again_1"], "model": "born-again generation 2 (taught by generation 1)"}
    for k in (1, 2):
        rows[f"born_again_{k}"].update(dir=f"{ban}/gen{k}", seconds=train_seconds([f"{ban}/gen{k}"]))
    student_run(
        "two_sum",
        "KD from A and B: sum of the two divergences (0.5 / 0.5)",
        "train",
        [*no_teacher, "--teachers", f"[{ta}, {tb}]", "--multi_teacher", "sum"],
    )

    correct = {}
    for key, row in rows.items():
        row["accuracy"], correct[key] = accuracy(row["dir"], ns.eval_rows)
    for key, row in rows.items():
        if key != "labels_only" and not key.startswith("teacher"):
            row["vs_labels_only"] = paired_proportions(correct[key], correct["labels_only"])
    os.makedirs("benchmarks/results", exist_ok=True)
    settings = {
        "max_samples": ns.max_samples,
        "teacher_rows": ns.teacher_rows,
        "steps": ns.steps,
        "ema_decay": ns.ema_decay,
    }
    result_path = "benchmarks/results/who_teaches_sst2.json" if ns.out == "runs/multi_sst2" else f"{out}/result.json"
    with open(result_path, "w") as fh:
        json.dump({**settings, "rows": rows}, fh, indent=2)
    tables = {
        "(a) two teachers": ["teacher_a", "teacher_b", "labels_only", "kd_a", "kd_b", "two_mixture", "two_sum"],
        "(b) mutual learning": ["labels_only", "mutual", "mutual_1"],
        "(c) EMA teacher": ["labels_only", "ema"],
        "(d) born-again generations": ["labels_only", "born_again_1", "born_again_2"],
    }
    steps = ns.steps or "2 epochs of"
    print(f"\nSST-2 validation; students: first {ns.max_samples} rows of SST-2 train, {steps} steps\n")
    print("Paired against the labels-only student on the same sentences: Newcombe's 95 % interval of the difference,")
    print("McNemar's mid-p on the sentences exactly one of the two gets right, the verdict at mid-p < 0.05.")
    for title, keys in tables.items():
        print(f"\n**{title}**\n")
        print("| model | accuracy | vs labels only (95 % CI) | only this / only labels-only right | mid-p | verdict |")
        print("|---|---|---|---|---|---|")
        for key in keys:
            r = rows[key]
            pair = r.get("vs_labels_only")
            if pair is None:
                print(f"| {r['model']} | {100 * r['accuracy']:.2f} % | | | | |")
                continue
            lo, hi = (100 * v for v in pair["difference_ci"])
            print(
                f"| {r['model']} | {100 * r['accuracy']:.2f} % | {100 * pair['difference']:+.2f} pts "
                f"[{lo:+.1f}, {hi:+.1f}] | {pair['b']} / {pair['c']} | {pair['mid_p']:.2g} | {pair['verdict']} |"
            )
    print(f"\nwritten to {result_path}")


if __name__ == "__main__":
    main()
