"""What a recipe asks the hardware for: both models' shapes, the batch, the sequence lengths and the loss path.

Everything is read from the recipe, the models' configs (``AutoConfig``; models built on the meta device) and a
length sample of the data; no weights are read. Fields that newer versions of ``DistillationConfig`` add (on-policy
generation, several teachers) are read with defaults, so a plan works before and after they exist.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig

from ..config import DistillationConfig
from ..features import FeatureDistiller
from ..losses.fused import auto_chunk_size
from ..student import shrink_config
from ..tasks import AUTO_CLASSES
from .lengths import Lengths, sample_lengths
from .models import ModelShape, checkpoint_dtype, describe, dtype_of, meta_model

DEFAULT_STORE_K = 64


@dataclass
class TeacherSpec:
    name: str
    shape: ModelShape
    attn: str | None


@dataclass
class StoreSpec:
    """Targets read from a logit store: ``width`` entries per counted token (top-k ids or sampled draws)."""

    mode: str
    width: int
    source: str


@dataclass
class OnPolicy:
    """Generation before the loss (``lmbda``: share of steps on the student's own samples)."""

    lmbda: float
    max_new_tokens: int
    seq_kd: bool


@dataclass
class RunSpec:
    source: str | None
    args: object  # the DistillationConfig
    task: str
    student: ModelShape
    student_attn: str | None
    student_lora: dict | None
    teachers: list[TeacherSpec]
    live_teacher: bool
    store: StoreSpec | None
    lengths: Lengths
    batch: int
    grad_accum: int
    precision: str  # "fp32" | "bf16" | "fp16": the compute dtype of matmuls
    autocast: bool  # mixed precision over fp32 weights (weight copies, fp32 master = the weights)
    gradient_checkpointing: bool
    chunk: int  # loss_chunk_size; 0 = materialised logits
    chunk_auto: bool = False  # loss_chunk_size 'auto': fused only where it applies (not under FSDP / ZeRO-3)
    hidden_pairs: list[tuple[int, int]] = field(default_factory=list)
    attention_pairs: list[tuple[int, int]] = field(default_factory=list)
    projection_params: int = 0
    onpolicy: OnPolicy | None = None

    @property
    def fused(self) -> bool:
        return self.task == "causal_lm" and self.chunk > 0

    @property
    def compute_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, self.student.dtype)

    @property
    def seq(self) -> int:
        """Tokens per row that memory is planned for (longest row, plus generated tokens on-policy)."""
        extra = self.onpolicy.max_new_tokens if self.onpolicy else 0
        return self.lengths.longest + extra


def task_of(args, dataset: dict) -> str:
    """The distillation task: as configured, else from the data (the rule ``llm-distill train`` applies)."""
    if args.task != "auto":
        return args.task
    return "sequence_classification" if dataset.get("task", "text") == "classification" else "causal_lm"


def _model_class(config, task: str) -> type:
    """The class ``load_model`` would instantiate for this config and task (the Auto class's mapping)."""
    return AUTO_CLASSES[task]._model_mapping[type(config)]


def _config(name: str, **kwargs):
    return AutoConfig.from_pretrained(name, **kwargs)


def _teacher_names(args, recipe) -> list[str]:
    """One or several teachers (a ``teachers:`` list of ids or ``{model_name_or_path: ...}`` blocks)."""
    many = getattr(args, "teachers", None) or getattr(recipe, "teachers", None) or recipe.config.get("teachers")
    if many:
        return [t if isinstance(t, str) else (t.get("model_name_or_path") or t.get("name")) for t in many]
    return [args.teacher_model_name_or_path] if args.teacher_model_name_or_path else []


def _student(recipe, args, task: str, teacher_config, previous_stage=None):
    spec = dict(recipe.student)
    lora = spec.get("peft")
    attn = spec.get("attn_implementation") or ("eager" if args.attention_weight > 0 else None)
    extra = {"num_labels": spec["num_labels"]} if spec.get("num_labels") is not None else {}
    if spec.get("from_teacher") is not None:
        shape = dict(spec["from_teacher"])
        init_from = shape.pop("init_from", None)
        shape.pop("layer_init", None)
        if init_from:
            source = _config(init_from, **extra)
        elif teacher_config is not None:
            source = teacher_config
        else:
            raise ValueError(
                "student.from_teacher needs a teacher config (teacher_model_name_or_path) or from_teacher.init_from"
            )
        config = shrink_config(source, **shape)
        dtype = torch.float32  # student_from_teacher builds an fp32 student whatever the teacher's dtype
        attn = attn or getattr(source, "_attn_implementation", None)
    elif spec.get("model_name_or_path"):
        path = spec["model_name_or_path"]
        if previous_stage is not None and not os.path.exists(path):
            config = copy.deepcopy(previous_stage.config)  # a later stage starts from the student the last one saves
        else:
            config = _config(path, **extra)
        want = spec.get("dtype", "auto")
        dtype = checkpoint_dtype(config) if want == "auto" else dtype_of(want)
    else:
        raise ValueError("the student block needs model_name_or_path or from_teacher")
    config._attn_implementation = attn or "sdpa"
    cls = _model_class(config, task)
    return describe(meta_model(config, cls), dtype, lora=lora), config._attn_implementation


