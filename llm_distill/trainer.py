"""DistillationTrainer: transformers.Trainer with a teacher and a sum of weighted distillation terms."""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from collections import defaultdict

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.utils import find_labels

from ._requirements import check_trainer
from ._version import __version__
from .config import DistillationConfig
from .data import DistillationCollator
from .features import (
    FEATURE_TERMS,
    FeatureDistiller,
    StudentWithFeatures,
    feature_distiller_for,
    prepare_for_feature_distillation,
)
from .guards import NonFiniteGuards
from .losses.divergences import hard_ce
from .losses.terms import cross_vocab_terms, dense_logit_terms, fused_logit_terms
from .onpolicy import OnPolicySteps, kd_is_sample_kl, sample_reverse_kl
from .saving import StudentSaving
from .selection.tokens import SUM_KEYS as SELECTION_SUM_KEYS
from .selection.tokens import TokenSelection, selection_logs
from .tasks import infer_task, load_model, real_token_mask, targets
from .teacher import (
    TEACHER_BATCH_KEYS,
    TeacherOutputs,
    TeacherPart,
    TrainedTeacherSource,
    build_teacher_source,
    model_inputs,
    no_logits,
)
from .vocab import VocabMap, build_exact_map, check_tokenizers, gather_positions, same_vocabulary, shared_vocab_size

logger = logging.getLogger(__name__)
check_trainer(Trainer)

# Per-batch sums, reduced and divided in log(): exact token-weighted averages, across processes too.
SUM_KEYS = (
    "kd",
    "ce",
    "agree",
    "tokens",
    "kd_items",
    *(key for term in FEATURE_TERMS for key in (term, f"{term}_tokens")),
    *SELECTION_SUM_KEYS,
)
# What each loss term is divided by: the window count of its own kind of item (a feature term's weight is the
# config field f"{term}_weight"). KD counts counted tokens, or aligned positions for a teacher with another
# tokenizer; CE counts counted tokens.
COUNT_KEYS = ("kd_tokens", "ce_tokens", *FEATURE_TERMS)


