"""One runner per output folder (a second `cleanbench run` on it is refused, naming the holder), and short locks
for the results file that the runner's workers share."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from benchmark.distributed import world
from benchmark.errors import UserError
from benchmark.results import ResultsFile


class OutputLock:
    """An exclusive ``fcntl`` lock on ``<out>/.lock``, released when the process ends (even by SIGKILL)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / ".lock"
        self.handle = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{self.path.parent} is in use by {holder}; wait for it or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


class SharedResults:
    """``results.csv`` as several writers share it (grid workers, Slurm jobs): each upsert holds an exclusive
    lock on ``<out>/.results.lock`` only while it re-reads the file, adds its row and rewrites it, so concurrent
    writers never lose each other's rows. Under DDP only rank 0 writes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def upsert(self, row: dict) -> None:
        """Add or replace ``row`` (keyed by its ``cell_id``) in the shared file."""
        if not world().is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / ".results.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # blocks briefly; released on close, or when the process dies
            try:
                ResultsFile(self.path).upsert(row)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
