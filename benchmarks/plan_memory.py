"""Plan vs measured: peak memory and step time of real training steps of several recipes on this machine.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/plan_memory.py [--only NAME ...] [--steps 4]

For every configuration (tiny and real models; materialised and fused loss; live and cached teacher; with and
without feature terms, LoRA and activation checkpointing) the plan is made in this process (`llm_distill.plan`,
device `cpu`: configs and a length sample only), then `plan_worker.py` runs real steps of the same recipe with the
real `DistillationTrainer` in a fresh process and measures the peak resident memory above the process's baseline
just before any model is built (see `plan_worker.py` for how). Both sides count the same things: every tensor of
the step (weights, gradients, optimizer state, activations, loss buffers) plus the process's runtime overhead,
which the plan takes as the constant `devices.CPU_RUNTIME_BYTES`; the `overhead` configuration (a model whose
tensors weigh a few MB) is what measures that constant, and it is not part of the validation rows.

Writes `benchmarks/results/plan_memory.json` and prints the table that the README's "Will it fit?" section shows.
Cost here: about 20 minutes on 2 cores (stores built once, reused).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llm_distill.plan import cpu_device, make_plan, run_spec, to_dict  # noqa: E402
from llm_distill.plan.devices import CPU_RUNTIME_BYTES, calibrate  # noqa: E402
from llm_distill.recipes import load_recipe  # noqa: E402

WORK = "runs/plan_bench"
SMOL = "assets/smollm2-135m"
MINILM = "assets/minilm-l6"
TINY_LLAMA = f"{WORK}/assets/tiny-llama"
TINY_BERT = f"{WORK}/assets/tiny-bert"
MICRO_LLAMA = f"{WORK}/assets/micro-llama"
SHAKESPEARE = "../shared/data/tinyshakespeare/input.txt"
SST2 = "../shared/data/sst2/train.jsonl"

RUN = ["--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1000"]
TEXT = ["--dataset.eval_size", "0"]
SMOL_DATA = [*TEXT, "--dataset.max_samples", "2000"]
SMOL_CACHED = [*TEXT, "--dataset.max_samples", "600", "--dataset.max_length", "128"]
TINY_DATA = [*TEXT, "--dataset.max_samples", "3000", "--dataset.max_length", "256", "--per_device_train_batch_size",
             "8", "--gradient_accumulation_steps", "1"]  # fmt: skip
# max_length 32: nearly every batch of 32 SST-2 sentences holds one of 32+ tokens, so the measured batches are as long
# as the longest row the plan plans for (the lengths are recorded in the measurement).
SST2_DATA = ["--dataset.max_samples", "512", "--dataset.max_length", "32", "--dataset.eval_path", "null", "--stages",
             "[]"]  # fmt: skip
TINY_STORE = f"{WORK}/store-tiny"
SMOL_STORE = f"{WORK}/store-smollm"
LORA = ["--student.peft", "{r: 16, alpha: 32, target_modules: [q_proj, v_proj]}"]
STAGE1 = ["--kd_weight", "0", "--hidden_weight", "1", "--attention_weight", "1"]

# name -> (recipe, overrides); `overhead` calibrates the runtime constant and is not a validation row.
CASES = {
    "overhead": ("configs/causal_lm_kd.yaml", ["--teacher_model_name_or_path", MICRO_LLAMA, "--student.from_teacher",
                 "{num_layers: 1}", *TEXT, "--dataset.max_samples", "200", "--dataset.max_length", "16",
                 "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1"]),
    "tiny llama, dense KD": ("configs/causal_lm_kd.yaml", ["--teacher_model_name_or_path", TINY_LLAMA,
                             "--student.from_teacher", "{num_layers: 2}", *TINY_DATA]),
    "tiny llama, fused KD": ("configs/causal_lm_kd.yaml", ["--teacher_model_name_or_path", TINY_LLAMA,
                             "--student.from_teacher", "{num_layers: 2}", *TINY_DATA, "--loss_chunk_size", "256"]),
    "tiny llama, cached top-16, fused": ("configs/causal_lm_cached.yaml", ["--teacher_model_name_or_path", TINY_LLAMA,
                                         "--student.from_teacher", "{num_layers: 2}", *TINY_DATA,
                                         "--teacher_logits_path", TINY_STORE, "--loss_chunk_size", "256"]),
    "tiny bert, logit KD + hidden + attention": ("configs/bert_sst2_logit_kd.yaml", ["--teacher_model_name_or_path",
                                                 TINY_BERT, *SST2_DATA, *STAGE1[2:], "--per_device_train_batch_size",
                                                 "32"]),
    "SmolLM2 6L, dense KD (causal_lm_kd.yaml)": ("configs/causal_lm_kd.yaml", SMOL_DATA),
    "SmolLM2 6L, fused KD": ("configs/causal_lm_kd.yaml", [*SMOL_DATA, "--loss_chunk_size", "128"]),
    "SmolLM2 6L, cached top-64, dense": ("configs/causal_lm_cached.yaml", [*SMOL_CACHED, "--teacher_logits_path",
                                         SMOL_STORE]),
    "SmolLM2 6L, cached top-64, fused": ("configs/causal_lm_cached.yaml", [*SMOL_CACHED, "--teacher_logits_path",
                                         SMOL_STORE, "--loss_chunk_size", "128"]),
    "SmolLM2 6L, LoRA r=16, fused": ("configs/causal_lm_kd.yaml", [*SMOL_DATA, *LORA, "--loss_chunk_size", "128"]),
    "SmolLM2 6L, dense KD + hidden states": ("configs/causal_lm_kd.yaml", [*SMOL_DATA, "--hidden_weight", "1.0"]),
    "SmolLM2 6L, fused, checkpointing, batch 8": ("configs/causal_lm_kd.yaml", [*SMOL_DATA, "--loss_chunk_size",
                                                  "128", "--activation_checkpointing", "true",
                                                  "--per_device_train_batch_size", "8"]),
    "MiniLM 4L, TinyBERT stage 1 (tinybert_sst2.yaml)": ("configs/tinybert_sst2.yaml", ["--teacher_model_name_or_path",
                                                         MINILM, *SST2_DATA, *STAGE1]),
    "MiniLM 2L, logit KD (bert_sst2_logit_kd.yaml)": ("configs/bert_sst2_logit_kd.yaml", [
                                                      "--teacher_model_name_or_path", MINILM, *SST2_DATA]),
}  # fmt: skip


def without(argv: list[str], flag: str) -> list[str]:
    """``argv`` minus ``flag`` and its value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        else:
            out.append(arg)
    return out


