"""Value checks shared by every part that reads settings: unknown keys and closed choices, one message shape each.

Every refusal names the setting, the value seen and what would be accepted. (Checks of divergence settings —
kind, beta, temperature — live with the divergences in ``losses/divergences.py``.)
"""

from __future__ import annotations

import difflib
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
