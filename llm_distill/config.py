"""DistillationConfig: every distillation knob, on top of transformers.TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .checks import check_choice, check_non_negative
from .losses.divergences import DIVERGENCE_KINDS, check_kind, check_temperature
from .losses.features import ATTENTION_LOSS_KINDS, HIDDEN_LOSS_KINDS
from .tasks import DTYPES, TASKS

LOSS_WEIGHTS = ("kd_weight", "ce_weight", "hidden_weight", "attention_weight")


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
    loss_chunk_size: int | str = field(
        default="auto",
        metadata={
            "help": "Fused lm_head + divergence for causal LMs (the student's B x S x V logits are never made): "
            "'auto' (default) uses it wherever it applies, with a chunk sized to the vocabulary, and says in the log "
            "when it does not apply; a number sets the tokens per chunk (an error where it cannot apply); 0 turns it "
            "off and materialises full logits."
        },
    )
    # --- run management ----------------------------------------------------------------------------------------
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace a run of another recipe (or a finished one) in output_dir: its checkpoints are deleted "
            "and training starts from scratch. Without it such an output_dir is refused."
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
            check_non_negative(name, getattr(self, name), what="a loss weight")
        if all(getattr(self, name) == 0 for name in LOSS_WEIGHTS):
            raise ValueError(
                f"all loss weights are 0 ({', '.join(f'{n}=0' for n in LOSS_WEIGHTS)}); set at least one > 0, "
                "e.g. kd_weight=1.0"
            )
        if self.loss_chunk_size != "auto" and not (
            isinstance(self.loss_chunk_size, int)
            and not isinstance(self.loss_chunk_size, bool)
            and self.loss_chunk_size >= 0
        ):
            raise ValueError(
                f"loss_chunk_size={self.loss_chunk_size!r} is not accepted; use 'auto', 0 (off) or a token count"
            )
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            raise ValueError(
                f"max_steps={self.max_steps} with num_train_epochs={self.num_train_epochs} trains for zero steps; set "
                "max_steps > 0 or num_train_epochs > 0 (a student saved without training is not distilled)"
            )
        if self.teacher_logits_path and (self.hidden_weight > 0 or self.attention_weight > 0):
            raise ValueError(
                f"teacher_logits_path={self.teacher_logits_path!r} stores logits only, but hidden_weight="
                f"{self.hidden_weight} / attention_weight={self.attention_weight} need a live teacher's features; "
                "set both to 0 or use teacher_model_name_or_path"
            )

    def check_precision(self) -> None:
        """fp16 mixed precision needs a CUDA GPU; on a CPU transformers would silently train in fp32."""
        if self.fp16 and (self.use_cpu or not torch.cuda.is_available()):
            raise ValueError(
                "fp16=True needs a CUDA GPU, but this run is on the CPU (no GPU found, or use_cpu=True); drop fp16, "
                "or use bf16=True (CPU autocast supports bfloat16)"
            )

    @property
    def uses_features(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0
