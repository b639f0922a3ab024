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
CPU_RUNTIME_BYTES = 160 * MiB


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


def _timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up: first calls pay for kernel selection and page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _run_base(base, ids, train: bool, amp) -> None:
    import torch

    with torch.set_grad_enabled(train), amp:
        out = base(input_ids=ids).last_hidden_state
    if train:
        out.float().sum().backward()


def _block_seconds(shape, attn: str | None, rows: int, seq: int, *, train: bool, amp) -> float:
    """Seconds of one transformer block (forward, + backward when ``train``): a two-block model's time minus a
    one-block model's, so embeddings and final norm cancel out. Random weights; nothing is read."""
    import torch

    seconds = []
    for layers in (1, 2):
        config = shallow_config(shape.config, layers)
        config._attn_implementation = attn
        with default_dtype(shape.dtype):
            model = shape.model_class(config)
        base = model.base_model
        base.train(train)
        base.requires_grad_(train)
        ids = torch.zeros(rows, seq, dtype=torch.long)
        seconds.append(_timed(functools.partial(_run_base, base, ids, train, amp)))
    # Two noisy timings: never let their difference fall below a quarter of one block's share.
    return max(seconds[1] - seconds[0], seconds[1] / 8)


def calibrate(spec, max_tokens: int = 256, max_block_params: int = 60_000_000) -> dict[str, float]:
    """Measured throughput on this CPU of the run's own parts, at its widths and (capped) lengths.

    ``student``: flop/s of one student block forward + backward; ``teacher``: of one teacher block forward (the
    student's rate stands in for a teacher block of more than ``max_block_params``); ``head``: of the logit loss
    over the real vocabulary (fused or materialised, as the run does it); ``optimizer``: trainable parameters
    updated per second by the run's AdamW.
    """
    import torch

    s = spec.student
    causal = spec.task == "causal_lm"
    seq = max(2, min(int(spec.lengths.mean_padded), max_tokens))
    rows = max(1, min(spec.batch, max_tokens // seq))
    amp = torch.autocast("cpu", dtype=spec.compute_dtype, enabled=spec.autocast)

    def block_flops(shape) -> float:
        one = dataclasses.replace(shape, num_layers=1, matmul_params=shape.block_params)
        return forward_flops_per_token(one, seq, causal) * rows * seq

    rates = {"student": 3 * block_flops(s) / _block_seconds(s, spec.student_attn, rows, seq, train=True, amp=amp)}
    if spec.teachers:
        t = spec.teachers[0]
        if t.shape.block_params <= max_block_params:
            rates["teacher"] = block_flops(t.shape) / _block_seconds(t.shape, t.attn, rows, seq, train=False, amp=amp)
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

        rates["head"] = 6 * h * v * n / _timed(head_step)
    param = torch.nn.Parameter(torch.zeros(1 << 22, dtype=s.dtype))
    param.grad = torch.zeros_like(param)
    optimizer = torch.optim.AdamW([param], fused=True)
    rates["optimizer"] = param.numel() / _timed(optimizer.step)
    return rates
