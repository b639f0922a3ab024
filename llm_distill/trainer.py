"""DistillationTrainer: transformers.Trainer with a teacher and a sum of weighted distillation terms."""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
from collections import defaultdict

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.utils import find_labels

from ._version import __version__
from .config import DistillationConfig
from .data import DistillationCollator
from .features import FeatureDistiller, StudentWithFeatures, prepare_for_feature_distillation
from .losses.terms import dense_logit_terms, fused_logit_terms
from .model_card import write_model_card
from .onpolicy import OnPolicySteps, kd_is_sample_kl, sample_reverse_kl
from .tasks import infer_task, load_model, real_token_mask, targets
from .teacher import TeacherOutputs, build_teacher_source, model_inputs, no_logits
from .vocab import check_tokenizers, shared_vocab_size

METADATA_NAME = "distillation.json"
PROJECTIONS_NAME = "feature_projections.safetensors"
# Per-batch sums, reduced and divided in log(): exact token-weighted averages, across processes too.
SUM_KEYS = ("kd", "ce", "agree", "tokens", "hidden", "hidden_tokens", "attention", "attention_tokens")
# What each loss term is divided by: the window count of its own kind of token.
COUNT_KEYS = ("kd_tokens", "hidden", "attention")


class DistillationTrainer(Trainer):
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
        if isinstance(model, str):
            if args.task == "auto":
                raise ValueError(f"model={model!r} is a name; set task so the right Auto class loads it")
            model = load_model(model, args.task)
        self.task = args.task if args.task != "auto" else infer_task(model)
        self.teacher = build_teacher_source(
            teacher_model,
            args,
            task=self.task,
            tokenizer=processing_class,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
        )
        self.features: FeatureDistiller | None = None
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
        check_tokenizers(teacher_processing_class, processing_class)
        self.kd_vocab_size = shared_vocab_size(
            self.teacher.output_width(self.task), getattr(self.student, "config", None), processing_class, self.task
        )
        if self.fused:
            self._check_fusable()
        self.teacher.place(self.accelerator, self.args.device)
        self._metrics = {"train": defaultdict(float), "eval": defaultdict(float)}
        self.onpolicy = self._build_onpolicy(processing_class) if args.generates else None

    # ---- setup ------------------------------------------------------------------------------------------------

    def _wrap_with_features(self, student, args: DistillationConfig) -> StudentWithFeatures:
        attention_map = args.layer_map
        if isinstance(attention_map, list):
            # The embedding pair (0, 0) feeds the hidden-state loss only: embeddings have no attention map.
            attention_map = [pair for pair in attention_map if 0 not in pair]
        self.features = FeatureDistiller.from_configs(
            student.config,
            self.teacher.config,
            hidden_map=args.layer_map if args.hidden_weight > 0 else None,
            attention_map=attention_map if args.attention_weight > 0 else None,
            hidden_loss=args.hidden_loss,
            attention_loss=args.attention_loss,
        )
        prepare_for_feature_distillation(student, attentions=self.features.needs_attentions)
        prepare_for_feature_distillation(self.teacher.model, attentions=self.features.needs_attentions)
        return StudentWithFeatures(student, self.features)

    def _check_fusable(self) -> None:
        """The fused path applies the lm_head weight itself: a plain linear layer, not sharded by the strategy."""
        student = self.student
        head = student.get_output_embeddings() if hasattr(student, "get_output_embeddings") else None
        if type(head) is not nn.Linear:
            raise ValueError(
                f"loss_chunk_size > 0 needs the student's lm_head to be a plain nn.Linear, got {type(head).__name__}; "
                "LoRA or modules_to_save on lm_head is not supported by the fused loss: set loss_chunk_size=0"
            )
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError(
                "loss_chunk_size > 0 applies the lm_head weight outside the model's forward, which FSDP and "
                "DeepSpeed ZeRO-3 shard; use loss_chunk_size=0 with them (DDP and single devices are supported)"
            )

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
        # Cached-teacher lookups and sampling seeds need the sample id, generation the prompt length; the student
        # sees neither.
        for column in ("sample_id", "labels", "prompt_length"):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    # ---- loss -------------------------------------------------------------------------------------------------

    def _count(self, batch: dict) -> torch.Tensor:
        """Counts in ``COUNT_KEYS`` order for one micro-batch."""
        mask, _ = targets(batch, self.task)
        feature = self.features.counts(real_token_mask(batch)) if self.features is not None else {}
        zero = mask.sum() * 0
        return torch.stack([mask.sum(), feature.get("hidden", zero), feature.get("attention", zero)])

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
                chunk_size=args.loss_chunk_size,
            )  # fmt: skip
        return sample_reverse_kl(mask, teacher_out, logits=student_out["logits"], vocab_size=self.kd_vocab_size)

    def _teacher_targets(self, inputs: dict) -> TeacherOutputs:
        kwargs = {"want_final_hidden": self.fused}
        if self.features is not None:
            kwargs.update(
                hidden_layers=self.features.teacher_hidden_layers,
                attention_layers=self.features.teacher_attention_layers,
            )
        return self.teacher(inputs, **kwargs)

    @property
    def fused(self) -> bool:
        """Fused chunked lm_head + divergence: causal LMs with ``loss_chunk_size > 0``."""
        return self.task == "causal_lm" and self.args.loss_chunk_size > 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: DistillationConfig = self.args
        mode = "train" if model.training else "eval"
        mask, labels = targets(inputs, self.task)
        if args.ce_weight > 0 and labels is None:
            raise ValueError("ce_weight > 0 but the batch has no labels; set ce_weight=0 for label-free data")
        teacher_out = self._teacher_targets(inputs)
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

        kd = dict(kind=args.kd_loss, temperature=args.temperature, beta=args.jsd_beta, scale_by_t2=args.scale_by_t2)
        want_ce = labels is not None and (args.ce_weight > 0 or mode == "eval")
        common = dict(mask=mask, labels=labels, kd=kd, vocab_size=self.kd_vocab_size)
        if self.fused:
            head = self.student.get_output_embeddings()
            kd_sum, ce_sum, agree = fused_logit_terms(
                student_out["hidden_states"][-1],
                head.weight,
                head.bias,
                teacher_logits=teacher_out.logits,
                teacher_hidden=teacher_out.final_hidden,
                teacher_weight=teacher_out.lm_head_weight,
                teacher_bias=teacher_out.lm_head_bias,
                sparse=teacher_out.sparse,
                weights=(args.kd_weight, args.ce_weight if want_ce else 0.0),
                chunk_size=args.loss_chunk_size,
                **common,
            )
        else:
            kd_sum, ce_sum, agree = dense_logit_terms(
                student_out["logits"],
                teacher_logits=teacher_out.logits,
                sparse=teacher_out.sparse,
                want_ce=want_ce,
                **common,
            )

        local_tokens = mask.sum()
        if self.onpolicy is not None and mode == "train":
            self.onpolicy.record_sample_kl(
                inputs, lambda: self._sample_kl(mask, teacher_out, student_out, kd_sum), local_tokens
            )
        if mode == "train" and isinstance(num_items_in_batch, dict):
            counts = num_items_in_batch
            # DDP/FSDP/DeepSpeed average gradients over processes; the window count already spans all of them.
            scale = self.accelerator.num_processes
        else:
            counts = {"kd_tokens": local_tokens, **{k: c for k, (_, c) in feature_terms.items()}}
            scale = 1
        loss = (args.kd_weight * kd_sum + args.ce_weight * ce_sum) / counts["kd_tokens"].clamp(min=1)
        weights = {"hidden": args.hidden_weight, "attention": args.attention_weight}
        for term, (term_sum, _) in feature_terms.items():
            loss = loss + weights[term] * term_sum / counts[term].clamp(min=1)
        loss = loss * scale

        with torch.no_grad():
            sums = {"kd": kd_sum, "ce": ce_sum, "tokens": local_tokens}
            if agree is not None:
                sums["agree"] = agree
            for term, (term_sum, term_count) in feature_terms.items():
                sums[term], sums[f"{term}_tokens"] = term_sum, term_count
            for key, value in sums.items():
                self._metrics[mode][key] += value.detach().float()
        return (loss, student_out) if return_outputs else loss

    # ---- logging ----------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        sums = self._metrics[mode]
        if sums:
            device = self.args.device
            totals = torch.stack([torch.as_tensor(sums.get(k, 0.0), device=device).float() for k in SUM_KEYS])
            if self.args.world_size > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            kd, ce, agree, tokens, hidden, hidden_tokens, attention, attention_tokens = totals.tolist()
            tokens = max(tokens, 1.0)
            prefix = "eval_" if mode == "eval" else ""
            if hidden_tokens:
                logs[f"{prefix}hidden_loss"] = hidden / hidden_tokens
            if attention_tokens:
                logs[f"{prefix}attention_loss"] = attention / attention_tokens
            logs[f"{prefix}kd_loss"] = kd / tokens
            if mode == "eval" or self.args.ce_weight > 0:
                logs[f"{prefix}ce_loss"] = ce / tokens
                if self.task == "causal_lm" and mode == "eval":
                    logs["eval_perplexity"] = math.exp(min(ce / tokens, 50.0))
            if "agree" in sums:
                logs[f"{prefix}agreement"] = agree / tokens
            self._metrics[mode].clear()
        if self.onpolicy is not None and mode == "train":
            logs.update(self.onpolicy.logs(self._sum_over_processes, self.args.device))
        super().log(logs, start_time)

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
            },
            "layer_map": args.layer_map if args.uses_features else None,
            "kd_vocab_size": self.kd_vocab_size,
            "generation": self.onpolicy.describe() if self.onpolicy is not None else None,
        }

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # The student only: the teacher is not an attribute Trainer saves, so no teacher weights land here.
        output_dir = output_dir or self.args.output_dir
        if not isinstance(self.accelerator.unwrap_model(self.model), StudentWithFeatures):
            super()._save(output_dir, state_dict)
        else:
            self._save_student_and_projections(output_dir, state_dict)
        if self.args.should_save:
            meta = self.distillation_metadata()
            with open(os.path.join(output_dir, METADATA_NAME), "w") as fh:
                json.dump(meta, fh, indent=2)
            write_model_card(output_dir, meta, self.state.log_history)

    def _save_student_and_projections(self, output_dir: str, state_dict: dict | None) -> None:
        """Student weights as a plain ``save_pretrained`` folder; projections beside them in checkpoints only."""
        state_dict = state_dict if state_dict is not None else self.accelerator.unwrap_model(self.model).state_dict()
        student_state = {k[len("student.") :]: v for k, v in state_dict.items() if k.startswith("student.")}
        projections = {k[len("features.") :]: v for k, v in state_dict.items() if k.startswith("features.")}
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.student.save_pretrained(output_dir, state_dict=student_state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        if os.path.basename(os.path.normpath(output_dir)).startswith("checkpoint-") and projections:
            save_file({k: v.contiguous() for k, v in projections.items()}, os.path.join(output_dir, PROJECTIONS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        wrapper = self.accelerator.unwrap_model(self.model)
        if model is not None or not isinstance(wrapper, StudentWithFeatures):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.student)
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_NAME)
        if len(wrapper.features.state_dict()) == 0:
            return
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{resume_from_checkpoint} has no {PROJECTIONS_NAME}: it was not written by a feature-distillation "
                "run, so the hidden-state projections cannot be restored"
            )
        wrapper.features.load_state_dict(load_file(path))
