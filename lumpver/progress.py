"""Progress reporting on stderr; silenced by ``--quiet``."""
from __future__ import annotations

import sys
import time


class Progress:
    """Periodic progress lines on stderr (at most one every ``interval`` seconds per task)."""

    def __init__(self, quiet: bool = False, interval: float = 1.0, stream=None) -> None:
        self.quiet = quiet
        self.interval = interval
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._t0 = time.perf_counter()

    def say(self, msg: str) -> None:
        """Always-printed (unless quiet) status line."""
        if not self.quiet:
            print(f"[lumpver {time.perf_counter() - self._t0:7.2f}s] {msg}", file=self.stream, flush=True)

    def tick(self, msg: str, done: int, total: int) -> None:
        """Rate-limited line ``msg done/total``; the last step is always shown."""
        now = time.perf_counter()
        if self.quiet or (done < total and now - self._last < self.interval):
            return
        self._last = now
        self.say(f"{msg} {done}/{total}")


SILENT = Progress(quiet=True)
