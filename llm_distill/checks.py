"""Value checks shared by every part that reads settings: unknown keys and closed choices, one message shape each.

Every refusal names the setting, the value seen and what would be accepted. (Checks of divergence settings —
kind, beta, temperature — live with the divergences in ``losses/divergences.py``.)
"""

from __future__ import annotations

import collections.abc
import difflib
import enum
import types
import typing
from collections.abc import Iterable


def reject_unknown_keys(values: dict, known: Iterable[str], *, where: str) -> None:
    """Refuse a key that is not in ``known``, suggesting the closest known one ("did you mean")."""
    known = list(known)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ValueError(f"unknown key {key!r} in {where}{hint}")


def check_choice(name: str, value, accepted: Iterable) -> None:
    """Refuse ``value`` unless it is one of ``accepted``."""
    accepted = tuple(accepted)
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not known; expected one of: {', '.join(map(str, accepted))}")


def check_non_negative(name: str, value, *, what: str = "a number") -> None:
    """Refuse anything but a finite number >= 0 (loss weights, fractions)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 or value == float("inf"):
        raise ValueError(f"{name}={value!r} is not accepted; {what} must be a finite number >= 0")


class NonFiniteError(RuntimeError):
    """A NaN or infinity where a finite value is required (teacher outputs, the loss, gradients, cached targets)."""

    user_error = True


def value_matches(value, hint) -> bool:
    """Whether ``value`` (as read from YAML or a flag) has the type ``hint`` names; unknown hints accept anything.

    ``bool`` is not an ``int`` here (``num_layers: true`` is a mistake); an ``int`` is a ``float``; an ``Enum`` accepts
    its string values (``TrainingArguments`` converts them).
    """
    if hint is typing.Any or isinstance(hint, typing.TypeVar):
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(value_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {m.value for m in hint}
    return True


def describe_hint(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(describe_hint(a) for a in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return "null"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in hint)
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_types(values: dict, hints: dict, *, where: str) -> None:
    """Refuse a value whose type does not match its key's hint, naming the key, the value and the expected type."""
    for key, value in values.items():
        hint = hints.get(key)
        if hint is not None and not value_matches(value, hint):
            name = f"{where}.{key}" if where else key
            raise ValueError(f"{name}={value!r} is not accepted; expected {describe_hint(hint)}")
