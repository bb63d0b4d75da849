"""Certificates: the JSON record of what a reduction preserved (CONTRACT.md, DESIGN.md §9).

This module builds the common envelope and dispatches re-checking by guarantee kind to the
checkers in this package (:data:`CHECKERS`). Every leaf field of the ``guarantee`` block is a
claim: a checker *confirms* each field it verified against its own recomputation
(:meth:`CheckReport.confirm`, :func:`check_bound`); after the checker ran, any non-null field
left unconfirmed fails the certificate, named by its path (``guarantee.float_tolerance.x``).

Format ``lumpver-certificate/2`` (written now) and ``/1`` (read) have the same fields; version 2
means the guarantee block is checked field by field, which version-1 certificates also pass
when their claims are true.
"""
from __future__ import annotations

import importlib
import json
import os
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lumpver.errors import InputError
from lumpver.fileio import recorded_sha256, sha256_file
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.network import Network

FORMAT = "lumpver-certificate/2"
#: versions ``lumpver check`` reads
READABLE_FORMATS = ("lumpver-certificate/1", FORMAT)
KINDS = ("exact", "exact-on-set", "bounded", "statistical")

#: guarantee kind -> "module:function"; the function takes (certificate dict, CheckContext)
#: and returns a CheckReport. Looked up by name because the checker modules import this one
#: (CheckReport, CheckContext): importing them here at the top would be an import cycle.
CHECKERS = {
    "exact": "lumpver.certificates.exact:check_exact",
    "exact-on-set": "lumpver.certificates.onset:check_exact_on_set",
    "bounded": "lumpver.certificates.bounded:check_bounded",
    "statistical": "lumpver.certificates.statistical:check_statistical",
}


def model_stats(before: Network | GraphNetwork, after: Network | GraphNetwork, seconds: float) -> dict[str, Any]:
    """The ``stats`` block of a certificate (hidden neurons only in ``neurons_*``; chains or graphs)."""
    return {
        "neurons_before": before.n_hidden,
        "neurons_after": after.n_hidden,
        "params_before": before.n_params,
        "params_after": after.n_params,
        "layers_before": before.hidden_widths,
        "layers_after": after.hidden_widths,
        **({} if before.is_dense and isinstance(before, Network) else {"channels_before": before.hidden_channels,
                                        "channels_after": after.hidden_channels}),
        "seconds": round(float(seconds), 6),
    }


def file_ref(path: str | os.PathLike, base: Optional[Path] = None) -> dict[str, str]:
    """``{"path", "sha256"}`` for a model file; the path is stored relative to ``base`` if given."""
    p = Path(path)
    shown = os.path.relpath(p.resolve(), base.resolve()) if base is not None else str(p)
    return {"path": shown, "sha256": recorded_sha256(p)}  # hashed once, from the bytes read or written


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
    confirmed: set[str] = field(default_factory=set)  # guarantee fields (dotted paths) confirmed

    def confirm(self, path: str, msg: str = "") -> "CheckReport":
        """Mark ``guarantee.<path>`` (and everything below it) as confirmed by the checker."""
        self.confirmed.add(path)
        return self.ok(f"guarantee.{path}: {msg}") if msg else self

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
    if not isinstance(cert, dict) or cert.get("format") not in READABLE_FORMATS:
        raise InputError(f"not a lumpver certificate (expected format {' or '.join(READABLE_FORMATS)})", str(path))
    for key in ("original", "reduced", "guarantee", "stats", "evidence"):
        if key not in cert:
            raise InputError(f"certificate lacks the field {key!r}", str(path))
    kind = cert["guarantee"].get("kind") if isinstance(cert["guarantee"], dict) else None
    if kind not in KINDS:
        raise InputError(f"unknown guarantee kind {kind!r}", str(path))
    return cert


#: processes a checker may use for independent re-computations (``lumpver check --workers``: the phase trees
#: of ``bab_diff`` evidence, :mod:`lumpver.certificates.bounded_bab`); set by :func:`check_certificate`
REPLAY_WORKERS: ContextVar[int] = ContextVar("replay_workers", default=1)


