"""Memory per device, itemised, in the moments of a training step where it can peak.

A step (from the second one on: optimizer state exists, gradients were freed by ``zero_grad``) has three moments
that can be the peak, and each item says what it holds in each of them:

- ``teacher fwd``: the live teacher runs under no_grad before the student (its working memory and outputs);
- ``loss``: the student's forward is done (every saved activation is alive), the teacher's outputs are held and
  the logit loss reaches its peak (the fused loss also makes the lm_head and hidden-state gradients here);
- ``optimizer``: end of backward and optimizer step: every gradient is alive, activations are freed.

With gradient accumulation the gradients of earlier micro-batches are alive in every moment. On-policy runs add a
``generation`` moment (KV cache and sampling). A moment's total is the sum of its column; the peak is the largest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .activations import Activations, student_activations, teacher_forward_peak
from .spec import RunSpec
from .strategies import student_state, teacher_bytes
from .vocab import loss_peak, target_bytes, teacher_logits_bytes

# Teacher traces do not depend on the student side: suggestions and batch searches reuse them (keyed by the
# teacher's ModelShape object, which lives as long as the RunSpec that holds it).
_TEACHER_TRACES: dict[tuple, int] = {}


@dataclass
class Item:
    name: str
    group: str
    bytes: dict[str, int]  # phase -> bytes (absent: 0)
    note: str = ""

    def at(self, phase: str) -> int:
        return self.bytes.get(phase, 0)


@dataclass
class MemoryPlan:
    items: list[Item]
    phases: list[str]
    batch: int
    notes: list[str] = field(default_factory=list)

    def total(self, phase: str) -> int:
        return sum(i.at(phase) for i in self.items)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.total)

    @property
    def peak(self) -> int:
        return self.total(self.peak_phase)


@dataclass
class Footprint:
    """The batch-dependent parts, traced on fake tensors at one batch size."""

    activations: Activations
    loss: int
    teacher_forward: int

    @staticmethod
    def trace(spec: RunSpec, batch: int, activations: Activations | None = None) -> Footprint:
        keep_hidden = spec.fused or bool(spec.hidden_pairs)
        teacher = 0
        if spec.live_teacher:
            for t in spec.teachers:
                key = (id(t.shape), t.attn, batch, spec.seq, keep_hidden, bool(spec.attention_pairs), spec.fused)
                if key not in _TEACHER_TRACES:
                    _TEACHER_TRACES[key] = teacher_forward_peak(
                        spec, t.shape, batch, keep_hidden=keep_hidden, keep_attentions=bool(spec.attention_pairs)
                    )
                teacher += _TEACHER_TRACES[key]
        activations = activations or student_activations(spec, batch)
        return Footprint(activations, loss_peak(spec, batch), teacher)


def _affine(a, b, x0: int, x1: int, x: int):
    """Field-wise line through (x0, a) and (x1, b), evaluated at x (ints stay ints)."""
    if isinstance(a, int):
        return a if x1 == x0 else max(0, round(a + (b - a) * (x - x0) / (x1 - x0)))
    return type(a)(**{f.name: _affine(getattr(a, f.name), getattr(b, f.name), x0, x1, x) for f in fields(a)})


class Footprints:
    """Footprints at any batch size from two traces: exact at the run's batch, a straight line through it and
    batch 1 elsewhere (every traced part grows linearly with the batch at a fixed sequence length).

    ``reuse``: footprints of a run whose student side (model, precision, layer maps, lengths) is the same; its
    activation traces are taken as they are, only the teacher and loss parts are traced again.
    """

    def __init__(self, spec: RunSpec, reuse: Footprints | None = None):
        self.spec = spec
        self.x0, self.x1 = (reuse.x0, reuse.x1) if reuse else (1, max(spec.batch, 2))
        a0, a1 = (reuse.f0.activations, reuse.f1.activations) if reuse else (None, None)
        self.f0 = Footprint.trace(spec, self.x0, a0)
        self.f1 = Footprint.trace(spec, self.x1, a1)

    def at(self, batch: int) -> Footprint:
        if batch == self.x0:
            return self.f0
        if batch == self.x1:
            return self.f1
        return _affine(self.f0, self.f1, self.x0, self.x1, batch)


def _feature_targets(spec: RunSpec, batch: int) -> int:
    if not spec.teachers:
        return 0
    t = spec.teachers[0].shape
    b = t.dtype.itemsize
    hidden = len({tl for _, tl in spec.hidden_pairs}) * batch * spec.seq * t.hidden * b
    heads = int(getattr(t.config, "num_attention_heads", 0) or 0)
    attn = len({tl for _, tl in spec.attention_pairs}) * batch * heads * spec.seq * spec.seq * b
    return hidden + attn


def _kv_cache(spec: RunSpec, batch: int) -> tuple[int, int]:
    """(KV cache bytes, sampling bytes) of the model that generates ``max_new_tokens`` per prompt: the student
    (on-policy), or the teacher for sequence-level KD (``seq_kd``)."""
    generator = spec.teachers[0].shape if (spec.onpolicy.seq_kd and spec.teachers) else spec.student
    cfg = generator.config
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    b = spec.compute_dtype.itemsize if generator is spec.student else generator.dtype.itemsize
    # Keys and values of every layer for the prompt and every generated token.
    kv = 2 * generator.num_layers * heads * head_dim * batch * spec.seq * b
    sampling = batch * (generator.vocab or 0) * 4 * 2 + batch * spec.seq * 8  # fp32 logits + probs; int64 ids
    return kv, sampling


class _Items:
    """Collects items, keeping only the phases that exist in this run and the non-zero entries."""

    def __init__(self, phases: list[str]):
        self.phases = phases
        self.items: list[Item] = []

    def add(self, name: str, group: str, per_phase: dict[str, int], note: str = "") -> None:
        kept = {p: int(v) for p, v in per_phase.items() if p in self.phases and v}
        if kept:
            self.items.append(Item(name, group, kept, note))

    def everywhere(self, name: str, group: str, value: int, note: str = "") -> None:
        self.add(name, group, {p: value for p in self.phases}, note)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _student_items(out: _Items, spec: RunSpec, fp: Footprint, strategy: str, devices: int) -> list[str]:
    s = spec.student
    trainable = s.trainable + spec.projection_params
    optim = getattr(spec.args.optim, "value", str(spec.args.optim))
    state = student_state(
        s.params + spec.projection_params, trainable, s.adapter_params, s.block_params, s.dtype,
        mixed=spec.precision != "fp32", optim=optim, strategy=strategy, devices=devices,
    )  # fmt: skip
    base = s.params - s.adapter_params
    out.everywhere("student weights", "student", state.weights, f"{base / 1e6:.1f} M x {s.dtype.itemsize} B")
    out.everywhere("LoRA adapters", "student", state.adapters, f"{s.adapter_params / 1e6:.2f} M params")
    out.everywhere("feature projections", "student", spec.projection_params * 4, "trained with the student, fp32")
    out.everywhere("master weights (fp32)", "student", state.master)
    out.everywhere("optimizer state", "student", state.optimizer, state.notes[0])
    out.everywhere("DDP gradient buckets", "student", state.buckets, "gradients copied into flat buffers")
    accumulating = spec.grad_accum > 1
    note = f"{trainable / 1e6:.1f} M trainable" + (", alive across the accumulation window" if accumulating else "")
    out.add("gradients", "student", {p: state.gradients for p in out.phases if accumulating or p == "optimizer"}, note)
    out.add("gathered parameters", "student", {"loss": state.gathered})
    out.add("gathered block gradients", "student", {"optimizer": state.gathered_gradients})
    if s.head_params and _tied(s) and not spec.student_lora:
        # The embedding's backward makes a dense V x H gradient, then adds it into the tied lm_head's.
        out.add("embedding gradient (tied lm_head)", "student", {"optimizer": s.head_params * s.dtype.itemsize})
    if strategy in ("single", "ddp"):  # FSDP2 / DeepSpeed gather 16-bit parameters instead of autocast copies
        out.add("16-bit weight copies (autocast)", "student", {"loss": fp.activations.weight_copies})
    return state.notes[1:]


def _teacher_items(out: _Items, spec: RunSpec, fp: Footprint, batch: int, strategy: str, devices: int) -> None:
    for t in spec.teachers:
        shape = t.shape
        resident, gathered, how = teacher_bytes(
            shape.params, shape.block_params, shape.hidden, shape.dtype, strategy, devices
        )
        note = f"{shape.params / 1e6:.1f} M x {shape.dtype.itemsize} B ({_dtype_name(shape.dtype)}), {how}"
        out.everywhere(f"teacher weights ({t.name})", "teacher", resident, note)
        out.add("teacher gathered block", "teacher", {"teacher fwd": gathered})
    out.add("teacher forward (working memory, outputs)", "teacher", {"teacher fwd": fp.teacher_forward})
    held = teacher_logits_bytes(spec, batch) + _feature_targets(spec, batch)
    out.add("teacher outputs held for the loss", "teacher", {"loss": held})
    if spec.store:
        note = f"{spec.store.mode}, width {spec.store.width} ({spec.store.source})"
        out.add("top-k targets from the store", "teacher", {"loss": target_bytes(spec, batch)}, note)


def _activation_items(out: _Items, spec: RunSpec, fp: Footprint) -> None:
    act = fp.activations
    if spec.gradient_checkpointing:
        note = f"{act.layers} x {act.layer_input / 2**20:.1f} MiB"
        out.add(
            "activations: block inputs (checkpointed)", "activations", {"loss": act.layers * act.layer_input}, note
        )
        out.add("activations: one block recomputed", "activations", {"loss": act.per_layer})
    else:
        note = f"{act.layers} x {act.per_layer / 2**20:.1f} MiB per layer"
        out.add("activations: transformer blocks", "activations", {"loss": act.layers * act.per_layer}, note)
    out.add("activations: embeddings, final norm, outputs", "activations", {"loss": act.rest})
    out.add("feature terms (projections, losses)", "activations", {"loss": act.features})
    path = f"fused, chunk {spec.chunk}" if spec.fused else "materialised logits"
    out.add(f"vocabulary loss peak ({path})", "vocabulary", {"loss": fp.loss})


def memory_plan(
    spec: RunSpec, batch: int, fp: Footprint, *, strategy: str, devices: int, runtime: tuple[int, str]
) -> MemoryPlan:
    """Every item in every moment of a step of ``batch`` rows per device (``fp``: the traces at that batch)."""
    phases = (["generation"] if spec.onpolicy else []) + (["teacher fwd"] if spec.live_teacher else [])
    out = _Items(phases + ["loss", "optimizer"])
    notes = _student_items(out, spec, fp, strategy, devices)
    _teacher_items(out, spec, fp, batch, strategy, devices)
    _activation_items(out, spec, fp)
    if spec.onpolicy:
        kv, sampling = _kv_cache(spec, batch)
        note = f"{spec.onpolicy.max_new_tokens} new tokens per row"
        out.add("KV cache (generation)", "generation", {"generation": kv}, note)
        out.add("sampling logits and generated ids", "generation", {"generation": sampling})
    out.everywhere("runtime", "runtime", runtime[0], runtime[1])
    return MemoryPlan(out.items, out.phases, batch, notes)


def _tied(shape) -> bool:
    return bool(getattr(shape.config, "tie_word_embeddings", False))
