"""On-policy vs off-policy distillation on GSM8K prompts: SmolLM2-135M-Instruct teaches a student built from a few
of its layers; the same on-policy run with TRL's DistillationTrainer beside ours.

Every arm starts from the same student (``student_from_teacher``: embeddings, final norm and --layers evenly spaced
teacher layers), takes the same --steps optimizer steps of --batch-size prompts (the first steps x batch GSM8K train
questions, each once) and is then evaluated with ``llm-distill eval onpolicy`` on the first --eval-prompts GSM8K
*test* questions (held out):

  a  CE on the dataset's answers                            finetune
  b  CE on the teacher's sampled answers (sequence-level KD) generate, then finetune on completions.jsonl
  c  token-level reverse-KL KD on the teacher's answers     train, lmbda 0, live teacher
  d  on-policy reverse KL                                   train, lmbda 1
  e  mixed                                                  train, lmbda 0.5 (other steps on the teacher's answers)
  trl  TRL DistillationTrainer, beta 1 (reverse KL)         same models, prompts, steps, divergence, sampling

    python benchmarks/onpolicy_gsm8k.py            # the README table (run it under flock /work/bench.lock)
    python benchmarks/onpolicy_gsm8k.py --tiny     # end to end in minutes: 2 layers, 2 steps, 4 eval prompts

Arm d and TRL are then trained again under each of --repeat-seeds (the training seed only), so that their
difference can be read against the spread between seeds. Finished arms and evaluations are reused (an interrupted
run picks up where it stopped). Prints Markdown tables and writes benchmarks/results/onpolicy_gsm8k.json (tiny runs:
onpolicy_gsm8k_tiny.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import time

from _runs import _main, run_timed, run_training
from _trl_onpolicy import run_trl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = "configs/onpolicy_gsm8k.yaml"
TRAIN = "../shared/data/gsm8k/train.jsonl"
TEST = "../shared/data/gsm8k/test.jsonl"

ARMS = {
    "a": ("CE on dataset answers", "finetune", "dataset", ["--lmbda", "0"]),
    "b": ("CE on teacher answers (sequence-level KD)", "finetune", "teacher", ["--lmbda", "0"]),
    "c": ("token KD on teacher answers (lmbda 0)", "train", "teacher", ["--lmbda", "0"]),
    "d": ("on-policy (lmbda 1)", "train", "dataset", ["--lmbda", "1"]),
    "e": ("mixed (lmbda 0.5, off-policy steps on teacher answers)", "train", "teacher", ["--lmbda", "0.5"]),
}
ON_POLICY, OFF_POLICY = ("d", "e"), ("a", "b", "c")


def evaluate(teacher: str, student: str, ns) -> tuple[dict, str]:
    """``eval onpolicy`` of one student (reused when its JSON exists); returns (result, command)."""
    output = os.path.join(student, "onpolicy.json")
    argv = ["eval", "onpolicy", "--teacher", teacher, "--student", student, "--prompts", TEST]
    argv += ["--limit", str(ns.eval_prompts), "--max-new-tokens", str(ns.max_new_tokens), "--temperature", "1.0"]
    argv += ["--seed", "0", "--batch-size", "16", "--device", "cpu", "--output", output]
    if not os.path.exists(output):
        start = time.perf_counter()
        _main(argv)
        with open(output) as fh:
            result = json.load(fh)
        result["eval_seconds"] = time.perf_counter() - start
        with open(output, "w") as fh:
            json.dump(result, fh, indent=2)
    with open(output) as fh:
        return json.load(fh), "llm-distill " + shlex.join(argv)


def save_start(teacher_dir: str, out: str, layers: int) -> str:
    """The untrained student every arm starts from, saved once (a reference row of the table)."""
    path = os.path.join(out, "start")
    if not os.path.exists(os.path.join(path, "config.json")):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llm_distill.student import student_from_teacher

        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype="float32")
        student_from_teacher(teacher, num_layers=layers).save_pretrained(path)
        AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(path)
    return path


def mean_log(run_dir: str, key: str) -> float | None:
    with open(os.path.join(run_dir, "trainer_state.json")) as fh:
        values = [e[key] for e in json.load(fh)["log_history"] if key in e]
    return statistics.mean(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/onpolicy_gsm8k")
    parser.add_argument("--teacher", default="assets/smollm2-135m", help="SmolLM2-135M-Instruct folder")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-trl", action="store_true", help="leave out the TRL arm")
    parser.add_argument(
        "--repeat-seeds", type=int, nargs="*", default=[43, 44],
        help="more training seeds for arm d and TRL alone (their spread is the noise of the comparison)",
    )  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="2 layers, 2 steps of 2, 4 new tokens, 4 eval prompts")
    ns = parser.parse_args()
    if ns.tiny:
        ns.out, ns.layers, ns.steps, ns.batch_size, ns.max_new_tokens, ns.eval_prompts = (
            ns.out + "_tiny", 2, 2, 2, 4, 4,
        )  # fmt: skip
    os.chdir(ROOT)
    teacher = ns.teacher
    if not os.path.exists(os.path.join(teacher, "config.json")):
        raise SystemExit(f"no teacher at {teacher}: run `llm-distill fetch-teacher smollm2 --output {teacher}` first")
    rows = ns.steps * ns.batch_size
    common = [
        "--teacher_model_name_or_path", teacher,
        "--student.from_teacher", f"{{num_layers: {ns.layers}}}",
        "--dataset.path", TRAIN,
        "--dataset.max_samples", str(rows),
        "--max_steps", str(ns.steps),
        "--per_device_train_batch_size", str(ns.batch_size),
        "--max_new_tokens", str(ns.max_new_tokens),
        "--learning_rate", str(ns.learning_rate),
        "--save_strategy", "no",
        "--logging_steps", "1",
    ]  # fmt: skip
    seeded = [*common, "--seed", str(ns.seed)]
    completions_dir = f"{ns.out}/teacher-completions"
    generate = [*seeded, "--generate.output_dir", completions_dir, "--generate.batch_size", "16"]
    gen_s, gen_cmd = run_timed("generate", RECIPE, generate, completions_dir)
    data = {"dataset": [], "teacher": ["--dataset.path", f"{completions_dir}/completions.jsonl"]}

    table = []
    start_dir = save_start(teacher, ns.out, ns.layers)
    result, eval_cmd = evaluate(teacher, start_dir, ns)
    table.append({"arm": "start", "name": "student before training", "dir": start_dir, "eval": result,
                  "eval_command": eval_cmd})  # fmt: skip
    for arm, (_, _, source, _) in ARMS.items():
        row = ours_row(teacher, arm, f"{ns.out}/{arm}", [*seeded, *data[source]], ns, ns.seed)
        if source == "teacher":
            row["command"] = f"{gen_cmd} && {row['command']}"
        table.append(row)
    if not ns.skip_trl:
        table.append(trl_row(teacher, f"{ns.out}/trl", ns, ns.seed))
    repeats = [] if ns.skip_trl else repeat_seeds(teacher, common, ns)

    by_arm = {r["arm"]: r for r in table}
    rkl = {arm: r["eval"]["sample_reverse_kl"] for arm, r in by_arm.items()}
    summary = {
        "on_policy_below_every_off_policy_arm": all(rkl[on] < min(rkl[off] for off in OFF_POLICY) for on in ON_POLICY),
        "generate_seconds": gen_s,
    }
    if "trl" in by_arm:
        summary["trl_seconds_per_step_over_ours"] = by_arm["trl"]["seconds_per_step"] / by_arm["d"]["seconds_per_step"]
        summary["trl_reverse_kl_over_ours"] = rkl["trl"] / rkl["d"]
        summary.update(seed_summary([(by_arm["d"], by_arm["trl"]), *repeats]))
    settings = {k: getattr(ns, k) for k in ("layers", "steps", "batch_size", "max_new_tokens", "learning_rate",
                                             "eval_prompts", "seed")}  # fmt: skip
    os.makedirs("benchmarks/results", exist_ok=True)
    name = "onpolicy_gsm8k_tiny.json" if ns.tiny else "onpolicy_gsm8k.json"
    with open(f"benchmarks/results/{name}", "w") as fh:
        json.dump({"settings": settings, "summary": summary, "rows": table, "repeats": repeats}, fh, indent=2)
    print_table(table, summary, ns)
    print_repeats([(by_arm["d"], by_arm.get("trl")), *repeats], ns)


def trl_row(teacher: str, trl_dir: str, ns, seed: int) -> dict:
    """The on-policy arm trained by TRL's DistillationTrainer, evaluated like ours."""
    with open(TRAIN) as fh:
        questions = [json.loads(line)["question"] for _, line in zip(range(ns.steps * ns.batch_size), fh)]
    trl = run_trl(teacher_dir=teacher, out=trl_dir, questions=questions, layers=ns.layers, steps=ns.steps,
                  batch_size=ns.batch_size, max_new_tokens=ns.max_new_tokens, learning_rate=ns.learning_rate,
                  seed=seed)  # fmt: skip
    result, eval_cmd = evaluate(teacher, trl_dir, ns)
    return {
        "arm": "trl", "name": "TRL DistillationTrainer (on-policy, beta 1)", "dir": trl_dir, "seed": seed,
        "train_seconds": trl["train_seconds"], "seconds_per_step": trl["train_seconds"] / ns.steps,
        "command": "python benchmarks/onpolicy_gsm8k.py (benchmarks/_trl_onpolicy.py)",
        "eval": result, "eval_command": eval_cmd,
    }  # fmt: skip


