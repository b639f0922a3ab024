"""Whole training step: naive vs fused vocabulary loss, live and cached (top-k) teacher, against a plain CE step.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/step_speed.py            # V = 32k and 128k, ~10 min on 2 cores
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/step_speed.py --quick    # V = 32k only, fewer steps

Student: a 6-layer Llama built from a config (hidden 512, 8 heads), batch 4 x 256 tokens, AdamW. Teacher: the same
shape with different weights, frozen, forward under no_grad in every live step. One step = zero_grad, (teacher
forward), student forward, loss, backward, optimizer step. Steps of the variants are interleaved (round robin) and
the median is reported, because the machine is shared. Peak extra memory: peak RSS (VmHWM, reset before the step)
minus the RSS before it.

Variants:
- ``ce_plain``          the model's own CE (``model(input_ids, labels=...)``: materialised logits)
- ``ce_fused``          ``fused_distillation_loss`` with labels only
- ``kd_naive``          teacher logits + student logits + ``divergence`` + ``hard_ce``
- ``kd_fused``          teacher final hidden + lm_head into ``fused_distillation_loss`` (+ CE)
- ``cached_naive``      top-k (k=64) teacher targets read from memory, ``sparse_divergence`` on student logits + CE
- ``cached_fused``      the same targets through ``fused_distillation_loss`` (+ CE)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm_distill.losses import SparseTargets, divergence, fused_distillation_loss, hard_ce, sparse_divergence

VARIANTS = ("ce_plain", "ce_fused", "kd_naive", "kd_fused", "cached_naive", "cached_fused")


def build(vocab: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                      tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(cfg)


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def make_step(variant: str, student, teacher, batch: dict, topk: SparseTargets, opt, temperature: float):
    ids, labels = batch["input_ids"], batch["labels"]
    shifted = labels[:, 1:].reshape(-1)  # position t predicts token t+1
    kw = dict(temperature=temperature, kind="forward_kl")

    def student_hidden():
        h = student.model(input_ids=ids).last_hidden_state[:, :-1]
        return h.reshape(-1, h.shape[-1])

    def step():
        opt.zero_grad(set_to_none=True)
        if variant == "ce_plain":
            loss = student(input_ids=ids, labels=labels).loss
        elif variant == "ce_fused":
            _, ce = fused_distillation_loss(student_hidden(), student.lm_head.weight, labels=shifted)
            loss = ce / (shifted != -100).sum()
        elif variant in ("kd_naive", "kd_fused"):
            with torch.no_grad():
                t_hidden = teacher.model(input_ids=ids).last_hidden_state[:, :-1]
                t_hidden = t_hidden.reshape(-1, t_hidden.shape[-1])
            h = student_hidden()
            if variant == "kd_naive":
                logits = student.lm_head(h)
                with torch.no_grad():
                    t_logits = teacher.lm_head(t_hidden)
                kd = divergence(logits, t_logits, mask=shifted != -100, reduction="sum", **kw)
                ce = hard_ce(logits, shifted, reduction="sum")
            else:
                kd, ce = fused_distillation_loss(h, student.lm_head.weight, teacher_hidden=t_hidden,
                                                 teacher_weight=teacher.lm_head.weight, labels=shifted,
                                                 kd_weight=0.5, ce_weight=0.5, **kw)  # fmt: skip
            loss = (0.5 * kd + 0.5 * ce) / (shifted != -100).sum()
        else:
            h = student_hidden()
            if variant == "cached_naive":
                logits = student.lm_head(h)
                kd = sparse_divergence(logits, topk, mask=shifted != -100, reduction="sum", **kw)
                ce = hard_ce(logits, shifted, reduction="sum")
            else:
                kd, ce = fused_distillation_loss(h, student.lm_head.weight, sparse_targets=topk, labels=shifted,
                                                 kd_weight=0.5, ce_weight=0.5, **kw)  # fmt: skip
            loss = (0.5 * kd + 0.5 * ce) / (shifted != -100).sum()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def run(vocab: int, steps: int, k: int, temperature: float) -> dict:
    student, teacher = build(vocab, 0), build(vocab, 1)
    teacher.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (4, 256), generator=g)
    labels = ids.clone()
    labels[:, :16] = -100  # a prompt that does not count
    batch = dict(input_ids=ids, labels=labels)
    with torch.no_grad():  # the "cache": top-k of the teacher's tempered distribution, computed once
        lp = torch.log_softmax(teacher(input_ids=ids).logits[:, :-1].float() / temperature, dim=-1)
        values, top_ids = lp.reshape(-1, vocab).topk(k, dim=-1)
        del lp
        tail = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-6))
        topk = SparseTargets(top_ids, values, tail_logprobs=tail)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    fns = {v: make_step(v, student, teacher, batch, topk, opt, temperature) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    peaks: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for v in VARIANTS:  # warm-up: AdamW state, allocator
        fns[v]()
    for r in range(steps):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for v in order:
            reset_peak()
            before = rss_kb("VmRSS")
            start = time.perf_counter()
            fns[v]()
            times[v].append(time.perf_counter() - start)
            peaks[v].append((rss_kb("VmHWM") - before) / 1024)
    out = {v: dict(step_s=statistics.median(times[v]), peak_extra_mb=statistics.median(peaks[v])) for v in VARIANTS}
    print(f"\nV={vocab}: 6-layer Llama student H=512, batch 4x256, fp32, {steps} timed steps per variant, top-k={k}")
    print(f"  {'variant':14s} {'step s':>7s} {'x ce_plain':>10s} {'peak MB':>8s}")
    base = out["ce_plain"]["step_s"]
    for v, s in out.items():
        print(f"  {v:14s} {s['step_s']:7.2f} {s['step_s'] / base:10.2f} {s['peak_extra_mb']:8.0f}")
    kd_ratio = out["kd_fused"]["step_s"] / out["kd_naive"]["step_s"]
    cached_ratio = out["cached_fused"]["step_s"] / base
    print(f"  kd_fused / kd_naive = {kd_ratio:.2f}; cached_fused / ce_plain = {cached_ratio:.2f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="V = 32k only, 2 timed steps per variant")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 3, quick 2)")
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    vocabs = [32768] if args.quick else [32768, 131072]
    steps = args.steps or (2 if args.quick else 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {str(v): run(v, steps, args.topk, args.temperature) for v in vocabs}
    out = args.out or str(Path(__file__).with_name("step_speed" + ("_quick" if args.quick else "") + ".json"))
    with open(out, "w") as f:
        json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), steps=steps, results=results), f,
                  indent=2)  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
