"""Atomic output files and hashing (CONTRACT.md: temporary file, then rename).

Certificates name their model files by SHA-256. :func:`sha256_file` always hashes the file as it is
now (what checkers use); :func:`recorded_sha256` (what certificate writers use) returns the hash of the
bytes this process last read with :func:`read_bytes` or wrote with :func:`write_bytes_atomic`, when the
file is unchanged since (device, inode, size, mtime), so a model is hashed once, from memory, on a
second thread (hashlib releases the GIL) while the reduction runs. Should the file change unseen, the
certificate names the bytes actually reduced and its check fails: never a false match.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Optional

from lumpver.errors import InputError

_BACKGROUND_BYTES = 1 << 20  # smaller data is hashed at once
_MAX_RECORDED = 32


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of the file as it is now (read from disk)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Digest:
    """The SHA-256 of some bytes, computed on a thread when they are large."""

    def __init__(self, data: bytes) -> None:
        self._value: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        if len(data) < _BACKGROUND_BYTES:
            self._run(data)
        else:
            self._thread = threading.Thread(target=self._run, args=(data,), name="lumpver-sha256", daemon=True)
            self._thread.start()

    def _run(self, data: bytes) -> None:
        self._value = hashlib.sha256(data).hexdigest()

    def result(self) -> Optional[str]:
        if self._thread is not None:
            self._thread.join()
        return self._value


_recorded: dict[str, tuple[tuple, _Digest]] = {}


def _stat_key(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _record(path: str | os.PathLike, st: os.stat_result, digest: _Digest) -> None:
    """Keyed by the absolute path (no symlink resolution: another spelling of the file is a miss, hashed
    from disk)."""
    key = os.path.abspath(path)
    _recorded.pop(key, None)
    _recorded[key] = (_stat_key(st), digest)
    while len(_recorded) > _MAX_RECORDED:
        _recorded.pop(next(iter(_recorded)))


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes; their SHA-256 is recorded for :func:`recorded_sha256` (OSError as ``open``)."""
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        data = f.read()
        after = os.fstat(f.fileno())
    if _stat_key(before) == _stat_key(after):
        _record(path, after, _Digest(data))
    return data


def recorded_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the bytes last read or written at ``path`` by this process while the file is
    unchanged since, else of the file now (module docstring). For certificate writers only."""
    entry = _recorded.get(os.path.abspath(path))
    if entry is not None:
        try:
            same = _stat_key(os.stat(path)) == entry[0]
        except OSError:
            same = False
        value = entry[1].result() if same else None
        if value is not None:
            return value
    return sha256_file(path)


def check_output_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse (InputError) an output that would overwrite an input or whose folder is not writable."""
    out = Path(path)
    for p in inputs:
        if p is not None and out.resolve() == Path(p).resolve():
            raise InputError("refusing to overwrite an input file", str(out))
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError("output folder does not exist", str(out))
    if not os.access(parent, os.W_OK):
        raise InputError("output folder is not writable", str(out))
    if out.is_dir():
        raise InputError("output path is a folder", str(out))
    return out


def check_outputs(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike] = ()) -> None:
    """:func:`check_output_path` for every output, and refuse (InputError) two outputs that are one file."""
    seen: dict[Path, str] = {}
    inputs = [p for p in inputs if p is not None]
    for o in outputs:
        if o is None:
            continue
        check_output_path(o, inputs)
        key = Path(o).resolve()
        if key in seen:
            raise InputError(f"two outputs are the same file (also given as {seen[key]})", str(o))
        seen[key] = str(o)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` (fsync'd: whole after a power loss too) and
    rename it into place; the SHA-256 of ``data`` is recorded for :func:`recorded_sha256`."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise InputError(f"cannot write output: {e.strerror}", str(path)) from None
    digest = _Digest(data)  # on a thread while the data is written
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _record(path, os.stat(path), digest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, dumps_json(obj) + "\n")


def dumps_json(obj: Any, level: int = 0) -> str:
    """JSON text (no NaN/Inf) with one object member or nested list item a line, indented by one space
    a level, and each list of plain values on one line: readable, and the values go through json's C
    encoder (``indent`` would use the pure-Python one, item by item)."""
    pad, end = "\n" + " " * (level + 1), "\n" + " " * level
    if isinstance(obj, dict) and obj:
        return "{" + pad + ("," + pad).join(
            f"{json.dumps(k if isinstance(k, str) else json.dumps(k, allow_nan=False))}: {dumps_json(v, level + 1)}"
            for k, v in obj.items()) + end + "}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in obj):
        return "[" + pad + ("," + pad).join(dumps_json(v, level + 1) for v in obj) + end + "]"
    return json.dumps(obj, allow_nan=False)


class AtomicGroup:
    """Several outputs that appear together or not at all.

    ``add(path, bytes)`` stages; ``commit()`` renames all; on error nothing is left behind.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, bytes]] = []

    def add(self, path: str | os.PathLike, data: bytes | str) -> None:
        self._staged.append((Path(path), data.encode("utf-8") if isinstance(data, str) else data))

    def commit(self) -> None:
        written: list[Path] = []
        try:
            for path, data in self._staged:
                write_bytes_atomic(path, data)
                written.append(path)
        except BaseException:
            for p in written:
                try:
                    p.unlink()
                except OSError:
                    pass
            raise
