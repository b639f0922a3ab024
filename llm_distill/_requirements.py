"""The lowest versions the package works with, checked when it is imported (the Trainer's attribute when the trainer
module is): below them it refuses to load rather than train wrongly.

transformers >= 5.19: the trainer divides each loss term by the window's token count itself and tells the Trainer so
through ``loss_is_scaled_for_ga``; an older Trainer ignores that attribute and would divide by the accumulation steps
a second time. torch >= 2.6: ``torch.distributed.fsdp.fully_shard`` (FSDP2 teacher sharding). accelerate >= 1.6:
FSDP2 (``fsdp_version: 2``). peft >= 0.13: the LoRA API used by ``student.lora``. Keep in step with pyproject.toml.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

MINIMUM = {"torch": "2.6", "transformers": "5.19", "accelerate": "1.6", "peft": "0.13"}


def _release(text: str) -> tuple[int, ...]:
    """(5, 19, 0) from '5.19.0.dev0' or '2.13.0+cpu': the numeric release, enough for a floor."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def too_old() -> list[str]:
    """``name found < floor`` for every installed package below its floor (a missing one is pip's business)."""
    out = []
    for name, floor in MINIMUM.items():
        try:
            found = version(name)
        except PackageNotFoundError:
            continue
        if _release(found) < _release(floor):
            out.append(f"{name} {found} (needs >= {floor})")
    return out


def check_versions() -> None:
    old = too_old()
    if old:
        raise ImportError(
            "llm_distill cannot run with "
            + ", ".join(old)
            + "; upgrade with pip install -U "
            + " ".join(f"'{n}>={MINIMUM[n]}'" for n in MINIMUM if any(o.startswith(n + " ") for o in old))
        )


def check_trainer(trainer_class: type) -> None:
    """Run where the Trainer is imported anyway (importing it costs seconds, which ``llm-distill --help`` and
    ``import llm_distill`` should not pay): a release can be >= the floor and still lack the attribute (a fork)."""
    if not hasattr(trainer_class, "loss_is_scaled_for_ga"):
        raise ImportError(
            "this transformers' Trainer has no loss_is_scaled_for_ga, so gradient accumulation would scale "
            "distillation losses twice; pip install -U 'transformers>=5.19'"
        )
