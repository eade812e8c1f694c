"""The one exception type for user mistakes.

The CLI turns a :class:`UserError` into a single line on stderr and exit code 2, so a typo never shows a
traceback; every other exception is a bug (or a failing grid cell, which the runner records).
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input from the user: an unknown name, a value out of range, a missing file."""


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.5) -> str:
    """The hint every unknown-name message carries: `` Did you mean: a, b?`` naming up to ``n`` of ``choices``
    closest to ``word`` (:func:`difflib.get_close_matches`), or an empty string when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)
    return f" Did you mean: {', '.join(close)}?" if close else ""
