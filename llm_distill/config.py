"""DistillationConfig: every distillation knob, on top of transformers.TrainingArguments."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .checks import check_choice, check_non_negative
from .losses.cross_vocab import CROSS_VOCAB_LOSSES
from .losses.divergences import DIVERGENCE_KINDS, check_kind, check_temperature
from .losses.features import ATTENTION_LOSS_KINDS, HIDDEN_LOSS_KINDS
from .losses.relations import POOLINGS, RELATION_KINDS
from .onpolicy.generation import check_sampling
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
# Who teaches (see docs/architecture.md, "Who teaches"): the closed choices of that section's fields.
MULTI_TEACHER_MODES = ("mixture", "sum")
SELF_TEACHERS = ("frozen", "ema", "live", "lora_base")
ONLINE_MODES = ("mutual", "co_train")
TEACHER_SPEC_KEYS = ("path", "logits_path", "weight", "name")


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

    # --- who teaches: several teachers, self-distillation, online distillation ------------------------------
    teachers: list | None = field(
        default=None,
        metadata={
            "help": "Several teachers: a list of paths/ids, or of {path | logits_path, weight, name} (weight 1 and "
            "the folder name by default). Weights are normalised to sum to 1. Replaces teacher_model_name_or_path."
        },
    )
    multi_teacher: str = field(
        default="mixture",
        metadata={
            "help": "How several teachers combine: mixture (one target, the weighted mixture of their tempered "
            "distributions; live teachers) or sum (the weighted sum of one divergence per teacher)."
        },
    )
    teacher_column: str | None = field(
        default=None,
        metadata={
            "help": "Dataset column naming each row's teacher (a teacher name or its 0-based index in teachers): "
            "every row is distilled from its own teacher only."
        },
    )
    self_teacher: str | None = field(
        default=None,
        metadata={
            "help": "The student teaches itself: frozen (a copy of the student at the start), ema (an exponential "
            "moving average of the student, see ema_decay), live (the current weights, no gradient, no copy) or "
            "lora_base (a LoRA student's base model with its adapters disabled, no copy)."
        },
    )
    ema_decay: float = field(
        default=0.999,
        metadata={
            "help": "self_teacher=ema: after each optimizer step teacher = decay * teacher + (1 - decay) * student "
            "(1 = the frozen initial copy, 0 = the current student)."
        },
    )
    teacher_prompt: str | None = field(
        default=None,
        metadata={
            "help": "Context distillation: the teacher sees this prompt instead of the student's, a template over "
            "the dataset's columns (e.g. '{prompt}\\nReference answer: {response}\\n'), and scores the same "
            "completion tokens. Instruction datasets only."
        },
    )
    generations: int = field(
        default=1,
        metadata={
            "help": "Born-again distillation: train this many students of the same shape in sequence, each "
            "teaching the next (OUTPUT_DIR/gen1, gen2, ...; metrics in OUTPUT_DIR/generations.json)."
        },
    )
    online_distillation: str | None = field(
        default=None,
        metadata={
            "help": "Models trained together in one run: mutual (deep mutual learning, num_peers students, each "
            "with its CE plus the divergence to the others' detached predictions) or co_train (the teacher is "
            "fine-tuned on its own CE while the student distils from it)."
        },
    )
    num_peers: int = field(
        default=2, metadata={"help": "online_distillation=mutual: the number of students trained together (>= 2)."}
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

    # ---- a teacher with another tokenizer -----------------------------------------------------------------------
    cross_tokenizer_loss: str | None = field(
        default=None,
        metadata={
            "help": "Distil from a teacher whose tokenizer differs from the student's: the same raw text is tokenized "
            "by both and compared where both predict the next token after the same characters, with "
            f"{' | '.join(CROSS_VOCAB_LOSSES)} (see llm_distill.losses.cross_vocab). Causal LMs, live teacher. When "
            "the two tokenizers are the same, the ordinary loss runs."
        },
    )
    teacher_tokenizer: str | None = field(
        default=None,
        metadata={"help": "The teacher's tokenizer (a path or hub id) for cross_tokenizer_loss; default: the one "
                  "saved with teacher_model_name_or_path."},
    )  # fmt: skip
    cross_tokenizer_exact_weight: float = field(
        default=1.0, metadata={"help": "cross_tokenizer_loss=hybrid: weight of the exact-map divergence (>= 0)."}
    )
    cross_tokenizer_uld_weight: float = field(
        default=1.0, metadata={"help": "cross_tokenizer_loss=hybrid: weight of ULD on the unmatched mass (>= 0)."}
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
        self._check_who_teaches()
        self._check_generation()
        self._check_relations_and_selection()
        self._check_cross_tokenizer()

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

    def _check_who_teaches(self) -> None:
        """The "who teaches" section: one regime at a time, each with what it needs."""
        check_choice("multi_teacher", self.multi_teacher, MULTI_TEACHER_MODES)
        if self.self_teacher is not None:
            check_choice("self_teacher", self.self_teacher, SELF_TEACHERS)
        if self.online_distillation is not None:
            check_choice("online_distillation", self.online_distillation, ONLINE_MODES)
        if not (isinstance(self.ema_decay, int | float) and 0.0 <= self.ema_decay <= 1.0):
            raise ValueError(f"ema_decay={self.ema_decay!r} is not accepted; use a number in [0, 1]")
        if not isinstance(self.generations, int) or self.generations < 1:
            raise ValueError(f"generations={self.generations!r} is not accepted; use an integer >= 1")
        if not isinstance(self.num_peers, int) or self.num_peers < 2:
            raise ValueError(f"num_peers={self.num_peers!r} is not accepted; mutual learning needs >= 2 students")
        if self.teachers is not None:
            self.teachers = normalize_teacher_specs(self.teachers)
        single = [n for n in ("teacher_model_name_or_path", "teacher_logits_path") if getattr(self, n)]
        regimes = {
            "teachers": self.teachers is not None,
            "self_teacher": self.self_teacher is not None,
            "online_distillation": self.online_distillation is not None,
        }
        chosen = [name for name, on in regimes.items() if on]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} are both set; choose one source of teaching")
        if chosen and chosen[0] in ("teachers", "self_teacher") and single:
            raise ValueError(f"{chosen[0]} and {single[0]} are both set; keep one (the {chosen[0]} replace it)")
        if self.teachers is not None and self.uses_features:
            raise ValueError(
                "teachers gives several output distributions; hidden_weight/attention_weight need one teacher's "
                "layers: set both to 0 or use teacher_model_name_or_path"
            )
        if self.teacher_column is not None and self.teachers is None:
            raise ValueError(f"teacher_column={self.teacher_column!r} routes rows among teachers: set teachers too")
        if self.teachers is not None and self.multi_teacher == "mixture" and self.teacher_column is None:
            cached = [t["name"] for t in self.teachers if t["logits_path"]]
            if cached:
                raise ValueError(
                    f"multi_teacher='mixture' mixes dense distributions, but teachers {cached} are logit stores "
                    "(top-k): use multi_teacher='sum' with them"
                )
        if self.teacher_prompt is not None and (self.uses_features or not isinstance(self.teacher_prompt, str)):
            raise ValueError(
                f"teacher_prompt={self.teacher_prompt!r} is not accepted with hidden_weight/attention_weight > 0 "
                "(the teacher's sequence is not the student's); use a string template and logit terms only"
            )
        if self.online_distillation is not None:
            fused = isinstance(self.loss_chunk_size, int) and self.loss_chunk_size > 0
            if self.teacher_logits_path or self.teacher_prompt or self.uses_features or fused:
                raise ValueError(
                    f"online_distillation={self.online_distillation!r} trains every model on full logits: unset "
                    "teacher_logits_path, teacher_prompt, hidden_weight/attention_weight and loss_chunk_size"
                )
            if self.generates or self.data_selection is not None:
                raise ValueError(
                    f"online_distillation={self.online_distillation!r} trains on the dataset's tokens as they are: "
                    "unset lmbda / seq_kd and data_selection"
                )
            if self.online_distillation == "co_train" and not self.teacher_model_name_or_path:
                raise ValueError(
                    "online_distillation='co_train' fine-tunes a teacher in the run: set teacher_model_name_or_path"
                )

    def _check_cross_tokenizer(self) -> None:
        for name in ("cross_tokenizer_exact_weight", "cross_tokenizer_uld_weight"):
            check_non_negative(name, getattr(self, name), what="a loss weight")
        if self.cross_tokenizer_loss is None:
            if self.teacher_tokenizer is not None:
                raise ValueError(
                    f"teacher_tokenizer={self.teacher_tokenizer!r} is set without cross_tokenizer_loss; set "
                    f"cross_tokenizer_loss to one of {', '.join(CROSS_VOCAB_LOSSES)}, or unset teacher_tokenizer"
                )
            return
        check_choice("cross_tokenizer_loss", self.cross_tokenizer_loss, CROSS_VOCAB_LOSSES)
        if (
            self.cross_tokenizer_loss == "hybrid"
            and self.cross_tokenizer_exact_weight == self.cross_tokenizer_uld_weight == 0
        ):
            raise ValueError(
                "cross_tokenizer_loss='hybrid' with cross_tokenizer_exact_weight=0 and cross_tokenizer_uld_weight=0 "
                "distils nothing; set at least one > 0"
            )
        what = f"cross_tokenizer_loss={self.cross_tokenizer_loss!r}"
        if self.task not in ("auto", "causal_lm"):
            raise ValueError(f"{what} compares next-token distributions: it needs task=causal_lm (or auto)")
        if self.teacher_logits_path:
            raise ValueError(
                f"{what} needs a live teacher that reads its own tokenization of the text, but teacher_logits_path="
                f"{self.teacher_logits_path!r} is a store of targets for the student's tokens; use "
                "teacher_model_name_or_path"
            )
        conflicts = {
            "teachers": bool(self.teachers),
            "self_teacher": self.self_teacher is not None,
            "online_distillation": self.online_distillation is not None,
            "teacher_prompt": self.teacher_prompt is not None,
            "hidden/attention/relation/RKD weights": self.uses_features,
            "lmbda/seq_kd": self.generates,
            "data_selection": self.data_selection is not None,
        }
        refused = [name for name, on in conflicts.items() if on]
        if refused:
            raise ValueError(
                f"{what} is not supported together with {', '.join(refused)}: the teacher reads another "
                "tokenization, so only the logit terms are aligned; unset them"
            )
        if isinstance(self.loss_chunk_size, int) and self.loss_chunk_size > 0:
            raise ValueError(
                f"{what} with loss_chunk_size={self.loss_chunk_size}: the fused loss is not available across "
                "vocabularies (ULD sorts each full distribution); set loss_chunk_size=0 or 'auto'"
            )

    def check_precision(self) -> None:
        """fp16 mixed precision needs a CUDA GPU; on a CPU transformers would silently train in fp32."""
        if self.fp16 and (self.use_cpu or not torch.cuda.is_available()):
            raise ValueError(
                "fp16=True needs a CUDA GPU, but this run is on the CPU (no GPU found, or use_cpu=True); drop fp16, "
                "or use bf16=True (CPU autocast supports bfloat16)"
            )

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

    @property
    def generates(self) -> bool:
        """Some optimizer steps train on generated completions (on-policy or sequence-level KD on the fly)."""
        return self.lmbda > 0 or self.seq_kd


def normalize_teacher_specs(value) -> list[dict]:
    """``teachers`` as a list of ``{name, path, logits_path, weight}`` (weights as given; sources normalise them)."""
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"teachers={value!r} is not accepted; give a non-empty list of paths or {{path, weight}}")
    specs = []
    for i, entry in enumerate(value):
        spec = {"path": entry} if isinstance(entry, str) else entry
        if not isinstance(spec, dict):
            raise ValueError(
                f"teachers[{i}]={entry!r} is not accepted; use a path or a mapping of {TEACHER_SPEC_KEYS}"
            )
        unknown = sorted(set(spec) - set(TEACHER_SPEC_KEYS))
        if unknown:
            raise ValueError(f"teachers[{i}] has unknown key(s) {unknown}; accepted: {', '.join(TEACHER_SPEC_KEYS)}")
        path, logits_path = spec.get("path"), spec.get("logits_path")
        if bool(path) == bool(logits_path):
            raise ValueError(f"teachers[{i}]={entry!r} needs exactly one of path (a live model) or logits_path")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < float("inf"):
            raise ValueError(f"teachers[{i}].weight={weight!r} is not accepted; use a number > 0")
        name = spec.get("name") or os.path.basename(os.path.normpath(str(path or logits_path)))
        specs.append({"name": str(name), "path": path, "logits_path": logits_path, "weight": float(weight)})
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"teachers have the same name twice ({names}); give each a distinct name")
    return specs