class DistillationTrainer(StudentSaving, NonFiniteGuards, Trainer):
    """Train a student against a frozen teacher.

    ``loss = kd_weight * KD + ce_weight * CE + hidden_weight * hidden + attention_weight * attention``, where each
    term is a sum over its counted tokens divided by the number of such tokens in the whole gradient-accumulation
    window on all processes, so that batch 8 x accumulation 1 and batch 4 x accumulation 2 (or 2 processes x batch
    4) produce the same update. KD/CE count labelled target positions; feature terms count real tokens x mapped
    layers.

    With ``lmbda > 0`` (or ``seq_kd``) some optimizer steps train on completions generated for the window's prompts
    (``onpolicy.OnPolicySteps``, called from ``get_batch_samples`` before the window is counted).

    With hidden/attention terms, ``self.model`` is a ``StudentWithFeatures`` holding the student and the
    projections: the optimizer, checkpoints and distributed wrappers see the projections, while ``save_model``
    exports the student alone.
    """

    # compute_loss divides by the window's token count itself; Trainer must not divide by the number of steps.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | None = None,
        args: DistillationConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        teacher_processing_class=None,
        **kwargs,
    ):
        if args is None:
            raise ValueError("args is required: pass a DistillationConfig(output_dir=..., ...)")
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, got {type(args).__name__}")
        args.check_precision()
        if isinstance(model, str):
            if args.task == "auto":
                raise ValueError(f"model={model!r} is a name; set task so the right Auto class loads it")
            model = load_model(model, args.task)
        self.task = args.task if args.task != "auto" else infer_task(model)
        # A teacher with another tokenizer (cross_tokenizer_loss): the exact map between the two vocabularies.
        self.vocab_map = self._cross_tokenizer_map(args, processing_class, teacher_processing_class)
        self._teacher_ids_of: torch.Tensor | None = None  # the map as a lookup table, built at the first step
        self.teacher = build_teacher_source(
            teacher_model,
            args,
            task=self.task,
            tokenizer=processing_class,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            student=model,
            teacher_tokenizer=teacher_processing_class if self.vocab_map is not None else None,
        )
        self.features: FeatureDistiller | None = None
        # Token-level data selection narrows the KD/CE counted tokens; None without it (or at the sample level).
        self.selection = TokenSelection.from_args(args, self.task)
        if args.uses_features:
            model = self._wrap_with_features(model, args)
        if data_collator is None and processing_class is not None and hasattr(processing_class, "pad_token_id"):
            data_collator = DistillationCollator(processing_class)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        if self.features is not None and args.label_names is None:
            # Trainer finds label names in the model's forward signature; the wrapper's is **inputs.
            self.label_names = find_labels(type(self.student))
        self.kd_vocab_size = None
        if self.vocab_map is None:
            check_tokenizers(teacher_processing_class, processing_class)
            self.kd_vocab_size = shared_vocab_size(
                self.teacher.output_width(self.task),
                getattr(self.student, "config", None),
                processing_class,
                self.task,
            )
        self.fused = self._decide_fused()
        self.teacher.place(self.accelerator, self.args.device)
        self._metrics = {"train": defaultdict(float), "eval": defaultdict(float)}
        if isinstance(self.teacher, TrainedTeacherSource):
            self.add_callback(TeacherStepCallback(self))
        self.onpolicy = self._build_onpolicy(processing_class) if args.generates else None

    # ---- setup ------------------------------------------------------------------------------------------------

    def _cross_tokenizer_map(self, args: DistillationConfig, tokenizer, teacher_tokenizer) -> VocabMap | None:
        """The exact map between the student's and the teacher's vocabularies, or None when one vocabulary serves
        both (no cross_tokenizer_loss, or two identical tokenizers: the ordinary loss then runs, at no cost)."""
        if args.cross_tokenizer_loss is None:
            return None
        if tokenizer is None or teacher_tokenizer is None:
            raise ValueError(
                f"cross_tokenizer_loss={args.cross_tokenizer_loss!r} needs both tokenizers: pass processing_class "
                "(the student's) and teacher_processing_class (the teacher's)"
            )
        if same_vocabulary(teacher_tokenizer, tokenizer):
            logger.info("cross_tokenizer_loss: the two tokenizers are the same; the ordinary loss runs")
            return None
        vocab_map = build_exact_map(tokenizer, teacher_tokenizer)
        logger.info(
            "cross_tokenizer_loss=%s: %d tokens matched exactly (%.1f %% of the student's vocabulary, %.1f %% of the "
            "teacher's)",
            args.cross_tokenizer_loss,
            len(vocab_map),
            100 * vocab_map.student_coverage(),
            100 * vocab_map.teacher_coverage(),
        )
        return vocab_map

    def _wrap_with_features(self, student, args: DistillationConfig) -> StudentWithFeatures:
        if self.teacher.model is None:
            raise ValueError(
                "hidden_weight / attention_weight need the teacher's hidden states or attention maps, which this "
                f"teacher source does not have ({self.teacher.describe()}); use a live teacher"
            )
        self.features = feature_distiller_for(args, student.config, self.teacher.config, task=self.task)
        prepare_for_feature_distillation(student, attentions=self.features.needs_attentions)
        prepare_for_feature_distillation(self.teacher.model, attentions=self.features.needs_attentions)
        self.features.attach(student, self.teacher.model)
        return StudentWithFeatures(student, self.features)

    def _why_not_fused(self) -> str | None:
        """Why the fused lm_head + divergence cannot run here, or None when it can."""
        if self.task != "causal_lm":
            return f"it applies to causal LMs, and this run distils {self.task}"
        if self.vocab_map is not None:
            return "the teacher has another vocabulary (cross_tokenizer_loss), whose losses need full distributions"
        student = self.student
        head = student.get_output_embeddings() if hasattr(student, "get_output_embeddings") else None
        if type(head) is not nn.Linear:
            return (
                f"it needs the student's lm_head to be a plain nn.Linear, got {type(head).__name__} (LoRA or "
                "modules_to_save on lm_head)"
            )
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return "it applies the lm_head weight outside the model's forward, which FSDP and DeepSpeed ZeRO-3 shard"
        return None

    def _decide_fused(self) -> bool:
        """``loss_chunk_size``: 'auto' fuses wherever it applies and says why when it does not; a number insists."""
        chunk = self.args.loss_chunk_size
        if chunk == 0:
            return False
        reason = self._why_not_fused()
        if reason is None:
            logger.info("fused lm_head + divergence on (loss_chunk_size=%s)", chunk)
            return True
        if chunk == "auto":
            logger.info("fused lm_head + divergence off: %s; full logits are materialised", reason)
            return False
        raise ValueError(f"loss_chunk_size={chunk} asks for the fused loss, but {reason}; set loss_chunk_size=0")

    def _build_onpolicy(self, tokenizer) -> OnPolicySteps:
        if self.task != "causal_lm":
            raise ValueError(f"lmbda/seq_kd generate text and need a causal LM student; this run distils {self.task}")
        # Sharded weights are gathered collectively at every decoding step: all processes must decode equally long.
        sharded = self.accelerator.num_processes > 1 and (self.is_fsdp_enabled or self.is_deepspeed_enabled)
        return OnPolicySteps.from_config(
            self.args,
            tokenizer,
            self.student,
            vocab_size=self.kd_vocab_size,
            synced_gpus=sharded,
            rank=self.accelerator.process_index,
        )

    @property
    def student(self) -> nn.Module:
        """The student model itself (without the feature-distillation wrapper or distributed wrappers)."""
        model = self.accelerator.unwrap_model(self.model)
        return model.student if isinstance(model, StudentWithFeatures) else model

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None and isinstance(self.model, StudentWithFeatures):
            # The wrapper's forward takes **inputs; the columns to keep are the student's.
            self._signature_columns = list(inspect.signature(self.model.student.forward).parameters)
        super()._set_signature_columns_if_needed()
        # Teacher sources read these columns (store lookups, context prompts, routing), sampling seeds the sample
        # id and generation the prompt length; the student never sees them.
        for column in (*TEACHER_BATCH_KEYS, "labels", "prompt_length"):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    # ---- loss -------------------------------------------------------------------------------------------------

    def _count(self, batch: dict) -> torch.Tensor:
        """Counts in ``COUNT_KEYS`` order for one micro-batch."""
        mask, _ = targets(batch, self.task)
        tokens = self.selection.kept_count(mask) if self.selection is not None else mask.sum()
        kd_items = batch["align_mask"].sum().to(tokens) if self.vocab_map is not None else tokens
        feature = self.features.counts(real_token_mask(batch)) if self.features is not None else {}
        zero = mask.sum() * 0
        features = [torch.as_tensor(feature.get(t, zero)).to(zero) for t in FEATURE_TERMS]
        return torch.stack([kd_items, tokens, *features])

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> dict | None:
        """Counted tokens of the whole accumulation window, summed over processes.

        Returned as a dict (Trainer only passes it through to ``compute_loss``): the KD/CE terms count labelled
        target positions, feature terms count real tokens.
        """
        if not batch_samples:
            return None
        counts = sum(self._count(b) for b in batch_samples).to(device)
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts).view(-1, len(COUNT_KEYS)).sum(0)
        return dict(zip(COUNT_KEYS, counts))

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device) -> tuple[list, dict | None]:
        """The window's micro-batches and their counts; on steps that generate, the completions are replaced by
        generated ones *before* the window's tokens are counted, so every normalisation rule holds unchanged."""
        if self.onpolicy is None:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        batch_samples = list(itertools.islice(epoch_iterator, num_batches))
        batch_samples = self.onpolicy.prepare_window(
            batch_samples, step=self.state.global_step, student=self.student, teacher=self.teacher.model
        )
        return batch_samples, self._get_num_items_in_batch(batch_samples, device)

    def _sample_kl(self, mask: torch.Tensor, teacher_out: TeacherOutputs, student_out, kd_sum) -> torch.Tensor:
        """Sum of KL(p_S || p_T) at T = 1 over the counted tokens of a batch (for the on-policy log)."""
        args = self.args
        if kd_is_sample_kl(args.kd_loss, args.jsd_beta, args.temperature):
            return kd_sum.detach()
        if self.fused:
            head = self.student.get_output_embeddings()
            hidden = student_out["hidden_states"][-1]
            return sample_reverse_kl(
                mask, teacher_out, hidden=hidden, head=head, vocab_size=self.kd_vocab_size,
                chunk_size=args.loss_chunk_size if isinstance(args.loss_chunk_size, int) else 0,
            )  # fmt: skip
        return sample_reverse_kl(mask, teacher_out, logits=student_out["logits"], vocab_size=self.kd_vocab_size)

    def _teacher_targets(self, inputs: dict, mask: torch.Tensor) -> TeacherOutputs:
        kwargs = {"want_final_hidden": self.fused}
        if self.features is not None:
            kwargs.update(
                hidden_layers=self.features.teacher_hidden_layers,
                attention_layers=self.features.teacher_attention_layers,
            )
        out = self.teacher(inputs, **kwargs)
        # Across two tokenizers the targets sit at the aligned positions, which the pair mask marks.
        self._check_teacher_finite(out, inputs["align_mask"].bool() if self.vocab_map is not None else mask)
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: DistillationConfig = self.args
        mode = "train" if model.training else "eval"
        mask, labels = targets(inputs, self.task)
        if args.ce_weight > 0 and labels is None:
            raise ValueError("ce_weight > 0 but the batch has no labels; set ce_weight=0 for label-free data")
        teacher_out = self._teacher_targets(inputs, mask)
        student_inputs = model_inputs(inputs)
        if self.fused:
            # Hidden states instead of logits: the fused loss projects counted positions chunk by chunk.
            student_inputs.update(output_hidden_states=True, logits_to_keep=no_logits(inputs))
        if self.features is not None:
            student_out = model(teacher_outputs=teacher_out, keep_features=self.fused, **student_inputs)
            feature_terms = student_out["feature_terms"]
        else:
            student_out = model(**student_inputs, return_dict=True)
            feature_terms = {}

        selected = {}
        if self.selection is not None and mode == "train":
            mask, labels, selected = self._select_tokens(mask, labels, student_out, teacher_out)

        kd = dict(kind=args.kd_loss, temperature=args.temperature, beta=args.jsd_beta, scale_by_t2=args.scale_by_t2)
        want_ce = labels is not None and (args.ce_weight > 0 or mode == "eval")
        common = dict(mask=mask, labels=labels, kd=kd, vocab_size=self.kd_vocab_size)
        local_tokens = mask.sum()
        if self.vocab_map is not None:
            kd_sum, ce_sum, agree = self._cross_vocab_terms(student_out, teacher_out, inputs, common, want_ce)
            named, local_kd_items = {}, inputs["align_mask"].sum()
        else:
            kd_sum, ce_sum, agree, named = self._logit_terms(student_out, teacher_out, common, want_ce)
            local_kd_items = local_tokens

        if self.onpolicy is not None and mode == "train":
            self.onpolicy.record_sample_kl(
                inputs, lambda: self._sample_kl(mask, teacher_out, student_out, kd_sum), local_tokens
            )
        if mode == "train" and isinstance(num_items_in_batch, dict):
            counts = num_items_in_batch
            # DDP/FSDP/DeepSpeed average gradients over processes; the window count already spans all of them.
            scale = self.accelerator.num_processes
        else:
            counts = {
                "kd_tokens": local_kd_items,
                "ce_tokens": local_tokens,
                **{k: c for k, (_, c) in feature_terms.items()},
            }
            scale = 1
        loss = args.kd_weight * kd_sum / counts["kd_tokens"].clamp(min=1)
        loss = loss + args.ce_weight * ce_sum / counts["ce_tokens"].clamp(min=1)
        for term, (term_sum, _) in feature_terms.items():
            loss = loss + getattr(args, f"{term}_weight") * term_sum / counts[term].clamp(min=1)
        loss = loss * scale
        self._check_loss_finite(loss, {"kd": kd_sum, "ce": ce_sum, **{k: v for k, (v, _) in feature_terms.items()}})

        with torch.no_grad():
            sums = {"kd": kd_sum, "ce": ce_sum, "tokens": local_tokens, "kd_items": local_kd_items}
            if agree is not None:
                sums["agree"] = agree
            for term, (term_sum, term_count) in feature_terms.items():
                sums[term], sums[f"{term}_tokens"] = term_sum, term_count
            sums.update(named)
            sums.update(selected)
            for key, value in sums.items():
                self._metrics[mode][key] += value.detach().float()
        return (loss, student_out) if return_outputs else loss

    def _cross_vocab_terms(self, student_out, teacher_out: TeacherOutputs, inputs: dict, common: dict, want_ce: bool):
        """``(kd_sum, ce_sum, agreement count)`` for a teacher with another vocabulary: KD over the aligned
        positions (``losses.cross_vocab``), CE over the student's own counted tokens."""
        args: DistillationConfig = self.args
        logits = student_out["logits"]
        if self.vocab_map.student_ids.device != logits.device:
            self.vocab_map = self.vocab_map.to(logits.device)
            self._teacher_ids_of = None
        if self._teacher_ids_of is None:
            # Built once per device: the teacher id of each student id, for the agreement of the two top-1 tokens.
            self._teacher_ids_of = self.vocab_map.teacher_id_table(logits.shape[-1])
        kd_sum, agree = cross_vocab_terms(
            gather_positions(logits, inputs["align_student"]),
            teacher_out.logits,
            pair_mask=inputs["align_mask"].bool(),
            loss=args.cross_tokenizer_loss,
            student_ids=self.vocab_map.student_ids,
            teacher_ids=self.vocab_map.teacher_ids,
            student_to_teacher=self._teacher_ids_of,
            kd=common["kd"],
            exact_weight=args.cross_tokenizer_exact_weight,
            uld_weight=args.cross_tokenizer_uld_weight,
        )
        ce_sum = hard_ce(logits, common["labels"], reduction="sum") if want_ce else kd_sum.new_zeros(())
        return kd_sum, ce_sum, agree

    def _logit_terms(self, student_out, teacher_out: TeacherOutputs, common: dict, want_ce: bool):
        """``(kd_sum, ce_sum, agreement count or None, named sums)`` on the dense or the fused path.

        With ``teacher_out.parts`` (several teachers), the KD sum is ``sum_i weight_i * KD_i`` over each part's rows,
        and each part's own KD sum, agreement and token count are returned under ``"kd/NAME"``, ``"agree/NAME"`` and
        ``"tokens/NAME"`` for the log.
        """
        args: DistillationConfig = self.args
        parts = teacher_out.parts or [TeacherPart("", teacher_out)]
        mask = common["mask"]
        kd_total, ce_sum, agree_total, named = None, None, None, {}
        for part in parts:
            part_mask = mask
            if part.rows is not None:
                part_mask = mask & part.rows.reshape(-1, *([1] * (mask.dim() - 1)))
            out = part.outputs
            empty = part.rows is not None and out.logits is None and out.sparse is None and out.final_hidden is None
            part_ce = want_ce and ce_sum is None and not empty  # the CE term is the student's own: computed once
            if empty:  # a routed teacher with no row in this batch
                kd_sum, agree = mask.new_zeros((), dtype=torch.float32), mask.new_zeros((), dtype=torch.long)
                part_ce_sum = None
            elif self.fused:
                head = self.student.get_output_embeddings()
                kd_sum, part_ce_sum, agree = fused_logit_terms(
                    student_out["hidden_states"][-1],
                    head.weight,
                    head.bias,
                    teacher_logits=out.logits,
                    teacher_hidden=out.final_hidden,
                    teacher_weight=out.lm_head_weight,
                    teacher_bias=out.lm_head_bias,
                    sparse=out.sparse,
                    weights=(args.kd_weight * part.weight, args.ce_weight if part_ce else 0.0),
                    chunk_size=0 if args.loss_chunk_size == "auto" else args.loss_chunk_size,
                    **{**common, "mask": part_mask, "labels": common["labels"] if part_ce else None},
                )
            else:
                kd_sum, part_ce_sum, agree = dense_logit_terms(
                    student_out["logits"],
                    teacher_logits=out.logits,
                    sparse=out.sparse,
                    want_ce=part_ce,
                    **{**common, "mask": part_mask},
                )
            if part_ce:
                ce_sum = part_ce_sum
            weighted = kd_sum * part.weight
            kd_total = weighted if kd_total is None else kd_total + weighted
            if agree is not None:
                agree_total = agree * part.weight if agree_total is None else agree_total + agree * part.weight
            if part.name:
                named.update({f"kd/{part.name}": kd_sum.detach(), f"tokens/{part.name}": part_mask.sum()})
                if agree is not None:
                    named[f"agree/{part.name}"] = agree
        if ce_sum is None:
            ce_sum = kd_total.new_zeros(())
        return kd_total, ce_sum, agree_total, named

    def _select_tokens(self, mask, labels, student_out, teacher_out):
        """Token-level data selection: the kept tokens of each row, scored from this micro-batch's outputs."""
        if self.fused:
            head = self.student.get_output_embeddings()
            student = (student_out["hidden_states"][-1], head.weight, head.bias)
            teacher = (teacher_out.final_hidden, teacher_out.lm_head_weight, teacher_out.lm_head_bias)
        else:
            student, teacher = student_out["logits"], teacher_out.logits
        if teacher is None or (isinstance(teacher, tuple) and teacher[0] is None):
            raise ValueError(
                "data_selection.level='token' needs the teacher's full distribution; this teacher has none"
            )
        return self.selection.narrow(
            mask,
            labels,
            student=student,
            teacher=teacher,
            vocab_size=self.kd_vocab_size,
            chunk_size=self.args.loss_chunk_size if isinstance(self.args.loss_chunk_size, int) else 0,
        )

    # ---- logging ----------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        sums = self._metrics[mode]
        if sums:
            device = self.args.device
            totals = torch.stack([torch.as_tensor(sums.get(k, 0.0), device=device).float() for k in SUM_KEYS])
            if self.args.world_size > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            totals = dict(zip(SUM_KEYS, totals.tolist()))
            kd, ce, agree, tokens = totals["kd"], totals["ce"], totals["agree"], totals["tokens"]
            kd_items = totals["kd_items"]  # counted tokens, or aligned positions across two tokenizers
            prefix = "eval_" if mode == "eval" else ""
            for term in FEATURE_TERMS:
                if totals[f"{term}_tokens"]:
                    logs[f"{prefix}{term}_loss"] = totals[term] / totals[f"{term}_tokens"]
            logs.update(selection_logs(totals, prefix))
            # Nothing counted (e.g. a window of prompt-only rows): no KD/CE figure at all, rather than 0 and a
            # perplexity of 1.0 that would read as a perfect model.
            if kd_items:
                logs[f"{prefix}kd_loss"] = kd / kd_items
                if "agree" in sums:
                    logs[f"{prefix}agreement"] = agree / kd_items
            if tokens:
                if mode == "eval" or self.args.ce_weight > 0:
                    logs[f"{prefix}ce_loss"] = ce / tokens
                    if self.task == "causal_lm" and mode == "eval":
                        logs["eval_perplexity"] = math.exp(min(ce / tokens, 50.0))
            logs.update(self._named_logs(sums, prefix))
            self._metrics[mode].clear()
        if self.onpolicy is not None and mode == "train":
            logs.update(self.onpolicy.logs(self._sum_over_processes, self.args.device))
        super().log(logs, start_time)

    def _named_logs(self, sums: dict, prefix: str) -> dict[str, float]:
        """Per-teacher (or per-model) terms: ``kd/NAME`` etc. divided by ``tokens/NAME``, reduced over processes.

        Every process logs the same names (each part is summed on every batch, with zeros where it had no rows).
        """
        keys = sorted(k for k in sums if "/" in k)
        if not keys:
            return {}
        values = torch.stack([torch.as_tensor(sums[k], device=self.args.device).float() for k in keys])
        if self.args.world_size > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        totals = dict(zip(keys, values.tolist()))
        names = {"kd": "kd_loss", "ce": "ce_loss", "agree": "agreement"}
        logs = {}
        for key, value in totals.items():
            kind, name = key.split("/", 1)
            if kind in names:
                logs[f"{prefix}{names[kind]}/{name}"] = value / max(totals.get(f"tokens/{name}", 0.0), 1.0)
        return logs

    def _sum_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(values, reduction="sum") if self.args.world_size > 1 else values

    # ---- saving -----------------------------------------------------------------------------------------------

    def distillation_metadata(self) -> dict:
        args: DistillationConfig = self.args
        return {
            "llm_distill_version": __version__,
            "task": self.task,
            "teacher": None,
            "teacher_logits_path": None,
            **self.teacher.describe(),
            "kd_loss": args.kd_loss,
            "temperature": args.temperature,
            "jsd_beta": args.jsd_beta,
            "scale_by_t2": args.scale_by_t2,
            "weights": {
                "kd": args.kd_weight,
                "ce": args.ce_weight,
                "hidden": args.hidden_weight,
                "attention": args.attention_weight,
                "relation": args.relation_weight,
                "rkd_distance": args.rkd_distance_weight,
                "rkd_angle": args.rkd_angle_weight,
            },
            "attention_on": args.attention_on,
            "data_selection": args.data_selection,
            "layer_map": args.layer_map if args.uses_features else None,
            "kd_vocab_size": self.kd_vocab_size,
            "cross_tokenizer_loss": args.cross_tokenizer_loss if self.vocab_map is not None else None,
            "generation": self.onpolicy.describe() if self.onpolicy is not None else None,
        }


class TeacherStepCallback(TrainerCallback):
    """After every optimizer step, let a changing teacher (an EMA of the student) follow the student's new weights.

    ``on_step_end`` comes after ``optimizer.step()`` and, under DDP, after the gradients were averaged, so every
    process updates from the same, synchronised weights.
    """

    def __init__(self, trainer: DistillationTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.teacher.after_optimizer_step(self.trainer.student)
