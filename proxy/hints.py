""" "Did you mean …?" for names people type: config keys, variables, policy keys."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` was most likely meant to be, if any is close enough."""
    found = difflib.get_close_matches(word, list(candidates), n=1)
    return found[0] if found else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""``."""
    hint = closest(word, candidates)
    return f"; did you mean {hint!r}?" if hint else ""