def make_assets() -> None:
    """Tiny teachers (random weights, real tokenizers and vocabularies) and the logit stores, built once."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    smol_tok = AutoTokenizer.from_pretrained(SMOL)
    for path, hidden, layers in ((TINY_LLAMA, 128, 4), (MICRO_LLAMA, 8, 1)):
        if not os.path.exists(path):
            heads = 4 if hidden >= 64 else 1
            cfg = LlamaConfig(vocab_size=len(smol_tok), hidden_size=hidden, intermediate_size=2 * hidden,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=max(1, heads // 2), max_position_embeddings=512,
                              tie_word_embeddings=True)  # fmt: skip
            LlamaForCausalLM(cfg).save_pretrained(path)
            smol_tok.save_pretrained(path)
    if not os.path.exists(TINY_BERT):
        bert_tok = AutoTokenizer.from_pretrained(MINILM)
        cfg = BertConfig(vocab_size=len(bert_tok), hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_labels=2)  # fmt: skip
        BertForSequenceClassification(cfg).save_pretrained(TINY_BERT)
        bert_tok.save_pretrained(TINY_BERT)
    stores = (
        (TINY_STORE, "tiny llama, cached top-16, fused", ["--cache.k", "16"]),
        (SMOL_STORE, "SmolLM2 6L, cached top-64, dense", []),
    )
    for store, case, extra in stores:
        if not os.path.exists(os.path.join(store, "manifest.json")):
            recipe, overrides = CASES[case]
            overrides = without(overrides, "--loss_chunk_size")
            cmd = [sys.executable, "-m", "llm_distill.cli", "cache-logits", recipe, *overrides, *extra,
                   "--cache.output_dir", store, "--teacher_logits_path", store]  # fmt: skip
            subprocess.run(cmd, check=True, cwd=ROOT)


def plan_of(name: str, calibrated: bool) -> dict:
    recipe, overrides = CASES[name]
    spec = run_spec(load_recipe(recipe, [*overrides, *RUN, "--output_dir", f"{WORK}/{name}"]))
    device = cpu_device(calibrate(spec) if calibrated else None)
    return to_dict(make_plan(spec, device, advise=False))


def measure(name: str, steps: int, reuse: bool) -> dict:
    recipe, overrides = CASES[name]
    out = os.path.join(WORK, "measured", name.replace(" ", "_").replace("/", "-") + ".json")
    if reuse and os.path.exists(out):
        with open(out) as fh:
            return json.load(fh)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072",
           "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "2"}  # fmt: skip
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "plan_worker.py"), recipe, "--out", out, *overrides,
           *RUN, "--max_steps", str(steps), "--output_dir", f"{WORK}/{name}"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    with open(out) as fh:
        return json.load(fh)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--reuse-measured",
        action="store_true",
        help="plan again but keep the measurements already in runs/plan_bench/measured (e.g. after a plan change)",
    )
    ns = parser.parse_args(argv)
    os.chdir(ROOT)
    make_assets()
    names = ns.only or list(CASES)
    rows = []
    for name in names:
        start = time.time()
        plan = plan_of(name, calibrated=name != "overhead")
        measured = measure(name, ns.steps, ns.reuse_measured)
        steady = measured["step_seconds"][1:] or measured["step_seconds"]
        row = {
            "name": name,
            "command": " ".join(["llm-distill", "plan", CASES[name][0], *CASES[name][1]]),
            "plan": plan,
            "measured": measured,
            "plan_peak_mb": plan["peak"] / 2**20,
            "measured_peak_mb": measured["measured_mb"],
            "ratio": plan["peak"] / 2**20 / measured["measured_mb"],
            "plan_step_s": plan["step_seconds"],
            "measured_step_s": statistics.median(steady),
            "seconds": time.time() - start,
        }
        rows.append(row)
        print(f"{name}: plan {row['plan_peak_mb']:.0f} MiB, measured {row['measured_peak_mb']:.0f} MiB, "
              f"ratio {row['ratio']:.3f}", flush=True)  # fmt: skip
    overhead = next((r for r in rows if r["name"] == "overhead"), None)
    if overhead:
        tensors = overhead["plan"]["peak"] - CPU_RUNTIME_BYTES
        overhead["runtime_overhead_mb"] = overhead["measured_peak_mb"] - tensors / 2**20
        print(f"runtime overhead: measured {overhead['runtime_overhead_mb']:.0f} MiB beyond the planned tensors "
              f"({tensors / 2**20:.1f} MiB); the plan uses {CPU_RUNTIME_BYTES / 2**20:.0f} MiB")  # fmt: skip
    print("\n| configuration | plan peak MiB | measured peak MiB | plan / measured | plan step s | measured step s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["name"] == "overhead":
            continue
        print(f"| {r['name']} | {mib(r['plan']['peak'])} ({r['plan']['peak_phase']}) | "
              f"{r['measured_peak_mb']:,.0f} | {r['ratio']:.2f} | {r['plan_step_s']:.2f} | "
              f"{r['measured_step_s']:.2f} |")  # fmt: skip
    os.makedirs("benchmarks/results", exist_ok=True)
    path = "benchmarks/results/plan_memory.json"
    previous = json.load(open(path)) if os.path.exists(path) and ns.only else {"rows": []}
    kept = [r for r in previous["rows"] if r["name"] not in names]
    with open(path, "w") as fh:
        summary = {"rows": kept + rows, "steps": ns.steps, "reused_measurements": ns.reuse_measured}
        json.dump(summary, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