def ours_row(teacher: str, arm: str, run_dir: str, overrides: list[str], ns, seed: int) -> dict:
    """One of our arms trained (``overrides``: the shared flags, the seed and the arm's data) and evaluated."""
    name, verb, _, extra = ARMS[arm]
    seconds, command = run_training(verb, RECIPE, [*overrides, *extra, "--output_dir", run_dir], [run_dir])
    result, eval_cmd = evaluate(teacher, run_dir, ns)
    return {
        "arm": arm, "name": name, "dir": run_dir, "seed": seed, "train_seconds": seconds,
        "seconds_per_step": seconds / ns.steps,
        "generation_time_share": mean_log(run_dir, "generation_time_share"),
        "command": command, "eval": result, "eval_command": eval_cmd,
    }  # fmt: skip


def repeat_seeds(teacher: str, common: list[str], ns) -> list[tuple[dict, dict]]:
    """Arm d and TRL again under each of --repeat-seeds (training seed only; the evaluation is unchanged)."""
    return [
        (
            ours_row(teacher, "d", f"{ns.out}/seed{seed}/d", [*common, "--seed", str(seed)], ns, seed),
            trl_row(teacher, f"{ns.out}/seed{seed}/trl", ns, seed),
        )
        for seed in ns.repeat_seeds
    ]


