"""OnlineDistillationTrainer: several models trained together, each distilling from the others' predictions."""

from __future__ import annotations

import inspect
import json
import os
from collections import defaultdict

import torch
from torch import nn
from transformers import Trainer
from transformers.utils import find_labels

from ..config import DistillationConfig
from ..data import DistillationCollator
from ..export import METADATA_NAME
from ..losses.divergences import hard_ce
from ..losses.terms import dense_logit_terms
from ..tasks import infer_task, targets
from ..teacher import model_inputs
from ..trainer import DistillationTrainer
from ..vocab import shared_vocab_size
from .cohort import Cohort


class OnlineDistillationTrainer(DistillationTrainer):
    """Train a ``Cohort``: model i minimises ``ce_weight * CE_i + kd_weight * mean_j KD(detached p_j, p_i)`` over the
    models j it learns from (a model that learns from none, a co-trained teacher, minimises its CE alone).

    Terms are normalised exactly as in ``DistillationTrainer`` (window token counts, all processes). Gradient
    clipping (``max_grad_norm``) applies to each model on its own, so that models that learn from no one train exactly
    as they would alone. Logs ``kd_loss`` / ``ce_loss`` of the primary model and ``kd_loss/NAME``, ``ce_loss/NAME``,
    ``agreement/NAME`` (top-1 agreement with its first teacher) of every model. Single device or DDP.
    """

    def __init__(
        self,
        models: Cohort | dict[str, nn.Module],
        args: DistillationConfig,
        learns_from: dict[str, list[str]] | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        **kwargs,
    ):
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, got {type(args).__name__}")
        cohort = models if isinstance(models, Cohort) else Cohort(models, learns_from or {})
        first = cohort.members[cohort.primary]
        self.task = args.task if args.task != "auto" else infer_task(first)
        if self.task == "sequence_classification":
            labels = {n: getattr(m.config, "num_labels", None) for n, m in cohort.members.items()}
            if len(set(labels.values())) > 1:
                raise ValueError(f"the cohort's models have different numbers of labels: {labels}")
        self.teacher = None  # the teachers are members of the cohort
        self.features = None
        # What the base trainer's window hooks look for; the config refuses generation, selection and a teacher
        # with another tokenizer here.
        self.onpolicy = None
        self.selection = None
        self.vocab_map = None
        if data_collator is None and processing_class is not None and hasattr(processing_class, "pad_token_id"):
            data_collator = DistillationCollator(processing_class)
        Trainer.__init__(
            self,
            model=cohort,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError(
                "online_distillation runs on one device or under DDP; FSDP and DeepSpeed are not supported"
            )
        if args.label_names is None:
            self.label_names = find_labels(type(first))
        width = "num_labels" if self.task == "sequence_classification" else "vocab_size"
        widths = [getattr(m.config, width, None) for m in cohort.members.values()]
        self.kd_vocab_size = shared_vocab_size(
            min((w for w in widths if w), default=None), first.config, processing_class, self.task
        )
        self._metrics = {"train": defaultdict(float), "eval": defaultdict(float)}

    @property
    def cohort(self) -> Cohort:
        return self.accelerator.unwrap_model(self.model)

    @property
    def student(self) -> nn.Module:
        """The primary model (what ``output_dir`` holds)."""
        cohort = self.cohort
        return cohort.members[cohort.primary]

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            # The cohort's forward takes **inputs; the columns to keep are its models'.
            self._signature_columns = list(inspect.signature(self.student.forward).parameters) + ["labels"]
        super()._set_signature_columns_if_needed()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: DistillationConfig = self.args
        mode = "train" if model.training else "eval"
        mask, labels = targets(inputs, self.task)
        if labels is None:
            raise ValueError("online distillation trains every model on its labels too; the batch has none")
        logits = model(**model_inputs(inputs))
        cohort = self.cohort
        kd = dict(kind=args.kd_loss, temperature=args.temperature, beta=args.jsd_beta, scale_by_t2=args.scale_by_t2)
        vocab = self.kd_vocab_size
        total, sums = None, {"tokens": mask.sum()}
        for name, own in logits.items():
            peers = cohort.learns_from[name]
            ce_sum = hard_ce(own if vocab is None else own[..., :vocab], labels, reduction="sum")
            kd_sum, agree = ce_sum.new_zeros(()), None
            for peer in peers:
                # The others' predictions are targets: detached, as in deep mutual learning.
                peer_kd, _, peer_agree = dense_logit_terms(
                    own,
                    teacher_logits=logits[peer].detach(),
                    mask=mask,
                    labels=labels,
                    kd=kd,
                    vocab_size=vocab,
                    want_ce=False,
                )
                kd_sum = kd_sum + peer_kd / len(peers)
                agree = peer_agree if agree is None else agree
            term = args.kd_weight * kd_sum + args.ce_weight * ce_sum if peers else ce_sum
            total = term if total is None else total + term
            sums.update({f"kd/{name}": kd_sum, f"ce/{name}": ce_sum, f"tokens/{name}": mask.sum()})
            if agree is not None:
                sums[f"agree/{name}"] = agree
            if name == cohort.primary:
                sums.update(kd=kd_sum, ce=ce_sum)
                if agree is not None:
                    sums["agree"] = agree
        if mode == "train" and isinstance(num_items_in_batch, dict):
            count, scale = num_items_in_batch["kd_tokens"], self.accelerator.num_processes
        else:
            count, scale = mask.sum(), 1
        loss = total / count.clamp(min=1) * scale
        with torch.no_grad():
            for key, value in sums.items():
                self._metrics[mode][key] += value.detach().float()
        return (loss, {"logits": logits[cohort.primary]}) if return_outputs else loss

    def _clip_grad_norm(self, model):
        """Clip each model's gradients on its own; returns the norm over all of them (what the log shows)."""
        self.accelerator.unscale_gradients()
        norms = [
            torch.nn.utils.clip_grad_norm_(member.parameters(), self.args.max_grad_norm)
            for member in self.cohort.members.values()
        ]
        return torch.stack([n.float() for n in norms]).pow(2).sum().sqrt()

    def distillation_metadata(self) -> dict:
        args: DistillationConfig = self.args
        cohort = self.cohort
        return {
            "online_distillation": args.online_distillation,
            "task": self.task,
            "members": list(cohort.members),
            "learns_from": cohort.learns_from,
            "kd_loss": args.kd_loss,
            "temperature": args.temperature,
            "scale_by_t2": args.scale_by_t2,
            "weights": {"kd": args.kd_weight, "ce": args.ce_weight},
            "kd_vocab_size": self.kd_vocab_size,
        }

    def member_dirs(self, output_dir: str) -> dict[str, str]:
        """Where each model is saved: the primary at ``output_dir``, the others in ``output_dir/NAME``."""
        cohort = self.cohort
        return {n: output_dir if n == cohort.primary else os.path.join(output_dir, n) for n in cohort.members}

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        cohort = self.cohort
        for name, folder in self.member_dirs(output_dir).items():
            os.makedirs(folder, exist_ok=True)
            cohort.members[name].save_pretrained(folder)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(folder)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        with open(os.path.join(output_dir, METADATA_NAME), "w") as fh:
            json.dump(self.distillation_metadata(), fh, indent=2)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        cohort = self.cohort
        for name, folder in self.member_dirs(resume_from_checkpoint).items():
            Trainer._load_from_checkpoint(self, folder, model=cohort.members[name])
