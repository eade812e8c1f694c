"""The one exception type for user mistakes.

The CLI turns a :class:`UserError` into a single line on stderr and exit code 2, so a typo never shows a
traceback; every other exception is a bug (or a failing grid cell, which the runner records).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: an unknown name, a value out of range, a missing file."""
