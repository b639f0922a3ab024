"""DistillationConfig: every distillation knob, on top of transformers.TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .checks import check_choice
from .losses.divergences import DIVERGENCE_KINDS, check_kind, check_temperature
from .losses.features import ATTENTION_LOSS_KINDS, HIDDEN_LOSS_KINDS
from .losses.relations import POOLINGS, RELATION_KINDS
from .selection.spec import DataSelection
from .tasks import DTYPES, TASKS

LOSS_WEIGHTS = (
    "kd_weight",
    "ce_weight",
    "hidden_weight",
    "attention_weight",
    "relation_weight",
    "rkd_distance_weight",
    "rkd_angle_weight",
)


@dataclass
class DistillationConfig(TrainingArguments):
    """Training arguments for :class:`~llm_distill.DistillationTrainer`.

    All of ``TrainingArguments`` plus the teacher, the loss terms and their weights. The total loss is
    ``kd_weight * KD + ce_weight * CE + hidden_weight * hidden + attention_weight * attention``, each term
    normalised by the number of tokens it counts over the whole gradient-accumulation window and all processes.
    """

    # --- teacher -------------------------------------------------------------------------------------------
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder of the teacher (ignored when a model is passed to the trainer)."},
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "Dtype the teacher is loaded in: auto (its checkpoint's dtype), float32, bfloat16 or float16. "
            "Losses are always computed in float32."
        },
    )
    teacher_logits_path: str | None = field(
        default=None,
        metadata={
            "help": "Folder of precomputed teacher logits (`llm-distill cache-logits`); replaces a live teacher."
        },
    )
    task: str = field(
        default="auto",
        metadata={
            "help": "What is distilled: causal_lm (shifted token KD), masked_lm (masked positions), "
            "sequence_classification (class logits); auto infers it from the student's class or the dataset kind."
        },
    )
    # --- logit distillation ----------------------------------------------------------------------------------
    kd_loss: str = field(
        default="forward_kl",
        metadata={"help": f"Divergence between teacher and student distributions: {', '.join(DIVERGENCE_KINDS)}."},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature T applied to both teacher and student logits (> 0)."}
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={
            "help": "Mixing coefficient in [0, 1] for jsd (0 = forward KL, 1 = reverse KL, as in TRL's GKD) and "
            "the skew coefficient for skew_kl / skew_rkl."
        },
    )
    scale_by_t2: bool = field(
        default=True,
        metadata={
            "help": "Multiply the KD term by T^2 (Hinton et al.) so its gradient scale does not shrink as T grows."
        },
    )
    kd_weight: float = field(default=1.0, metadata={"help": "Weight of the logit distillation term (>= 0)."})
    ce_weight: float = field(default=0.0, metadata={"help": "Weight of the hard-label cross-entropy term (>= 0)."})
    # --- feature distillation --------------------------------------------------------------------------------
    hidden_weight: float = field(
        default=0.0, metadata={"help": "Weight of the hidden-state loss between mapped layers (>= 0)."}
    )
    attention_weight: float = field(
        default=0.0, metadata={"help": "Weight of the attention-map loss between mapped layers (>= 0)."}
    )
    layer_map: str | list = field(
        default="uniform",
        metadata={
            "help": "Student-to-teacher layer pairs for hidden/attention losses: uniform, last, or an explicit "
            "list [[student, teacher], ...] (0 = embedding output, used by the hidden-state loss only)."
        },
    )
    hidden_loss: str = field(default="mse", metadata={"help": f"Hidden-state loss: {', '.join(HIDDEN_LOSS_KINDS)}."})
    attention_loss: str = field(
        default="kl",
        metadata={"help": f"Attention-map loss: {', '.join(ATTENTION_LOSS_KINDS)} (kl is MiniLM-style)."},
    )
    # --- performance -----------------------------------------------------------------------------------------
    loss_chunk_size: int = field(
        default=0,
        metadata={
            "help": "Tokens per chunk for the fused lm_head + divergence (causal LMs); 0 turns it off and "
            "materialises full logits."
        },
    )
    # --- relation knowledge and data selection ---------------------------------------------------------------
    # MiniLMv2 self-attention relations, the attention term on pre-softmax scores, RKD between the samples of a
    # micro-batch (features/relational.py), and teacher-guided selection of the rows or tokens trained on
    # (selection/). Relation and score terms use layer_map's block pairs, like the attention term.
    attention_on: str = field(
        default="probs",
        metadata={
            "help": "What the attention term compares: probs (the attention maps) or scores (pre-softmax QK^T * "
            "scaling at the positions the models' own masks allow, as in TinyBERT; attention_loss mse or kl)."
        },
    )
    relation_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the MiniLMv2 self-attention relation term (KL between teacher and student "
            "Q-Q / K-K / V-V relations of mapped layers, on real tokens; no projection) (>= 0)."
        },
    )
    relation_heads: int = field(
        default=12,
        metadata={
            "help": "Relation heads the concatenated query/key/value projections of a layer are split into; must "
            "divide every such width of both models (teacher and student need not share head counts or width)."
        },
    )
    relation_kinds: list = field(
        default_factory=lambda: list(RELATION_KINDS),
        metadata={"help": f"Which relations: any of {', '.join(RELATION_KINDS)} (Q-Q, K-K, V-V as in MiniLMv2)."},
    )
    rkd_distance_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the RKD distance-wise term between the pooled samples of each micro-batch (Park et "
            "al. use 1.0) (>= 0)."
        },
    )
    rkd_angle_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the RKD angle-wise term (Park et al. use 2.0) (>= 0)."},
    )
    rkd_pooling: str = field(
        default="auto",
        metadata={
            "help": "One vector per sample for RKD, from the last layer: cls (first real token), mean (mean of real "
            "tokens), auto (cls for sequence classification, mean otherwise)."
        },
    )
    data_selection: dict | None = field(
        default=None,
        metadata={
            "help": "Teacher-guided data selection, a mapping: score (teacher_nll | teacher_entropy | excess_loss), "
            "level (sample | token), keep (fraction in (0, 1]), optional keep_highest, scores_path, batch_size."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_kind(self.kd_loss, self.jsd_beta, kind_field="kd_loss", beta_field="jsd_beta")
        check_choice("teacher_dtype", self.teacher_dtype, DTYPES)
        check_choice("task", self.task, ("auto", *TASKS))
        check_choice("hidden_loss", self.hidden_loss, HIDDEN_LOSS_KINDS)
        check_choice("attention_loss", self.attention_loss, ATTENTION_LOSS_KINDS)
        check_temperature(self.temperature)
        for name in LOSS_WEIGHTS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is not accepted; loss weights must be >= 0")
        if all(getattr(self, name) == 0 for name in LOSS_WEIGHTS):
            raise ValueError(
                f"all loss weights are 0 ({', '.join(f'{n}=0' for n in LOSS_WEIGHTS)}); set at least one > 0, "
                "e.g. kd_weight=1.0"
            )
        if self.loss_chunk_size < 0:
            raise ValueError(f"loss_chunk_size={self.loss_chunk_size} is not accepted; use 0 (off) or a token count")
        if self.teacher_logits_path and (self.hidden_weight > 0 or self.attention_weight > 0):
            raise ValueError(
                f"teacher_logits_path={self.teacher_logits_path!r} stores logits only, but hidden_weight="
                f"{self.hidden_weight} / attention_weight={self.attention_weight} need a live teacher's features; "
                "set both to 0 or use teacher_model_name_or_path"
            )

        self._check_relations_and_selection()

    def _check_relations_and_selection(self) -> None:
        check_choice("attention_on", self.attention_on, ("probs", "scores"))
        check_choice("rkd_pooling", self.rkd_pooling, ("auto", *POOLINGS))
        if (
            isinstance(self.relation_heads, bool)
            or not isinstance(self.relation_heads, int)
            or self.relation_heads < 1
        ):
            raise ValueError(f"relation_heads={self.relation_heads!r} is not accepted; it must be an int >= 1")
        if not isinstance(self.relation_kinds, list | tuple) or not self.relation_kinds:
            raise ValueError(f"relation_kinds={self.relation_kinds!r} is not accepted; list any of {RELATION_KINDS}")
        for kind in self.relation_kinds:
            check_choice("relation_kinds", kind, RELATION_KINDS)
        selection = DataSelection.parse(self.data_selection)
        if self.teacher_logits_path and selection is not None and selection.level == "token":
            raise ValueError(
                f"data_selection.level='token' scores every token with the teacher's full distribution, which "
                f"teacher_logits_path={self.teacher_logits_path!r} (top-k) does not hold; use a live teacher or "
                "level: sample"
            )
        relational = {k: getattr(self, k) for k in ("relation_weight", "rkd_distance_weight", "rkd_angle_weight")}
        if self.teacher_logits_path and any(relational.values()):
            raise ValueError(
                f"teacher_logits_path={self.teacher_logits_path!r} stores logits only, but "
                f"{', '.join(f'{k}={v}' for k, v in relational.items() if v)} need a live teacher's features; set "
                "them to 0 or use teacher_model_name_or_path"
            )

    @property
    def selection(self) -> DataSelection | None:
        """``data_selection`` parsed and validated (None when off)."""
        return DataSelection.parse(self.data_selection)

    @property
    def uses_features(self) -> bool:
        return any(
            getattr(self, name) > 0
            for name in (
                "hidden_weight",
                "attention_weight",
                "relation_weight",
                "rkd_distance_weight",
                "rkd_angle_weight",
            )
        )
