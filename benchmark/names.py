"""The one rule for names, and the one guard for the CSV cells the project writes.

Attack, defense and preset names end up in results files, CSV tables, HTML, log lines and the commands users copy,
and they come from plugins, preset files, bundles and results files made by others. So every name, wherever it
comes from, must match :data:`NAME_PATTERN`: 1 to 64 characters, lowercase letters, digits and ``- _ . +``,
starting with a letter or a digit, with no ``..``. Such a name cannot climb out of a folder, carry markup, or
start a spreadsheet formula (``+`` is allowed inside a name only, never first).

Free text (reasons, configs, docstrings) stays free; :func:`csv_safe` neutralises a CSV cell that a spreadsheet
would read as a formula (OWASP "CSV Injection": a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return gets a leading ``'``), so the tables the leaderboard writes are safe to open. Numbers such as
``-0.05`` are data, not formulas, and are left as they are.
"""

from __future__ import annotations

import re
from typing import Any

from benchmark.errors import UserError

NAME_PATTERN = r"[a-z0-9][a-z0-9_.+-]{0,63}"
NAME_RULE = "use 1-64 lowercase letters, digits and - _ . + starting with a letter or digit (no '..')"
_NAME = re.compile(NAME_PATTERN)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def is_name(name: object) -> bool:
    """Whether ``name`` is an allowed attack, defense or preset name (:data:`NAME_PATTERN`)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def check_name(kind: str, name: object, source: str) -> None:
    """Refuse, in one line, a ``kind`` name from ``source`` that does not match :data:`NAME_PATTERN`."""
    if not is_name(name):
        raise UserError(f"{kind} name {_shown(name)} from {source} is not allowed: {NAME_RULE}")


def _shown(name: object) -> str:
    """The refused name as the message shows it: repr (no raw control characters), cut short."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def csv_safe(value: Any) -> Any:
    """``value`` as a CSV cell no spreadsheet evaluates: a text cell starting with a formula character (and not
    a number) gets a leading ``'``; everything else is returned unchanged."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START) or _is_number(value):
        return value
    return "'" + value


def _is_number(text: str) -> bool:
    if text != text.strip():  # float() ignores surrounding whitespace; a spreadsheet may not
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True
