"""Certificates: the JSON record of what a reduction preserved (CONTRACT.md, DESIGN.md §9).

This module builds the common envelope and dispatches re-checking by guarantee kind. Each
kind's own evidence is produced and re-checked by the module that owns that kind; checkers
register themselves in :data:`CHECKERS` by kind (imported lazily by name).
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lumpver.errors import InputError
from lumpver.fileio import sha256_file
from lumpver.ir.network import Network

FORMAT = "lumpver-certificate/1"
KINDS = ("exact", "exact-on-set", "bounded", "statistical")

#: guarantee kind -> "module:function"; the function takes (certificate dict, CheckContext)
#: and returns a CheckReport.
CHECKERS = {
    "exact": "lumpver.certificates.exact:check_exact",
    "exact-on-set": "lumpver.certificates.onset:check_exact_on_set",
    "bounded": "lumpver.certificates.bounded:check_bounded",
    "statistical": "lumpver.certificates.statistical:check_statistical",
}


def model_stats(before: Network, after: Network, seconds: float) -> dict[str, Any]:
    """The ``stats`` block of a certificate (hidden neurons only in ``neurons_*``)."""
    return {
        "neurons_before": before.n_hidden,
        "neurons_after": after.n_hidden,
        "params_before": before.n_params,
        "params_after": after.n_params,
        "layers_before": before.hidden_widths,
        "layers_after": after.hidden_widths,
        "seconds": round(float(seconds), 6),
    }


def file_ref(path: str | os.PathLike, base: Optional[Path] = None) -> dict[str, str]:
    """``{"path", "sha256"}`` for a model file; the path is stored relative to ``base`` if given."""
    p = Path(path)
    shown = os.path.relpath(p.resolve(), base.resolve()) if base is not None else str(p)
    return {"path": shown, "sha256": sha256_file(p)}


def make_certificate(
    original: str | os.PathLike,
    reduced: str | os.PathLike,
    guarantee: dict[str, Any],
    stats: dict[str, Any],
    evidence: list[dict[str, Any]],
    cert_path: str | os.PathLike,
    **extra: Any,
) -> dict[str, Any]:
    """The certificate envelope. Model paths are stored relative to the certificate's folder."""
    base = Path(cert_path).resolve().parent
    g = {"kind": None, "input_set": None, "norm": None, "epsilon": None, "confidence": None}
    g.update(guarantee)
    if g["kind"] not in KINDS:
        raise ValueError(f"unknown guarantee kind {g['kind']!r}")
    return {
        "format": FORMAT,
        "original": file_ref(original, base),
        "reduced": file_ref(reduced, base),
        "guarantee": g,
        "stats": stats,
        "evidence": evidence,
        **extra,
    }


@dataclass
class CheckReport:
    """Outcome of re-checking a certificate."""

    holds: bool
    lines: list[str] = field(default_factory=list)  # what was checked, for people

    def fail(self, msg: str) -> "CheckReport":
        self.holds = False
        self.lines.append("FAIL: " + msg)
        return self

    def ok(self, msg: str) -> "CheckReport":
        self.lines.append("ok: " + msg)
        return self


@dataclass
class CheckContext:
    """What a kind checker needs besides the certificate: resolved file paths."""

    cert_path: Path
    original_path: Path
    reduced_path: Optional[Path]

    def resolve(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else (self.cert_path.parent / q)


def load_certificate(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a certificate file; InputError (exit 2) if unreadable or not a certificate."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read certificate: {e.strerror}", str(path)) from None
    try:
        cert = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", str(path), f"{e.lineno}:{e.colno}") from None
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise InputError(f"not a lumpver certificate (expected format {FORMAT!r})", str(path))
    for key in ("original", "reduced", "guarantee", "stats", "evidence"):
        if key not in cert:
            raise InputError(f"certificate lacks the field {key!r}", str(path))
    kind = cert["guarantee"].get("kind") if isinstance(cert["guarantee"], dict) else None
    if kind not in KINDS:
        raise InputError(f"unknown guarantee kind {kind!r}", str(path))
    return cert


def check_certificate(path: str | os.PathLike) -> CheckReport:
    """Re-check a certificate from scratch against the model files it names (``lumpver check``).

    The SHA-256 of every named file must match; then the kind's checker re-verifies the claim.
    """
    cert = load_certificate(path)
    cert_path = Path(path).resolve()
    ctx = CheckContext(cert_path, Path(), None)
    report = CheckReport(True)
    paths = {}
    for role in ("original", "reduced"):
        ref = cert[role]
        if ref is None:
            paths[role] = None
            continue
        p = ctx.resolve(ref["path"])
        if not p.exists():
            raise InputError(f"the {role} model named by the certificate is missing: {p}", str(path))
        digest = sha256_file(p)
        if digest != ref["sha256"]:
            report.fail(f"{role} model {p} has SHA-256 {digest[:16]}..., certificate says {ref['sha256'][:16]}...")
        else:
            report.ok(f"{role} model {p.name} matches its SHA-256")
        paths[role] = p
    ctx.original_path, ctx.reduced_path = paths["original"], paths["reduced"]
    module, func = CHECKERS[cert["guarantee"]["kind"]].split(":")
    checker: Callable[[dict, CheckContext], CheckReport] = getattr(importlib.import_module(module), func)
    sub = checker(cert, ctx)
    report.lines.extend(sub.lines)
    report.holds = report.holds and sub.holds
    return report
