"""Vocabulary distillation loss: peak memory, speed and gradient error of five implementations, side by side.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/loss_memory_speed.py --quick     # ~10 min on 2 shared cores
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/loss_memory_speed.py             # full table, ~30 min

Methods (all: student hidden (N, H) x lm_head (V, H), live teacher hidden (N, H) x teacher lm_head (V, H), no bias,
T = 1, sum over tokens):

- ``naive``          materialised student and teacher logits + ``llm_distill.losses.divergence`` (autograd)
- ``ours``           ``llm_distill.losses.fused_distillation_loss`` (chunked, closed-form gradients)
- ``trl_chunked``    ``trl.kernels.chunked_divergence.ChunkedDivergenceFunction`` (pure-torch tiles off GPU)
- ``trl_gkd_dense``  ``GKDTrainer.generalized_jsd_loss`` on materialised logits
- ``liger``          ``liger_kernel.chunked_loss.LigerFusedLinearJSDLoss`` (pure torch, ``compiled=False``; it
                     always computes the hard CE as well, with weight 0 here)

Every (case, method) runs in a fresh subprocess: peak extra memory = peak RSS (VmHWM, reset just before) during the
first forward+backward minus the RSS just before it (inputs already built); the time is the median over the later
iterations and over rounds, methods interleaved in a rotating order because the machine is shared. The gradient error
is relative (Frobenius) against an fp64 reference computed chunk by chunk from the same (dtype-rounded) inputs.
Needs ``pip install trl liger-kernel`` (the ``bench`` extra); methods whose package is missing are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ("naive", "ours", "trl_chunked", "trl_gkd_dense", "liger")
DENSE = ("naive", "trl_gkd_dense")
QUICK = [
    dict(vocab=32768, tokens=1024, hidden=512, dtype="fp32", kind="forward_kl"),
    dict(vocab=131072, tokens=1024, hidden=512, dtype="fp32", kind="forward_kl"),
    dict(vocab=131072, tokens=1024, hidden=512, dtype="bf16", kind="forward_kl"),
]
FULL = QUICK + [
    dict(vocab=131072, tokens=1024, hidden=512, dtype="fp32", kind="jsd"),
    dict(vocab=32768, tokens=2048, hidden=2048, dtype="bf16", kind="forward_kl"),
    dict(vocab=151936, tokens=1024, hidden=1024, dtype="bf16", kind="forward_kl"),
]


def case_name(c: dict) -> str:
    return f"V={c['vocab']} N={c['tokens']} H={c['hidden']} {c['dtype']} {c['kind']}"


def make_inputs(c: dict) -> dict:
    """Deterministic inputs, built without large temporaries (the RSS baseline must be the steady state)."""
    g = torch.Generator().manual_seed(0)
    dt, n, v, h = DTYPES[c["dtype"]], c["tokens"], c["vocab"], c["hidden"]

    def randn(*shape, scale):
        return torch.randn(*shape, generator=g, dtype=dt).mul_(scale)

    return dict(
        h=randn(n, h, scale=1.0).requires_grad_(),
        w=randn(v, h, scale=2.0 / h**0.5).requires_grad_(),
        th=randn(n, h, scale=1.0),
        tw=randn(v, h, scale=3.0 / h**0.5),
        labels=torch.randint(0, v, (n,), generator=g),
    )


def beta_of(c: dict) -> float:
    return 0.0 if c["kind"] == "forward_kl" else 0.5  # beta = 0 is forward KL in TRL's, Liger's and our convention


def loss_fn(method: str, c: dict, x: dict, chunk: int):
    """A closure returning the summed loss (comparable across methods) for one forward pass."""
    from llm_distill.losses.fused import auto_chunk_size

    beta = beta_of(c)
    chunk = chunk or auto_chunk_size(c["vocab"])
    if method in DENSE:
        from llm_distill.losses import divergence

        if method == "trl_gkd_dense":
            from trl.experimental.gkd import GKDTrainer

        def dense():
            logits = x["h"] @ x["w"].t()
            with torch.no_grad():
                t_logits = x["th"] @ x["tw"].t()
            if method == "naive":
                return divergence(logits, t_logits, kind=c["kind"], beta=beta, reduction="sum", scale_by_t2=False)
            return GKDTrainer.generalized_jsd_loss(logits, t_logits, beta=beta, reduction="sum")

        return dense
    if method == "ours":
        from llm_distill.losses import fused_distillation_loss

        return lambda: fused_distillation_loss(
            x["h"], x["w"], teacher_hidden=x["th"], teacher_weight=x["tw"], kind=c["kind"], beta=beta,
            scale_by_t2=False, chunk_size=chunk,
        )[0]  # fmt: skip
    if method == "trl_chunked":
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        fn = ChunkedDivergenceFunction.apply
        return lambda: fn(x["h"], x["w"], None, x["th"], x["tw"], None, beta, 1.0)[0].sum()
    if method == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=1.0, compiled=False, chunk_size=chunk
        )
        n = c["tokens"]  # Liger divides by the number of counted tokens; undo it to compare sums
        return lambda: loss(x["h"], x["w"], x["th"], x["tw"], x["labels"]) * n
    raise ValueError(f"method={method!r}; expected one of {METHODS}")


def current_rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next reading covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_kb(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_worker(c: dict, method: str, iters: int, chunk: int, ref_path: str | None) -> dict:
    torch.manual_seed(0)
    x = make_inputs(c)
    fn = loss_fn(method, c, x, chunk)
    times, loss = [], None
    for it in range(iters):
        x["h"].grad = x["w"].grad = None
        reset_ok = reset_peak_rss() if it == 0 else False
        before = current_rss_kb()
        start = time.perf_counter()
        loss = fn()
        loss.backward()
        times.append(time.perf_counter() - start)
        if it == 0:
            peak_extra_mb = (peak_rss_kb(reset_ok) - before) / 1024
    out = dict(peak_extra_mb=peak_extra_mb, times=times[1:] if iters > 1 else times, loss=loss.item())
    if ref_path and os.path.exists(ref_path):
        ref = torch.load(ref_path)
        err = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
        out.update(err_hidden=err(x["h"].grad, ref["h"]), err_weight=err(x["w"].grad, ref["w"]),
                   loss_rel_err=abs(loss.item() - ref["loss"]) / abs(ref["loss"]))  # fmt: skip
    return out


def run_reference(c: dict, path: str, chunk: int = 128) -> None:
    """fp64 gradients of the dense loss, chunk by chunk over tokens (exact sum, bounded memory)."""
    from llm_distill.losses import divergence

    x = make_inputs(c)
    h, w = (x[k].detach().double().requires_grad_() for k in ("h", "w"))
    th, tw = x["th"].double(), x["tw"].double()
    total = 0.0
    for s in range(0, c["tokens"], chunk):
        with torch.no_grad():
            t_logits = th[s : s + chunk] @ tw.t()
        loss = divergence(h[s : s + chunk] @ w.t(), t_logits, kind=c["kind"], beta=beta_of(c), reduction="sum",
                          scale_by_t2=False)  # fmt: skip
        loss.backward()
        total += loss.item()
    torch.save(dict(h=h.grad.float(), w=w.grad.float(), loss=total), path)


def available(method: str) -> bool:
    mod = {"trl_chunked": "trl", "trl_gkd_dense": "trl", "liger": "liger_kernel"}.get(method)
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def spawn(args: list[str]) -> dict | None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  ! {' '.join(args[:4])}: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="three cases, one round")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 1)")
    iters_help = ("fwd+bwd per worker process; memory from the first, time from the later ones (or the first when 1: "
                  "every method then pays the first-touch page faults that a training step pays)")  # fmt: skip
    ap.add_argument("--iters", type=int, default=2, help=iters_help)
    ap.add_argument("--chunk", type=int, default=0, help="token chunk for ours and Liger (0: our auto_chunk_size)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--max-dense-gb", type=float, default=9.0, help="skip dense methods above ~8 N*V*4 bytes")
    ap.add_argument("--out", default=None, help="JSON path (default: next to this script)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ref", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        c = json.loads(args.case)
        if args.worker == "reference":
            run_reference(c, args.ref)
            print("{}")
        else:
            print(json.dumps(run_worker(c, args.worker, args.iters, args.chunk, args.ref)))
        return

    cases = QUICK if args.quick else FULL
    rounds = args.rounds or 1  # rounds are fresh processes, methods in a rotated order
    methods = [m for m in args.methods.split(",") if available(m)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; methods: {', '.join(methods)}", flush=True)
    results = []
    tmp = tempfile.mkdtemp(prefix="lossbench_")
    for c in cases:
        name = case_name(c)
        ref = os.path.join(tmp, "ref.pt")
        print(f"[{name}] fp64 reference ...", flush=True)
        spawn(["--worker", "reference", "--case", json.dumps(c), "--ref", ref])
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        dense_gb = 8 * c["tokens"] * c["vocab"] * 4 / 2**30
        for r in range(rounds):
            order = methods[r % len(methods) :] + methods[: r % len(methods)]
            for m in order:
                if m in DENSE and dense_gb > args.max_dense_gb:
                    continue
                res = spawn(["--worker", m, "--case", json.dumps(c), "--iters", str(args.iters),
                             "--chunk", str(args.chunk), "--ref", ref])  # fmt: skip
                if res:
                    runs[m].append(res)
                    print(f"  {m:14s} {statistics.median(res['times']):7.2f} s  {res['peak_extra_mb']:8.0f} MB",
                          flush=True)  # fmt: skip
        if os.path.exists(ref):
            os.remove(ref)
        summary = {}
        for m, rs in runs.items():
            if not rs:
                continue
            summary[m] = dict(
                time_s=statistics.median([t for res in rs for t in res["times"]]),
                peak_extra_mb=statistics.median([res["peak_extra_mb"] for res in rs]),
                **{k: rs[0][k] for k in ("err_hidden", "err_weight", "loss_rel_err") if k in rs[0]},
            )
        results.append(dict(case=c, name=name, methods=summary))
        print_table(name, summary)
    out = args.out or str(Path(__file__).with_name("loss_memory_speed" + ("_quick" if args.quick else "") + ".json"))
    with open(out, "w") as f:
        json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), chunk=args.chunk,
                       rounds=rounds, iters=args.iters, results=results), f, indent=2)  # fmt: skip
    print(f"wrote {out}")


def print_table(name: str, summary: dict) -> None:
    base = summary.get("naive")
    print(f"\n{name}")
    print(f"  {'method':14s} {'time s':>8s} {'x naive':>8s} {'peak MB':>9s} {'x naive':>8s} {'grad err h':>11s} "
          f"{'grad err W':>11s}")  # fmt: skip
    for m, s in summary.items():
        tr = f"{s['time_s'] / base['time_s']:.2f}" if base else "-"
        mr = f"{s['peak_extra_mb'] / base['peak_extra_mb']:.3f}" if base else "-"
        eh = f"{s['err_hidden']:.1e}" if "err_hidden" in s else "-"
        ew = f"{s['err_weight']:.1e}" if "err_weight" in s else "-"
        print(f"  {m:14s} {s['time_s']:8.2f} {tr:>8s} {s['peak_extra_mb']:9.0f} {mr:>8s} {eh:>11s} {ew:>11s}")
    print(flush=True)


if __name__ == "__main__":
    main()