def seed_summary(pairs: list[tuple[dict, dict]]) -> dict:
    """Means over training seeds of ours (arm d) and TRL, and the per-seed spread of the reverse KL."""
    ours = [p[0]["eval"]["sample_reverse_kl"] for p in pairs]
    theirs = [p[1]["eval"]["sample_reverse_kl"] for p in pairs]
    step_ratio = [p[1]["seconds_per_step"] / p[0]["seconds_per_step"] for p in pairs]
    return {
        "seeds": len(pairs),
        "ours_reverse_kl_mean": statistics.mean(ours),
        "trl_reverse_kl_mean": statistics.mean(theirs),
        "ours_reverse_kl_range": [min(ours), max(ours)],
        "trl_reverse_kl_range": [min(theirs), max(theirs)],
        "trl_reverse_kl_over_ours_mean": statistics.mean(theirs) / statistics.mean(ours),
        "trl_seconds_per_step_over_ours_mean": statistics.mean(step_ratio),
    }


def print_table(table: list[dict], summary: dict, ns) -> None:
    print(
        f"\nGSM8K: {ns.steps} steps x {ns.batch_size} train prompts, completions up to {ns.max_new_tokens} tokens; "
        f"`eval onpolicy` on the first {ns.eval_prompts} test questions (sampled at T = 1, seed 0)\n"
    )
    print("| arm | s/step | generation share | held-out reverse KL / token | teacher NLL of greedy / token "
          "| sampled length | greedy length | exact match |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        e = r["eval"]
        step = f"{r['seconds_per_step']:.1f}" if r.get("seconds_per_step") else "-"
        share = f"{r['generation_time_share']:.0%}" if r.get("generation_time_share") is not None else "-"
        match = "-" if e.get("exact_match") is None else f"{e['exact_match']:.1%} ({e['exact_match_count']})"
        print(
            f"| {r['arm']}: {r['name']} | {step} | {share} | {e['sample_reverse_kl']:.4f} "
            f"| {e['greedy_teacher_nll']:.4f} | {e['sample_length']['mean']:.1f} | {e['greedy_length']['mean']:.1f} "
            f"| {match} |"
        )
    print(f"\n{json.dumps(summary)}")


def print_repeats(pairs: list[tuple[dict, dict | None]], ns) -> None:
    if len(pairs) < 2 or pairs[0][1] is None:
        return
    print("\nOn-policy, ours (arm d) vs TRL, by training seed (the same evaluation):\n")
    print("| seed | ours s/step | TRL s/step | TRL / ours | ours reverse KL | TRL reverse KL | TRL / ours "
          "| ours greedy NLL | TRL greedy NLL |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for ours, trl in pairs:
        a, b = ours["eval"]["sample_reverse_kl"], trl["eval"]["sample_reverse_kl"]
        ours_s, trl_s = ours["seconds_per_step"], trl["seconds_per_step"]
        print(
            f"| {ours['seed']} | {ours_s:.2f} | {trl_s:.2f} | {trl_s / ours_s:.2f} | {a:.4f} | {b:.4f} "
            f"| {b / a:.3f} | {ours['eval']['greedy_teacher_nll']:.4f} | {trl['eval']['greedy_teacher_nll']:.4f} |"
        )


if __name__ == "__main__":
    main()
