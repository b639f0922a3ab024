"""Layer maps (which student layer learns from which teacher layer) and the projections between their widths.

Numbering, everywhere in this package: layer 0 is the embedding output, layer k (1-based) is the output of the
k-th transformer block. That is the index into a Hugging Face ``hidden_states`` tuple (length L + 1). Attention
maps exist only for blocks, so an attention map uses layers 1..L and ``attentions[k - 1]`` in HF's tuple.

A map is a sorted list of ``(student_layer, teacher_layer)`` pairs. Several student layers may learn from the same
teacher layer, but a student layer appears at most once (two targets for one layer is almost always a typo).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

LayerMapSpec = str | Sequence[Sequence[int]]


def uniform_teacher_layer(student_layer: int, num_student_layers: int, num_teacher_layers: int) -> int:
    """Teacher layer ``floor(i * N / M)`` for student layer i: exact when M divides N, rounded down otherwise.

    The top layer always maps to the top layer (i = M gives N), and the embeddings to the embeddings.
    """
    return (student_layer * num_teacher_layers) // num_student_layers


def _format_pairs(pairs: Sequence[tuple[int, int]]) -> str:
    return "[" + ", ".join(f"[{s}, {t}]" for s, t in pairs) + "]"


def resolve_layer_map(
    spec: LayerMapSpec,
    num_student_layers: int,
    num_teacher_layers: int,
    *,
    include_embeddings: bool = True,
    strict: bool = True,
) -> list[tuple[int, int]]:
    """Turn a layer-map spec into validated ``(student_layer, teacher_layer)`` pairs, sorted by student layer.

    Args:
        spec: one of
            - ``"uniform"``: student layer i (1..M) learns from teacher layer i·N/M, and the embeddings (0) from the
              embeddings, as in TinyBERT (Jiao et al. 2020, "g(m) = m·N/M"). For (N, M) = (12, 4) that is
              ``[(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]``.
            - ``"last"``: exactly one pair, the top layers: ``[(M, N)]`` (MiniLM, Wang et al. 2020, distils the
              last layer's self-attention only). It never adds the embeddings.
            - explicit pairs ``[[s, t], ...]`` (lists or tuples of ints), e.g. read from YAML.
        num_student_layers: M, the student's number of blocks (``config.num_hidden_layers``).
        num_teacher_layers: N, the teacher's number of blocks.
        include_embeddings: True for hidden-state maps (layer 0 is valid). False for attention maps: ``uniform``
            then leaves out (0, 0), and an explicit pair with layer 0 is rejected because embeddings have no
            attention map.
        strict: when M does not divide N, ``uniform`` is an error (the message gives the rounded map to paste).
            With ``strict=False`` it warns and uses the rounded-down map ``floor(i·N/M)``.
    Returns:
        list of ``(student_layer, teacher_layer)`` int pairs, sorted by student layer.
    Raises:
        ValueError: unknown spec, out-of-range layer, duplicate student layer, or non-divisible uniform map.
    """
    m, n = num_student_layers, num_teacher_layers
    for name, value in (("num_student_layers", m), ("num_teacher_layers", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    low = 0 if include_embeddings else 1
    what = "hidden-state" if include_embeddings else "attention"

    if isinstance(spec, str):
        if spec == "last":
            return [(m, n)]
        if spec != "uniform":
            raise ValueError(
                f"layer map {spec!r} is not known; expected 'uniform', 'last' or explicit pairs like [[1, 3], [2, 6]]"
            )
        pairs = [(i, uniform_teacher_layer(i, m, n)) for i in range(low, m + 1)]
        if n % m != 0:
            rounded = ", ".join(str(t) for _, t in pairs if _ >= 1)
            message = (
                f"uniform layer map: the teacher's {n} layers are not a multiple of the student's {m}; rounding down "
                f"would pair student layers 1..{m} with teacher layers {rounded}"
            )
            if strict:
                raise ValueError(
                    f"{message}. Pass that (or another) map explicitly, e.g. layer_map={_format_pairs(pairs)}, or use "
                    "'last'"
                )
            warnings.warn(message + " (strict=False: using it)", stacklevel=2)
        return pairs

    if isinstance(spec, (bytes, dict)) or not isinstance(spec, Sequence):
        raise ValueError(f"layer map must be 'uniform', 'last' or a list of [student, teacher] pairs; got {spec!r}")
    if len(spec) == 0:
        raise ValueError("explicit layer map is empty; give at least one [student, teacher] pair or disable the loss")
    pairs = []
    for item in spec:
        if (
            isinstance(item, (str, bytes))
            or not isinstance(item, Sequence)
            or len(item) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in item)
        ):
            raise ValueError(f"layer map entry {item!r} is not a [student_layer, teacher_layer] pair of ints")
        s, t = int(item[0]), int(item[1])
        if not low <= s <= m:
            raise ValueError(
                f"{what} layer map pair [{s}, {t}]: student layer {s} is out of range; valid student layers are "
                f"{low}..{m}" + ("" if include_embeddings else " (layer 0, the embeddings, has no attention map)")
            )
        if not low <= t <= n:
            raise ValueError(
                f"{what} layer map pair [{s}, {t}]: teacher layer {t} is out of range; valid teacher layers are "
                f"{low}..{n}" + ("" if include_embeddings else " (layer 0, the embeddings, has no attention map)")
            )
        pairs.append((s, t))
    students = [s for s, _ in pairs]
    dupes = sorted({s for s in students if students.count(s) > 1})
    if dupes:
        raise ValueError(
            f"{what} layer map {_format_pairs(pairs)} lists student layer(s) {dupes} more than once; each student "
            "layer may learn from one teacher layer only"
        )
    return sorted(pairs)


class Projections(nn.Module):
    """Learnable maps from student width d_S to teacher width d_T, one per mapped student hidden layer.

    TinyBERT's paper (Jiao et al. 2020, eq. 7) writes a single matrix W_h for all layers and its released code
    uses one shared ``fit_dense``; one projection per layer costs ``len(layers)·d_S·d_T`` more parameters but lets
    each layer's basis differ, so it is the default here and ``shared=True`` gives TinyBERT's choice.

    When the widths are equal there is nothing to reconcile (DistilBERT compares hidden states directly), so no
    parameters are created and ``forward`` returns its input unchanged, unless ``project_equal_widths=True``: then
    linear maps are created and initialised to the identity, so a student copied from the teacher still starts at
    zero loss.

    The module belongs to the trainer (checkpointed, optimised, restored on resume) and never to the exported
    student.
    """

    def __init__(
        self,
        student_layers: Sequence[int],
        student_hidden_size: int,
        teacher_hidden_size: int,
        *,
        shared: bool = False,
        project_equal_widths: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        self.student_layers = sorted(set(int(s) for s in student_layers))
        self.student_hidden_size = student_hidden_size
        self.teacher_hidden_size = teacher_hidden_size
        self.shared = shared
        self.enabled = student_hidden_size != teacher_hidden_size or project_equal_widths
        self.proj = nn.ModuleDict()
        if not self.enabled:
            return
        keys = ["shared"] if shared else [self._key(s) for s in self.student_layers]
        for key in keys:
            linear = nn.Linear(student_hidden_size, teacher_hidden_size, bias=bias)
            if student_hidden_size == teacher_hidden_size:
                with torch.no_grad():
                    linear.weight.copy_(torch.eye(student_hidden_size))
                    if bias:
                        linear.bias.zero_()
            self.proj[key] = linear

    @staticmethod
    def _key(student_layer: int) -> str:
        # ModuleDict keys must be strings; "layer_3" also reads well in checkpoints.
        return f"layer_{student_layer}"

    def forward(self, hidden: torch.Tensor, student_layer: int) -> torch.Tensor:
        """Project ``(..., d_S)`` student hidden states of ``student_layer`` to ``(..., d_T)``."""
        if hidden.shape[-1] != self.student_hidden_size:
            raise ValueError(
                f"student layer {student_layer} hidden states have width {hidden.shape[-1]}, but the projections were "
                f"built for student_hidden_size={self.student_hidden_size}"
            )
        if not self.enabled:
            return hidden
        key = "shared" if self.shared else self._key(student_layer)
        if key not in self.proj:
            raise KeyError(f"no projection for student layer {student_layer}; built for layers {self.student_layers}")
        linear = self.proj[key]
        # Projections live in fp32 (trainer-owned); run them in the dtype of their weights.
        return linear(hidden.to(linear.weight.dtype))

    def extra_repr(self) -> str:
        return (
            f"layers={self.student_layers}, {self.student_hidden_size}->{self.teacher_hidden_size}, "
            f"shared={self.shared}, enabled={self.enabled}"
        )
