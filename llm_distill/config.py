"""DistillationConfig: every distillation knob, on top of transformers.TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .checks import check_choice
from .losses.divergences import DIVERGENCE_KINDS, check_kind, check_temperature
from .losses.features import ATTENTION_LOSS_KINDS, HIDDEN_LOSS_KINDS
from .onpolicy.generation import check_sampling
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
    loss_chunk_size: int = field(
        default=0,
        metadata={
            "help": "Tokens per chunk for the fused lm_head + divergence (causal LMs); 0 turns it off and "
            "materialises full logits."
        },
    )

    # --- on-policy distillation and sequence-level KD (named as in TRL's GKD) --------------------------------
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "Fraction in [0, 1] of optimizer steps trained on completions the student samples itself "
            "(GKD's lambda): 0 = off-policy on the dataset's completions, 1 = fully on-policy. Which steps is decided "
            "from the seed and the step, the same on every process and after a resume. Causal LMs, live teacher."
        },
    )
    seq_kd: bool = field(
        default=False,
        metadata={
            "help": "Sequence-level KD on the fly: the steps that are not on-policy train on completions the teacher "
            "samples (with the settings below) instead of the dataset's. `llm-distill generate` writes them once."
        },
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "Most tokens a generated completion has (it ends earlier at EOS)."}
    )
    generation_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature of generated completions (0 = greedy). Separate from `temperature`, "
            "which softens both distributions in the loss."
        },
    )
    top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1] for generated completions (1 = off)."}
    )
    top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens only (0 = off)."})

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
        self._check_generation()

    def _check_generation(self) -> None:
        if not isinstance(self.lmbda, int | float) or isinstance(self.lmbda, bool) or not 0 <= self.lmbda <= 1:
            raise ValueError(f"lmbda={self.lmbda!r} is not accepted; use a fraction of steps in [0, 1] (0 = off)")
        check_sampling(self.max_new_tokens, self.generation_temperature, self.top_p, self.top_k)
        if not self.generates:
            return
        what = f"lmbda={self.lmbda}" if self.lmbda > 0 else "seq_kd=True"
        if self.teacher_logits_path:
            raise ValueError(
                f"{what} needs a live teacher to score newly generated text, but teacher_logits_path="
                f"{self.teacher_logits_path!r} is a store of logits for fixed text; use teacher_model_name_or_path, "
                "or set lmbda=0 and seq_kd=false (`llm-distill generate` writes teacher completions once)"
            )
        if self.task not in ("auto", "causal_lm"):
            raise ValueError(f"{what} generates text and needs task=causal_lm (or auto), got task={self.task!r}")

    @property
    def uses_features(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0

    @property
    def generates(self) -> bool:
        """Some optimizer steps train on generated completions (on-policy or sequence-level KD on the fly)."""
        return self.lmbda > 0 or self.seq_kd
