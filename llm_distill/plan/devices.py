"""Devices the plan knows: memory, peak throughput and the utilisation assumed; this machine's CPU, measured.

GPU peaks are the vendors' dense (no sparsity) tensor-core figures for 16-bit inputs and the plain fp32 figures
(PyTorch does not use TF32 for fp32 matmuls unless asked). Step times assume a model-flops utilisation of 40 % of
that peak, typical of Hugging Face Trainer runs of 0.1-10 B models; it is an assumption, not a measurement.
On the CPU the throughput is measured instead (``calibrate``), on the run's own modules and shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from dataclasses import dataclass, field

import torch

from ..losses import divergence, fused_distillation_loss
from .flops import forward_flops_per_token
from .models import default_dtype, shallow_config

GiB = 1 << 30
MiB = 1 << 20
UTILISATION = 0.40
# CUDA context, cuBLAS/cuDNN workspaces and allocator slack that no tensor accounts for (assumed).
GPU_RUNTIME_BYTES = 1 * GiB
# What a training process on this machine's CPU holds beyond its tensors once a step has run (kernels and libraries
# paged in, thread pools, Python and Trainer objects), measured by `benchmarks/plan_memory.py` as the resident
# memory of a step of a model whose tensors are negligible (see the README, "Will it fit?").
CPU_RUNTIME_BYTES = 24 * MiB


@dataclass
class Device:
    name: str
    memory: int  # bytes
    peak: dict[str, float] = field(default_factory=dict)  # precision -> flop/s
    utilisation: float = UTILISATION
    runtime: int = GPU_RUNTIME_BYTES
    runtime_note: str = "CUDA context and workspaces (assumed)"
    rates: dict[str, float] | None = None  # measured flop/s by part (CPU calibration)


def _gpu(name: str, gib: float, bf16_tflops: float, fp32_tflops: float) -> Device:
    peak = {"bf16": bf16_tflops * 1e12, "fp16": bf16_tflops * 1e12, "fp32": fp32_tflops * 1e12}
    return Device(name, int(gib * GiB), peak)


DEVICES = {
    d.name: d
    for d in (
        _gpu("a100-40gb", 40, 312, 19.5),
        _gpu("a100-80gb", 80, 312, 19.5),
        _gpu("h100-80gb", 80, 989, 67),
        _gpu("h200", 141, 989, 67),
        _gpu("l4", 24, 121, 30.3),
        _gpu("a10", 24, 125, 31.2),
        _gpu("rtx-4090", 24, 165, 82.6),
        _gpu("mi300x", 192, 1307, 163.4),
    )
}
DEFAULT_GPU = "h100-80gb"
DEVICE_NAMES = tuple(DEVICES) + ("cpu",)

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """``"80GB"``, ``"80 GiB"``, ``"24g"``, ``"512MB"`` -> bytes. GB and GiB both mean 2^30 bytes: device memory
    is sold in binary gigabytes (an "80GB" A100 has 80 GiB)."""
    m = _SIZE.match(str(text))
    if not m or not m.group(2) and not m.group(3):
        raise ValueError(f"--device-memory {text!r} is not a size; write e.g. 80GB, 24GiB or 512MB")
    scale = {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def host_memory() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_device(rates: dict[str, float] | None = None) -> Device:
    return Device(
        "cpu",
        host_memory(),
        {},
        utilisation=1.0,
        runtime=CPU_RUNTIME_BYTES,
        runtime_note="libraries, threads and objects of a training process (measured once here)",
        rates=rates,
    )


def get_device(name: str) -> Device:
    if name == "cpu":
        return cpu_device()
    if name not in DEVICES:
        raise ValueError(f"--device {name!r} is not known; expected one of {', '.join(DEVICE_NAMES)}")
    return DEVICES[name]


def _timed(fn, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times after one warm-up call (kernel selection, page faults): the machine is
    shared, and the fastest run is the one least disturbed."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _run_base(base, ids, train: bool, amp) -> None:
    with torch.set_grad_enabled(train), amp:
        out = base(input_ids=ids).last_hidden_state
    if train:
        out.float().sum().backward()


def _depth_seconds(shape, attn: str | None, rows: int, seq: int, depths: tuple[int, int], *, train: bool, amp):
    """Seconds of the model's body (embeddings to final norm; forward, + backward when ``train``) built with each
    of ``depths`` blocks: random weights at the real widths, nothing read."""
    seconds = []
    for layers in depths:
        config = shallow_config(shape.config, layers)
        config._attn_implementation = attn
        with default_dtype(shape.dtype):
            model = shape.model_class(config)
        base = model.base_model
        base.train(train)
        base.requires_grad_(train)
        ids = torch.zeros(rows, seq, dtype=torch.long)
        seconds.append(_timed(functools.partial(_run_base, base, ids, train, amp)))
        del model, base
    return seconds


def _blocks(shape, attn, rows: int, seq: int, causal: bool, *, train: bool, amp, max_params: int) -> tuple:
    """(flop/s of one block, seconds of everything else in the body) from a 1-block and a deeper build: the
    difference of the two is (depth - 1) blocks, the rest (embeddings, their gradient, final norm, per-call
    overhead) is what the 1-block build spends beyond one block."""
    deep = max(2, min(shape.num_layers, max_params // max(shape.block_params, 1)))
    t1, t2 = _depth_seconds(shape, attn, rows, seq, (1, deep), train=train, amp=amp)
    block = max(t2 - t1, t2 * 0.05) / (deep - 1)
    one = dataclasses.replace(shape, num_layers=1, matmul_params=shape.block_params)
    flops = forward_flops_per_token(one, seq, causal) * rows * seq * (3 if train else 1)
    return flops / block, max(t1 - block, 0.0)


def calibrate(spec, max_tokens: int = 2048, max_params: int = 400_000_000) -> dict[str, float]:
    """Measured on this CPU, at the run's widths and batch shape (at most ``max_tokens`` tokens):

    - ``student`` / ``teacher``: flop/s of one block (forward + backward / forward only);
    - ``student_rest`` / ``teacher_rest``: seconds per micro-batch of the rest of the body;
    - ``head``: flop/s of the logit loss over the real vocabulary (fused or materialised, as the run does it);
    - ``optimizer``: trainable parameters per second through gradient clipping and the run's AdamW.
    Models are built with random weights (nothing is read) up to ``max_params`` parameters of blocks.
    """
    s = spec.student
    causal = spec.task == "causal_lm"
    seq = max(2, min(int(round(spec.lengths.mean_padded)), max_tokens))
    rows = max(1, min(spec.batch, max_tokens // seq))
    amp = torch.autocast("cpu", dtype=spec.compute_dtype, enabled=spec.autocast)
    rates: dict[str, float] = {"tokens": float(rows * seq)}
    rates["student"], rates["student_rest"] = _blocks(
        s, spec.student_attn, rows, seq, causal, train=True, amp=amp, max_params=max_params
    )
    if spec.teachers:
        t = spec.teachers[0]
        rates["teacher"], rates["teacher_rest"] = _blocks(
            t.shape, t.attn, rows, seq, causal, train=False, amp=amp, max_params=max_params
        )
    if s.vocab and spec.task != "sequence_classification":
        n, v, h = rows * seq, s.vocab, s.hidden
        hidden = torch.randn(n, h, dtype=s.dtype, requires_grad=True)
        weight = torch.randn(v, h, dtype=s.dtype, requires_grad=True)
        target = torch.randn(n, v)

        def head_step():
            if spec.fused:
                kd, _ = fused_distillation_loss(hidden, weight, teacher_logits=target, chunk_size=spec.chunk)
            else:
                with amp:
                    logits = hidden @ weight.t()
                kd = divergence(logits, target, reduction="sum")
            kd.backward()
            hidden.grad = weight.grad = None

        rates["head"] = 6 * h * v * n / _timed(head_step)
    param = torch.nn.Parameter(torch.zeros(1 << 22, dtype=s.dtype))
    optimizer = torch.optim.AdamW([param], fused=True)

    def optimizer_step():
        param.grad = torch.ones_like(param)
        torch.nn.utils.clip_grad_norm_([param], 1.0)
        optimizer.step()

    rates["optimizer"] = param.numel() / _timed(optimizer_step)
    return rates
