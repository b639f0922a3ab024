"""FeatureDistiller: layer maps + projections + feature losses behind one call.

The trainer owns one ``FeatureDistiller`` (an ``nn.Module``, so its projections are optimised, checkpointed and
restored like any other trainable state) and calls it once per micro-batch with the student's outputs and the
teacher's targets. It never touches the student model itself, so the exported student stays a plain HF model.

Typical use::

    fd = FeatureDistiller.from_configs(student.config, teacher.config, hidden_map="uniform", attention_map="last")
    prepare_for_feature_distillation(student, attentions=fd.needs_attentions)  # and the teacher model
    teacher_out = teacher(batch, hidden_layers=fd.teacher_hidden_layers, attention_layers=fd.teacher_attention_layers)
    out = student(**inputs, output_hidden_states=fd.needs_hidden_states or None,
                  output_attentions=fd.needs_attentions or None)
    terms = fd(batch["attention_mask"], student_hidden_states=out.hidden_states,
               student_attentions=out.attentions, teacher_hidden_states=teacher_out.hidden_states,
               teacher_attentions=teacher_out.attentions)
    hidden_sum, hidden_count = terms["hidden"]

Relation terms (MiniLMv2 relations, attention on pre-softmax scores) read what ``capture.AttentionCapture`` keeps
from inside both models' attention: ``fd.attach(student, teacher)`` installs it once, ``StudentWithFeatures`` records
the student's forward pass, and ``forward`` takes both records. RKD needs the last layer's hidden states only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from ..checks import check_choice
from ..losses.features import ATTENTION_LOSS_KINDS, HEAD_MODES, HIDDEN_LOSS_KINDS, attention_loss, hidden_state_loss
from ..losses.relations import POOLINGS, RELATION_KINDS, SCORE_LOSS_KINDS
from .capture import AttentionCapture, AttentionShape
from .layer_map import LayerMapSpec, Projections, resolve_layer_map
from .relational import RKD_TERMS, check_relation_heads, relation_term, rkd_counts, rkd_terms, score_attention_term

LayerOutputs = Sequence[torch.Tensor] | Mapping[int, torch.Tensor]
# Every feature term, in the order a trainer counts and logs them.
FEATURE_TERMS = ("hidden", "attention", "relation", "rkd_distance", "rkd_angle")
ATTENTION_ON = ("probs", "scores")


def _config_dims(config, role: str) -> tuple[int, int]:
    try:
        return int(config.num_hidden_layers), int(config.hidden_size)
    except AttributeError as err:
        raise ValueError(
            f"{role} config {type(config).__name__} has no num_hidden_layers/hidden_size; pass the sizes to "
            "FeatureDistiller(...) directly"
        ) from err


def prepare_for_feature_distillation(model: nn.Module, *, attentions: bool) -> list[str]:
    """Make a model (teacher or student) return usable attention maps; a no-op when ``attentions`` is False.

    - Switches to eager attention (``model.set_attn_implementation("eager")``): SDPA and flash attention return no
      maps in transformers 5. Hidden states need nothing: every implementation returns them.
    - Sets attention-probability dropout to 0 on the attention modules (``BertSelfAttention.dropout.p``,
      ``LlamaAttention.attention_dropout``): HF returns the maps *after* dropout, so in training they would hold
      exact zeros and rows not summing to 1, which a KL target punishes as if they were the student's beliefs.
      Hidden-state dropout is untouched, and so is the config (the exported student keeps its dropout settings).

    Returns the names of the modules whose attention dropout was set to 0. Call it again after a reload (resume).
    """
    if not attentions:
        return []
    if getattr(model.config, "_attn_implementation", None) != "eager":
        model.set_attn_implementation("eager")
    changed = []
    for name, module in model.named_modules():
        if not type(module).__name__.endswith("Attention"):
            continue
        if isinstance(getattr(module, "attention_dropout", None), float) and module.attention_dropout > 0:
            module.attention_dropout = 0.0
            changed.append(name)
        elif isinstance(getattr(module, "dropout", None), nn.Dropout) and module.dropout.p > 0:
            module.dropout.p = 0.0
            changed.append(name)
    return changed


class FeatureDistiller(nn.Module):
    """Hidden-state and attention distillation through layer maps, with trainer-owned projections.

    Args:
        num_student_layers / num_teacher_layers: M and N, the numbers of transformer blocks.
        student_hidden_size / teacher_hidden_size: d_S and d_T.
        hidden_map: layer-map spec for hidden states (``"uniform"``, ``"last"``, explicit pairs) or None to
            disable the hidden term. Layer 0 (embeddings) is allowed.
        attention_map: layer-map spec for attention maps, or None to disable. Layers are 1..M / 1..N; ``"uniform"``
            drops the (0, 0) pair.
        hidden_loss: ``"mse"`` or ``"cosine"``. attention_loss: ``"kl"`` or ``"mse"``.
        attention_heads: ``"auto"`` | ``"per_head"`` | ``"mean"`` (see ``losses.features.attention_loss``).
        shared_projection / project_equal_widths: see ``Projections``.
        strict_map: a non-divisible ``"uniform"`` map is an error when True, a warning + rounded map when False.
        attention_on: ``"probs"`` (the maps HF returns) or ``"scores"`` (pre-softmax ``QK^T * scaling``, captured;
            ``attention_loss`` then means ``mse`` on scores as in TinyBERT, or ``kl`` of their softmaxes).
        relation_map: layer-map spec (block pairs, as for attention) for MiniLMv2 relations, or None.
        relation_heads: relation heads R; must divide every captured width of both models.
        relation_kinds: any of ``query``, ``key``, ``value`` (Q-Q, K-K, V-V relations).
        rkd: any of ``distance``, ``angle`` (RKD on pooled last-layer hidden states). rkd_pooling: ``cls``/``mean``.
        causal: relations leave out keys after the query (causal LMs).
        student_attention / teacher_attention: the models' head layouts, to refuse an impossible ``relation_heads``
            before training (``from_configs`` reads them).
    """

    def __init__(
        self,
        num_student_layers: int,
        num_teacher_layers: int,
        student_hidden_size: int,
        teacher_hidden_size: int,
        *,
        hidden_map: LayerMapSpec | None = "uniform",
        attention_map: LayerMapSpec | None = None,
        hidden_loss: str = "mse",
        attention_loss: str = "kl",
        attention_heads: str = "auto",
        shared_projection: bool = False,
        project_equal_widths: bool = False,
        strict_map: bool = True,
        attention_on: str = "probs",
        relation_map: LayerMapSpec | None = None,
        relation_heads: int = 12,
        relation_kinds: Sequence[str] = RELATION_KINDS,
        rkd: Sequence[str] = (),
        rkd_pooling: str = "mean",
        causal: bool = False,
        student_attention: AttentionShape | None = None,
        teacher_attention: AttentionShape | None = None,
    ):
        super().__init__()
        if hidden_map is None and attention_map is None and relation_map is None and not rkd:
            raise ValueError(
                "FeatureDistiller needs hidden_map or attention_map (or relation_map, or rkd); all are off"
            )
        check_choice("hidden_loss", hidden_loss, HIDDEN_LOSS_KINDS)
        check_choice("attention_loss", attention_loss, ATTENTION_LOSS_KINDS)
        check_choice("attention_heads", attention_heads, HEAD_MODES)
        check_choice("attention_on", attention_on, ATTENTION_ON)
        check_choice("rkd_pooling", rkd_pooling, POOLINGS)
        for kind in relation_kinds:
            check_choice("relation_kinds", kind, RELATION_KINDS)
        for which in rkd:
            check_choice("rkd", which, tuple(RKD_TERMS))
        if attention_on == "scores":
            check_choice("attention_loss (on scores)", attention_loss, SCORE_LOSS_KINDS)
        self.num_student_layers = num_student_layers
        self.num_teacher_layers = num_teacher_layers
        self.hidden_loss = hidden_loss
        self.attention_loss = attention_loss
        self.attention_heads = attention_heads
        m, n = num_student_layers, num_teacher_layers
        self.hidden_pairs: list[tuple[int, int]] = (
            []
            if hidden_map is None
            else resolve_layer_map(hidden_map, m, n, include_embeddings=True, strict=strict_map)
        )
        self.attention_pairs: list[tuple[int, int]] = (
            []
            if attention_map is None
            else resolve_layer_map(attention_map, m, n, include_embeddings=False, strict=strict_map)
        )
        self.relation_pairs: list[tuple[int, int]] = (
            []
            if relation_map is None
            else resolve_layer_map(relation_map, m, n, include_embeddings=False, strict=strict_map)
        )
        self.attention_on = attention_on
        self.relation_heads = relation_heads
        self.relation_kinds = tuple(relation_kinds)
        if self.relation_pairs and not self.relation_kinds:
            raise ValueError("relation_kinds is empty; name at least one of query, key, value")
        self.rkd = tuple(rkd)
        self.rkd_pooling = rkd_pooling
        self.causal = causal
        if self.relation_pairs:
            for role, shape in (("student", student_attention), ("teacher", teacher_attention)):
                check_relation_heads(relation_heads, self.relation_kinds, shape, role)
        # Hooks on the models, not parameters: a plain dict, which nn.Module does not register or save.
        self._captures: dict[str, AttentionCapture] = {}
        self.projections = Projections(
            [s for s, _ in self.hidden_pairs],
            student_hidden_size,
            teacher_hidden_size,
            shared=shared_projection,
            project_equal_widths=project_equal_widths,
        )

    @classmethod
    def from_configs(cls, student_config, teacher_config, **kwargs) -> FeatureDistiller:
        """Build from two HF configs (``num_hidden_layers``, ``hidden_size`` and, for relations, the head layout are
        read from them)."""
        m, d_s = _config_dims(student_config, "student")
        n, d_t = _config_dims(teacher_config, "teacher")
        if kwargs.get("relation_map") is not None:
            kwargs.setdefault("student_attention", AttentionShape.of(student_config))
            kwargs.setdefault("teacher_attention", AttentionShape.of(teacher_config))
        return cls(m, n, d_s, d_t, **kwargs)

    # ---- captures from inside the models' attention -------------------------------------------------------

    def _capture_layers(self, side: int) -> list[int]:
        pairs = self.relation_pairs + (self.attention_pairs if self.attention_on == "scores" else [])
        return sorted({pair[side] for pair in pairs})

    @property
    def needs_captures(self) -> bool:
        return bool(self.relation_pairs) or (bool(self.attention_pairs) and self.attention_on == "scores")

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Install the captures the relation and score terms read (no-op when neither is on). Call once, before
        training; the hooks stay with the models (a resumed run's in-place weight load keeps them)."""
        if not self.needs_captures or self._captures:
            return
        if teacher is None:
            raise ValueError(
                "relation and score terms read the teacher's attention: they need a live teacher model, not a store"
            )
        kw = dict(
            projections=bool(self.relation_pairs), scores=self.attention_on == "scores" and bool(self.attention_pairs)
        )
        self._captures = {
            "student": AttentionCapture(student, self._capture_layers(0), always=False, **kw),
            "teacher": AttentionCapture(teacher, self._capture_layers(1), always=True, **kw),
        }

    def recording_student(self):
        """Context in which the student's forward pass is captured (a no-op context without captures)."""
        return self._captures["student"].recording() if self._captures else nullcontext()

    # What to ask the models for. Teacher hidden-state keys and attention keys follow ``TeacherOutputs``:
    # hidden 0 = embeddings, attention 1-based.
    # Attention layers are those whose *maps* (probabilities) the models must return; scores are captured instead.
    @property
    def student_hidden_layers(self) -> list[int]:
        return sorted({s for s, _ in self.hidden_pairs} | ({self.num_student_layers} if self.rkd else set()))

    @property
    def teacher_hidden_layers(self) -> list[int]:
        return sorted({t for _, t in self.hidden_pairs} | ({self.num_teacher_layers} if self.rkd else set()))

    @property
    def student_attention_layers(self) -> list[int]:
        return sorted({s for s, _ in self.attention_pairs}) if self.needs_attentions else []

    @property
    def teacher_attention_layers(self) -> list[int]:
        return sorted({t for _, t in self.attention_pairs}) if self.needs_attentions else []

    @property
    def needs_hidden_states(self) -> bool:
        return bool(self.hidden_pairs) or bool(self.rkd)

    @property
    def needs_attentions(self) -> bool:
        return bool(self.attention_pairs) and self.attention_on == "probs"

    def counts(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """What ``forward`` will return as counts for this mask, without running anything.

        A trainer sums these over the micro-batches of an accumulation window (and all-reduces them across
        processes) before the first backward, then divides each term's sum by its window count.
        Returns ``{term: int64 count}``: real tokens x mapped layers (x relation kinds for ``relation``); RKD terms
        count the pairs / triplets of the micro-batch's samples (see ``relational``).
        """
        real = attention_mask.bool().sum()
        per_token = (
            ("hidden", len(self.hidden_pairs)),
            ("attention", len(self.attention_pairs)),
            ("relation", len(self.relation_pairs) * len(self.relation_kinds)),
        )
        counts = {name: real * n for name, n in per_token if n}
        return {**counts, **rkd_counts(self.rkd, attention_mask)}

    @staticmethod
    def _student_layer(outputs: LayerOutputs | None, layer: int, kind: str, offset: int) -> torch.Tensor:
        if outputs is None or len(outputs) == 0:
            hint = (
                "call the student with output_hidden_states=True"
                if kind == "hidden"
                else "call the student with output_attentions=True and attn_implementation='eager' (SDPA/flash "
                "attention return no maps)"
            )
            raise ValueError(f"the student returned no {kind} outputs; {hint}")
        if isinstance(outputs, Mapping):
            if layer not in outputs:
                raise KeyError(f"student {kind} outputs have layers {sorted(outputs)}, but layer {layer} is mapped")
            return outputs[layer]
        # HF tuples: hidden_states[k] is layer k (0 = embeddings); attentions[k - 1] is layer k.
        index = layer - offset
        if not 0 <= index < len(outputs):
            raise IndexError(
                f"student {kind} outputs hold {len(outputs)} entries but layer {layer} is mapped; was the student "
                f"built with num_hidden_layers={len(outputs) + offset - 1 if kind == 'hidden' else len(outputs)}?"
            )
        return outputs[index]

    @staticmethod
    def _teacher_layer(outputs: Mapping[int, torch.Tensor] | None, layer: int, kind: str) -> torch.Tensor:
        if not outputs or layer not in outputs:
            have = sorted(outputs) if outputs else []
            raise KeyError(
                f"teacher {kind} layer {layer} is mapped but the teacher outputs hold layers {have}; ask the teacher "
                f"for FeatureDistiller.teacher_{kind}_layers"
            )
        return outputs[layer]

    def forward(
        self,
        attention_mask: torch.Tensor | None,
        *,
        student_hidden_states: LayerOutputs | None = None,
        student_attentions: LayerOutputs | None = None,
        teacher_hidden_states: Mapping[int, torch.Tensor] | None = None,
        teacher_attentions: Mapping[int, torch.Tensor] | None = None,
        student_captures: Mapping[int, Mapping[str, torch.Tensor | None]] | None = None,
        teacher_captures: Mapping[int, Mapping[str, torch.Tensor | None]] | None = None,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Feature-loss sums and counts for one micro-batch.

        Args:
            attention_mask: ``(B, S)`` 1 for real tokens, 0 for padding (None: every position counts).
            student_hidden_states: HF tuple of ``M + 1`` tensors ``(B, S, d_S)`` (index 0 = embeddings) or a dict
                layer -> tensor holding at least ``student_hidden_layers``.
            student_attentions: HF tuple of ``M`` tensors ``(B, H_S, S, S)`` (index k - 1 = layer k) or a dict
                1-based layer -> tensor.
            teacher_hidden_states: dict teacher layer -> ``(B, S, d_T)`` (``TeacherOutputs.hidden_states``).
            teacher_attentions: dict 1-based teacher layer -> ``(B, H_T, S, S)`` (``TeacherOutputs.attentions``).
            student_captures / teacher_captures: ``{layer: {"query", "key", "value", "scores", "allowed"}}`` as
                ``AttentionCapture.take()`` returns them; by default taken from the captures ``attach`` installed.
        Returns:
            ``{term: (sum, count)}`` for the enabled terms of ``FEATURE_TERMS``. ``sum`` is fp32 and differentiable
            (student + projections); ``count`` is int64, equal to ``self.counts(attention_mask)[term]``. Divide the
            window's summed ``sum`` by the window's summed ``count`` to get the mean per-item loss.
        """
        if self._captures:
            student_captures = self._captures["student"].take() if student_captures is None else student_captures
            teacher_captures = self._captures["teacher"].take() if teacher_captures is None else teacher_captures
        result: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.hidden_pairs:
            total, count = None, None
            for s_layer, t_layer in self.hidden_pairs:
                student = self._student_layer(student_hidden_states, s_layer, "hidden", offset=0)
                teacher = self._teacher_layer(teacher_hidden_states, t_layer, "hidden")
                loss, n = hidden_state_loss(
                    self.projections(student, s_layer),
                    teacher.to(student.device),
                    attention_mask,
                    kind=self.hidden_loss,
                )
                total, count = (loss, n) if total is None else (total + loss, count + n)
            result["hidden"] = (total, count)
        if self.attention_pairs and self.attention_on == "scores":
            result["attention"] = score_attention_term(
                self.attention_pairs,
                attention_mask,
                student_captures,
                teacher_captures,
                kind=self.attention_loss,
                heads=self.attention_heads,
            )
        elif self.attention_pairs:
            total, count = None, None
            for s_layer, t_layer in self.attention_pairs:
                student = self._student_layer(student_attentions, s_layer, "attention", offset=1)
                teacher = self._teacher_layer(teacher_attentions, t_layer, "attention")
                loss, n = attention_loss(
                    student,
                    teacher.to(student.device),
                    attention_mask,
                    kind=self.attention_loss,
                    heads=self.attention_heads,
                )
                total, count = (loss, n) if total is None else (total + loss, count + n)
            result["attention"] = (total, count)
        if self.relation_pairs:
            result["relation"] = relation_term(
                self.relation_pairs,
                self.relation_kinds,
                self.relation_heads,
                attention_mask,
                student_captures,
                teacher_captures,
                causal=self.causal,
                require_grad=self.training and torch.is_grad_enabled(),
            )
        if self.rkd:
            student = self._student_layer(student_hidden_states, self.num_student_layers, "hidden", offset=0)
            teacher = self._teacher_layer(teacher_hidden_states, self.num_teacher_layers, "hidden")
            result.update(rkd_terms(self.rkd, self.rkd_pooling, attention_mask, student, teacher))
        return result

    def extra_repr(self) -> str:
        return (
            f"hidden_pairs={self.hidden_pairs}, hidden_loss={self.hidden_loss}, "
            f"attention_pairs={self.attention_pairs}, attention_loss={self.attention_loss}, "
            f"attention_heads={self.attention_heads}, attention_on={self.attention_on}, "
            f"relation_pairs={self.relation_pairs}, relation_heads={self.relation_heads}, "
            f"relation_kinds={list(self.relation_kinds)}, rkd={list(self.rkd)}, rkd_pooling={self.rkd_pooling}"
        )


def feature_distiller_for(args, student_config, teacher_config, *, task: str) -> FeatureDistiller | None:
    """The ``FeatureDistiller`` a run's settings ask for (``hidden_weight``, ``attention_weight``, ``relation_weight``,
    the RKD weights, ``layer_map``, the loss kinds), or None without feature terms; built from configs alone, so that
    a layer map is checked before any weight is loaded."""
    if not args.uses_features:
        return None
    attention_map = args.layer_map
    if isinstance(attention_map, list):
        # The embedding pair (0, 0) feeds the hidden-state loss only: embeddings have no attention map.
        attention_map = [pair for pair in attention_map if 0 not in pair]
    # A classifier reads its [CLS] vector; a language model has no such token, so its samples are token means.
    pooling = (
        args.rkd_pooling if args.rkd_pooling != "auto" else ("cls" if task == "sequence_classification" else "mean")
    )
    return FeatureDistiller.from_configs(
        student_config,
        teacher_config,
        hidden_map=args.layer_map if args.hidden_weight > 0 else None,
        attention_map=attention_map if args.attention_weight > 0 else None,
        hidden_loss=args.hidden_loss,
        attention_loss=args.attention_loss,
        attention_on=args.attention_on,
        relation_map=attention_map if args.relation_weight > 0 else None,
        relation_heads=args.relation_heads,
        relation_kinds=args.relation_kinds,
        rkd=[w for w in ("distance", "angle") if getattr(args, f"rkd_{w}_weight") > 0],
        rkd_pooling=pooling,
        causal=task == "causal_lm",
    )


class StudentWithFeatures(nn.Module):
    """The student and its ``FeatureDistiller`` as one module, with the feature losses computed inside ``forward``.

    Why one module: under DDP, FSDP2 or DeepSpeed ZeRO only the parameters of the wrapped model get their gradients
    reduced (and, for ZeRO/FSDP, sharded and optimised); projections kept outside would silently drift apart
    across processes. Computing the losses in ``forward`` also keeps DDP's "every parameter used in forward"
    bookkeeping honest. Checkpoints of this module (``state_dict``) hold ``student.*`` and ``features.*``;
    the exported model is ``self.student`` alone (``save_pretrained`` delegates to it).
    """

    def __init__(self, student: nn.Module, features: FeatureDistiller):
        super().__init__()
        self.student = student
        self.features = features

    @property
    def config(self):
        return self.student.config

    def save_pretrained(self, *args, **kwargs):
        """Save the student only: projections are training state, not part of the shipped model."""
        return self.student.save_pretrained(*args, **kwargs)

    def forward(self, *, teacher_outputs=None, keep_features: bool = False, **inputs):
        """Run the student; with ``teacher_outputs`` (a ``TeacherOutputs``) also compute the feature terms.

        Returns the student's outputs as a dict with an extra ``feature_terms`` entry
        (``{term: (sum, count)}``, see ``FeatureDistiller.forward``). The student's hidden states and attention maps
        are dropped from the output unless ``keep_features`` (they can be large; the autograd graph keeps what the
        loss needs).
        """
        fd = self.features
        # Pop before the `or`: a short-circuit would leave the caller's flag in `inputs` and pass it twice.
        asked_hidden = bool(inputs.pop("output_hidden_states", False))
        asked_attn = bool(inputs.pop("output_attentions", False))
        want_hidden = fd.needs_hidden_states or asked_hidden
        want_attn = fd.needs_attentions or asked_attn
        with fd.recording_student() if teacher_outputs is not None else nullcontext():
            out = self.student(
                **inputs,
                output_hidden_states=want_hidden or None,
                output_attentions=want_attn or None,
                return_dict=True,
            )
        # A plain dict, not the model's ModelOutput: DDP flattens outputs and rebuilds them with the output class,
        # which has no field for the extra entry.
        result = dict(out)
        if teacher_outputs is not None:
            result["feature_terms"] = fd(
                inputs.get("attention_mask"),
                student_hidden_states=out.get("hidden_states"),
                student_attentions=out.get("attentions"),
                teacher_hidden_states=teacher_outputs.hidden_states,
                teacher_attentions=teacher_outputs.attentions,
            )
        if not keep_features:
            for key in ("hidden_states", "attentions"):
                result.pop(key, None)
        return result
