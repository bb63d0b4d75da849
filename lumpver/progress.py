"""Progress reporting on stderr; silenced by ``--quiet``."""
from __future__ import annotations

import sys
import threading
import time
from typing import Optional

#: when the last progress line was printed and what it said (shared by every Progress, for Heartbeat)
_LAST = {"t": time.perf_counter(), "msg": "starting"}


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
            _LAST.update(t=time.perf_counter(), msg=msg)

    def tick(self, msg: str, done: int, total: int) -> None:
        """Rate-limited line ``msg done/total``; the last step is always shown."""
        now = time.perf_counter()
        if self.quiet or (done < total and now - self._last < self.interval):
            return
        self._last = now
        self.say(f"{msg} {done}/{total}")


SILENT = Progress(quiet=True)


def note_step(msg: str) -> None:
    """Record the step reached without printing: a running :class:`Heartbeat` names it in its next line
    (for long loops with no Progress of their own, e.g. the checker's replays)."""
    _LAST["msg"] = msg


class Heartbeat:
    """Fills silence on stderr: while the body runs, a line every ``every`` seconds in which no other
    progress line was printed, saying what runs, the last step reached and the time left of
    ``limit`` seconds. A context manager; a daemon thread; nothing when ``quiet``."""

    def __init__(self, what: str, quiet: bool = False, limit: Optional[float] = None, every: float = 10.0,
                 stream=None) -> None:
        self.what, self.limit, self.every = what, limit, every
        self._progress = Progress(quiet, stream=stream)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Heartbeat":
        if not self._progress.quiet:
            _LAST.update(t=time.perf_counter())
            self._thread = threading.Thread(target=self._beat, name="lumpver-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            now = time.perf_counter()
            if now - _LAST["t"] < self.every:
                continue
            elapsed = now - self._progress._t0
            left = "" if self.limit is None else f"; time limit {self.limit:g} s, about {max(0.0, self.limit - elapsed):.0f} s left"
            msg = _LAST["msg"]
            self._progress.say(f"{self.what}: still working, {elapsed:.0f} s so far (last step: {msg}){left}")
            _LAST.update(msg=msg)
