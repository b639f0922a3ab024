"""The ``data_selection:`` setting: which score, at which level, how much is kept."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..checks import check_choice, reject_unknown_keys
from ..losses.selection import DEFAULT_KEEP_HIGHEST, SELECTION_LEVELS, SELECTION_SCORES


@dataclass(frozen=True)
class DataSelection:
    """Teacher-guided data selection (``DistillationConfig.data_selection``).

    score: ``teacher_nll`` | ``teacher_entropy`` | ``excess_loss`` (student NLL - teacher NLL; at the sample level the
        student is the run's initial student, at the token level the student being trained, as in Rho-1).
    level: ``sample`` (a step before training scores every training row and keeps the top fraction of rows) or
        ``token`` (inside the loss: each row keeps the top fraction of its counted tokens for the KD and CE terms).
    keep: the fraction kept, in (0, 1]; 1 trains on everything, exactly as without selection.
    keep_highest: keep the highest scores (default: True for excess_loss and teacher_entropy, False for teacher_nll).
    scores_path: sample level: the folder where the scores are written and reused (default: OUTPUT_DIR/data_scores).
    batch_size: rows per forward pass of the sample-level scoring step.
    """

    score: str
    level: str
    keep: float = 1.0
    keep_highest: bool | None = None
    scores_path: str | None = None
    batch_size: int = 8

    def __post_init__(self):
        check_choice("data_selection.score", self.score, SELECTION_SCORES)
        check_choice("data_selection.level", self.level, SELECTION_LEVELS)
        keep = self.keep
        if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0.0 < keep <= 1.0:
            raise ValueError(f"data_selection.keep={keep!r} is not accepted; it must be a fraction in (0, 1]")
        if self.keep_highest is not None and not isinstance(self.keep_highest, bool):
            raise ValueError(f"data_selection.keep_highest={self.keep_highest!r} is not accepted; use true or false")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"data_selection.batch_size={self.batch_size!r} is not accepted; use an int >= 1")

    @property
    def highest(self) -> bool:
        return DEFAULT_KEEP_HIGHEST[self.score] if self.keep_highest is None else self.keep_highest

    @classmethod
    def parse(cls, value) -> DataSelection | None:
        """``None`` (off), a ``DataSelection``, or the recipe's mapping (unknown keys refused)."""
        if value is None or isinstance(value, DataSelection):
            return value
        if not isinstance(value, dict):
            raise ValueError(
                f"data_selection={value!r} is not accepted; give a mapping such as "
                "{score: excess_loss, level: token, keep: 0.5}"
            )
        reject_unknown_keys(value, [f.name for f in fields(cls)], where="data_selection")
        for key in ("score", "level"):
            if key not in value:
                raise ValueError(f"data_selection needs {key!r}: one of {', '.join(_CHOICES[key])}")
        return cls(**value)


_CHOICES = {"score": SELECTION_SCORES, "level": SELECTION_LEVELS}
