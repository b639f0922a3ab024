"""The models an online run trains, as one module, and who learns from whom."""

from __future__ import annotations

from torch import nn


def mutual_learning(names: list[str]) -> dict[str, list[str]]:
    """Deep mutual learning (Zhang et al., CVPR 2018): every model learns from every other one."""
    return {name: [other for other in names if other != name] for name in names}


def co_training(student: str = "student", teacher: str = "teacher") -> dict[str, list[str]]:
    """A co-trained teacher: the student learns from the teacher, which learns from its labels alone."""
    return {student: [teacher], teacher: []}


class Cohort(nn.Module):
    """Several models trained in one ``Trainer``: one optimizer, scheduler, DDP wrapper and checkpoint cover them all.

    Args:
        members: name -> model, in order; the first is the primary model (exported at the run's ``output_dir``,
            the others in ``output_dir/NAME``).
        learns_from: name -> the names whose detached predictions it distils from (empty: labels only).
    """

    def __init__(self, members: dict[str, nn.Module], learns_from: dict[str, list[str]]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a cohort trains several models together; got {len(members)}")
        unknown = {n for peers in learns_from.values() for n in peers} | set(learns_from)
        unknown -= set(members)
        if unknown:
            raise ValueError(f"learns_from names {sorted(unknown)}, which are not members ({list(members)})")
        self.members = nn.ModuleDict(members)
        self.learns_from = {name: list(learns_from.get(name, [])) for name in members}

    @property
    def primary(self) -> str:
        return next(iter(self.members))

    @property
    def config(self):
        return self.members[self.primary].config

    def forward(self, **inputs) -> dict:
        """Every member's logits on the same batch: ``{name: (B, S, V) or (B, C)}``."""
        return {name: model(**inputs, return_dict=True).logits for name, model in self.members.items()}
