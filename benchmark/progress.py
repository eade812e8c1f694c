"""Progress for people and for logs: rich bars on a terminal, one plain line per finished stage everywhere.

CI logs show no live bars, so the plain line is the record; the bars are a convenience on a terminal. While a bar
is drawn, lines are printed through its console, above it, so they never overwrite it (worker processes hand theirs
to the coordinator's reporter: :mod:`benchmark.runner.executors`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

Advance = Callable[..., None]


class Reporter:
    """Hands out progress tasks and writes stage lines; ``Reporter.silent()`` does neither (tests, libraries)."""

    def __init__(self, console=None, live: bool | None = None, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = console
        self.live = (sys.stderr.isatty() if live is None else live) and not quiet
        self._progress = None

    @classmethod
    def silent(cls) -> "Reporter":
        return cls(quiet=True)

    def log(self, message: str) -> None:
        """One plain, timestamped line (stderr), kept in CI logs."""
        if self.quiet:
            return
        self.write(f"[{time.strftime('%H:%M:%S')}] {message}")

    def write(self, line: str) -> None:
        """Print one finished line: above the live bar, through its console, while one is drawn (a line printed
        past it would be drawn over), else on this reporter's console or stderr."""
        progress = self._progress
        if progress is not None:
            progress.console.print(line, markup=False, highlight=False)
        elif self.console is not None:
            self.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        """A progress bar for ``total`` steps; yields ``advance(n, **fields)``."""
        if not self.live:
            yield lambda *args, **kwargs: None
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("left"),
                      TimeRemainingColumn(), transient=True, console=self.console) as progress:
            task_id = progress.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: float) -> None:
                if not fields:  # the fields shown stay until new ones come
                    progress.update(task_id, advance=n)
                    return
                info = " ".join(f"{k}={v:.4g}" for k, v in fields.items())
                progress.update(task_id, advance=n, info=info)

            outer, self._progress = self._progress, progress
            try:
                yield advance
            finally:
                self._progress = outer