def check_certificate(path: str | os.PathLike, workers: int = 1) -> CheckReport:
    """Re-check a certificate from scratch against the model files it names (``lumpver check``), with
    ``workers`` processes where a checker can use them (:data:`REPLAY_WORKERS`).

    The SHA-256 of every named file must match; then the kind's checker re-verifies the claim.
    """
    token = REPLAY_WORKERS.set(max(1, int(workers)))
    try:
        return _check_certificate(path)
    finally:
        REPLAY_WORKERS.reset(token)


def _check_certificate(path: str | os.PathLike) -> CheckReport:
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
    if sub.holds:
        sub.confirm("kind")
        for name in unconfirmed_fields(cert["guarantee"], sub.confirmed):
            report.fail(f"guarantee.{name}: the {cert['guarantee']['kind']} checker does not confirm this field")
    return report


def _leaves(block: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the non-null leaf fields of a (nested) dict."""
    if not isinstance(block, dict):
        return [] if block is None else [prefix]
    return [p for k, v in block.items() for p in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]


def unconfirmed_fields(guarantee: dict[str, Any], confirmed: set[str]) -> list[str]:
    """Non-null leaf fields of ``guarantee`` not covered by a confirmed path (null claims nothing)."""
    return [p for p in _leaves(guarantee)
            if not any(p == c or p.startswith(c + ".") for c in confirmed)]


#: relative allowance when comparing a claimed bound with the checker's recomputation
#: (the two may sum the same sound terms in a different order)
BOUND_REL = 1e-6


def check_bound(report: CheckReport, guarantee: dict[str, Any], path: str, proven: float) -> bool:
    """Confirm the claimed bound at ``guarantee.<path>`` if it is not below ``proven`` (else fail).

    A claim that is missing, not a number or tighter than what the checker recomputed fails
    with a message naming the field."""
    claimed: Any = guarantee
    for key in path.split("."):
        claimed = claimed.get(key) if isinstance(claimed, dict) else None
    if isinstance(claimed, bool) or not isinstance(claimed, (int, float)):
        report.fail(f"guarantee.{path}: expected a number, found {claimed!r}")
        return False
    if not (proven <= claimed * (1 + BOUND_REL) + 1e-300):
        report.fail(f"guarantee.{path}: claimed {claimed:.6g} but the evidence proves only {proven:.6g}")
        return False
    report.confirm(path, f"claimed {claimed:.6g} >= recomputed {proven:.6g}")
    return True


def check_equal(report: CheckReport, guarantee: dict[str, Any], path: str, expected: Any, why: str) -> bool:
    """Confirm ``guarantee.<path> == expected`` (``why`` says where ``expected`` comes from)."""
    value: Any = guarantee
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value != expected:
        report.fail(f"guarantee.{path}: claimed {value!r} but {why} is {expected!r}")
        return False
    report.confirm(path, f"{value!r} ({why})")
    return True


def confirm_prose(report: CheckReport, guarantee: dict[str, Any], paths: tuple[str, ...]) -> None:
    """Accept the human-readable ``statement`` fields at ``paths`` (when strings): they explain the
    numeric fields, which carry the claim and are checked on their own."""
    for path in paths:
        value: Any = guarantee
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            report.confirm(path)


def confirm_discrepancy(report: CheckReport, guarantee: dict[str, Any], a: float, b: float, tol: float) -> CheckReport:
    """The exact-lumping guarantee ``max_i |f_i(x) - g_i(x)| <= a + b ||x||_inf`` (DESIGN.md §2), with
    ``a``, ``b`` recomputed by the caller: the claimed bound, tolerance, norm and statement confirmed."""
    report.ok(f"for all x: max_i |f_i(x) - g_i(x)| <= {a:.3e} + {b:.3e}*||x||_inf (real arithmetic, recomputed)")
    check_bound(report, guarantee, "float_tolerance.discrepancy_bound.a", a)
    check_bound(report, guarantee, "float_tolerance.discrepancy_bound.b", b)
    check_equal(report, guarantee, "float_tolerance.grouping_tolerance", tol, "the evidence's grouping tolerance")
    check_equal(report, guarantee, "norm", "linf", "the norm of the recomputed bound")
    confirm_prose(report, guarantee, ("float_tolerance.discrepancy_bound.statement", "statement"))
    return report
