"""Atomic output files and hashing (CONTRACT.md: temporary file, then rename)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from lumpver.errors import InputError


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise InputError(f"cannot write output: {e.strerror}", str(path)) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


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
