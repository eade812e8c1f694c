"""Failpoints: named places where a test can SIGKILL the process, to prove a crash anywhere is recoverable.

A SIGKILL runs no cleanup (no ``finally``, no ``atexit``), like the OOM killer or a lost machine, so it is the
honest way to test that a rerun after a crash redoes exactly the interrupted work, loses or duplicates no row,
and never loads a partial checkpoint. Two environment variables drive it:

* ``CLEANBENCH_FAILPOINT=NAME:N`` kills the process the N-th time (1-based) it reaches ``failpoint(NAME)``;
* ``CLEANBENCH_FAILPOINT_TRACE=FILE`` appends each name reached to FILE, one a line, so a test can count how
  often an uninterrupted run reaches each point and pick kill points that will be reached.

Unset (every normal run), a failpoint costs two environment look-ups: nothing next to a training step or a
file write. The points are listed in :data:`POINTS`.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "CLEANBENCH_FAILPOINT"
TRACE_ENV = "CLEANBENCH_FAILPOINT_TRACE"
POINTS = {
    "train-step": "inside a training step: loss computed and back-propagated, weights not yet updated",
    "before-rename:<file>": "an atomic write's temporary file written and fsynced, not yet renamed over <file>",
    "checkpoint-saved": "a victim's checkpoint renamed into place, its meta.json (with the checksum) not yet written",
    "row-appended": "a cell's row written to results.csv, the next cell not yet started",
}

_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Kill this process with SIGKILL if ``CLEANBENCH_FAILPOINT`` names this point and this hit."""
    armed, trace = os.environ.get(ENV), os.environ.get(TRACE_ENV)
    if not armed and not trace:
        return
    _hits[name] += 1
    if trace:
        with open(trace, "a") as handle:
            handle.write(name + "\n")
    if armed:
        point, _, count = armed.rpartition(":")
        if point == name and count.isdigit() and _hits[name] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