def _store(recipe) -> StoreSpec:
    cache = recipe.cache or {}
    mode = cache.get("mode", "topk")
    if mode == "sampled":
        draws = int(cache.get("num_samples", 0) or 0)
        return StoreSpec(mode, draws or DEFAULT_STORE_K, "cache.num_samples" if draws else "assumed")
    if cache.get("k"):
        return StoreSpec("topk", int(cache["k"]), "cache.k")
    return StoreSpec("topk", DEFAULT_STORE_K, f"assumed k={DEFAULT_STORE_K} (no cache.k in the recipe)")


def _features(spec: RunSpec, teacher: ModelShape | None, args) -> None:
    if not (args.hidden_weight > 0 or args.attention_weight > 0) or teacher is None:
        return
    attention_map = args.layer_map
    if isinstance(attention_map, list):
        attention_map = [pair for pair in attention_map if 0 not in pair]  # embeddings have no attention map
    with torch.device("meta"):
        fd = FeatureDistiller.from_configs(
            spec.student.config,
            teacher.config,
            hidden_map=args.layer_map if args.hidden_weight > 0 else None,
            attention_map=attention_map if args.attention_weight > 0 else None,
            hidden_loss=args.hidden_loss,
            attention_loss=args.attention_loss,
        )
    spec.hidden_pairs, spec.attention_pairs = list(fd.hidden_pairs), list(fd.attention_pairs)
    spec.projection_params = sum(p.numel() for p in fd.parameters())


def planning_args(recipe):
    """The recipe's ``DistillationConfig``, validated as ``train`` validates it, but built as for a CPU so that a
    GPU recipe (``bf16: true``, ``fp16: true``) can be planned on a machine without one; the precision is read from
    the recipe itself (``precision_of``)."""
    return DistillationConfig(**{**recipe.config, "use_cpu": True, "bf16": False, "fp16": False})


def precision_of(recipe) -> str:
    config = recipe.config
    return "bf16" if config.get("bf16") else "fp16" if config.get("fp16") else "fp32"


def run_spec(recipe, *, lengths: Lengths | None = None, previous_stage: ModelShape | None = None) -> RunSpec:
    """Read a recipe (one stage) into a ``RunSpec``; ``lengths`` skips the data sample (tests, batch searches);
    ``previous_stage``: the student of the stage before, which this stage loads once that stage has saved it."""
    args = planning_args(recipe)
    task = task_of(args, recipe.dataset)
    names = _teacher_names(args, recipe)
    live = bool(names) and not args.teacher_logits_path
    attn_teacher = "eager" if args.attention_weight > 0 else "sdpa"
    teachers = []
    for name in names:
        config = _config(name)
        dtype = checkpoint_dtype(config) if args.teacher_dtype == "auto" else dtype_of(args.teacher_dtype)
        config._attn_implementation = attn_teacher
        teachers.append(
            TeacherSpec(name, describe(meta_model(config, _model_class(config, task)), dtype), attn_teacher)
        )
    teacher_config = teachers[0].shape.config if teachers else None
    student, student_attn = _student(recipe, args, task, teacher_config, previous_stage)
    precision = precision_of(recipe)
    autocast = precision != "fp32" and student.dtype == torch.float32
    if precision == "fp32" and student.dtype in (torch.bfloat16, torch.float16):
        precision = "bf16" if student.dtype == torch.bfloat16 else "fp16"
    source = recipe.student.get("model_name_or_path") or (recipe.student.get("from_teacher") or {}).get("init_from")
    if source and previous_stage is not None and not os.path.exists(source):
        source = None  # the previous stage's output, not written yet: the teacher's tokenizer is the same one
    source = source or (names[0] if names else None)
    batch = int(args.per_device_train_batch_size)
    if lengths is None:
        lengths = sample_lengths(recipe.dataset, source, batch) if recipe.dataset else None
    if lengths is None:
        raise ValueError("the recipe has no dataset block: the plan needs dataset.max_length at least")
    lmbda = float(getattr(args, "lmbda", 0.0) or 0.0)
    onpolicy = None
    if lmbda > 0 or getattr(args, "seq_kd", False):
        onpolicy = OnPolicy(lmbda, int(getattr(args, "max_new_tokens", 128) or 128), bool(getattr(args, "seq_kd", 0)))
    spec = RunSpec(
        source=recipe.source,
        args=args,
        task=task,
        student=student,
        student_attn=student_attn,
        student_lora=recipe.student.get("peft") or None,
        teachers=teachers if live else [],
        live_teacher=live,
        store=_store(recipe) if args.teacher_logits_path else None,
        lengths=lengths,
        batch=batch,
        grad_accum=int(args.gradient_accumulation_steps),
        precision=precision,
        autocast=autocast,
        gradient_checkpointing=bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing),
        chunk=resolved_chunk(args.loss_chunk_size, task, student.vocab, recipe.student.get("peft")),
        chunk_auto=args.loss_chunk_size == "auto",
        onpolicy=onpolicy,
    )
    _features(spec, teachers[0].shape if teachers else None, args)
    return spec


def resolved_chunk(setting, task: str, vocab: int | None, peft: dict | None) -> int:
    """``loss_chunk_size`` as the trainer resolves it: 'auto' fuses causal LMs whose lm_head is a plain linear layer
    (no LoRA or modules_to_save on it), with the chunk sized to the vocabulary; a number is taken as given."""
    if setting != "auto":
        return int(setting)
    head_adapted = any(
        str(n).split(".")[-1] == "lm_head"
        for key in ("target_modules", "modules_to_save")
        for n in (
            [] if not peft or peft.get(key) is None else [peft[key]] if isinstance(peft[key], str) else peft[key]
        )
    )
    if task != "causal_lm" or not vocab or head_adapted:
        return 0
    return auto_chunk_size(vocab)
