"""Facts a report states besides the certificates' own words (DESIGN.md §9): provenance (tool
version, date, command line), the input set in a few lines, every bound on the difference with its
meaning, and numbers printed without losing what they claim.

Numbers: 9 significant digits; a certified *upper* bound is rounded up and an attained *lower*
bound down, so a printed bound is never stronger than the computed one.
"""
from __future__ import annotations

import datetime as _dt
import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Optional

import numpy as np

from lumpver import __version__
from lumpver.specs.inputset import Box, InputSet

DIGITS = 9
#: at most this many regions are described one by one
MAX_REGIONS_SHOWN = 4
#: boxes of at most this many inputs list every interval
MAX_INTERVALS_SHOWN = 8


# ----- numbers ---------------------------------------------------------------------------------
def _rounded(v: float, mode: str) -> str:
    if not math.isfinite(v) or v == 0:
        return repr(float(v))
    exp = Decimal(repr(float(v))).adjusted()
    q = Decimal(1).scaleb(exp - DIGITS + 1)
    d = Decimal(repr(float(v))).quantize(q, rounding=mode)
    return f"{float(d):.{DIGITS}g}"


def num(v: Any) -> str:
    """A number at full useful precision (9 significant digits), '-' for None."""
    if v is None:
        return "-"
    if isinstance(v, (bool, int, np.integer)):
        return str(int(v))
    return f"{float(v):.{DIGITS}g}"


def num_up(v: Optional[float]) -> str:
    """An upper bound, rounded up to 9 significant digits."""
    return "-" if v is None else _rounded(float(v), ROUND_CEILING)


def num_down(v: Optional[float]) -> str:
    """A lower bound, rounded down to 9 significant digits."""
    return "-" if v is None else _rounded(float(v), ROUND_FLOOR)


# ----- provenance ------------------------------------------------------------------------------
def provenance(command: Optional[str] = None) -> dict[str, str]:
    """Tool version, UTC date and the command line (or 'Python API') that produced a report."""
    return {"tool": f"lumpver {__version__}",
            "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "command": command or "Python API (lumpver.reports.render.write_report)"}


def provenance_line(doc: dict[str, Any]) -> str:
    p = doc.get("provenance") or {}
    return f"Made by {p.get('tool', 'lumpver')} on {p.get('date', '?')} with `{p.get('command', '?')}`."


# ----- input set -------------------------------------------------------------------------------
def input_set_summary(source: InputSet | dict[str, Any] | None, declared_file: Optional[str] = None) -> Optional[dict]:
    """A short JSON view of an input set: file, dimension, regions and a box summary of each
    (the full set is in the certificates). ``source``: an InputSet or its ``to_json()``."""
    if source is None:
        return None
    if isinstance(source, dict):
        if "summary" in source:  # already a summary
            return source
        source = InputSet.from_json(source)
    regions = [_region_summary(r) for r in source.regions[:MAX_REGIONS_SHOWN]]
    return {"summary": True, "file": declared_file or source.source, "dim": source.dim,
            "regions": len(source.regions), "shown": regions}


def _region_summary(r) -> dict[str, Any]:
    box = r if isinstance(r, Box) else r.bounding_box
    out: dict[str, Any] = {"type": "box" if isinstance(r, Box) else "polytope"}
    if not isinstance(r, Box):
        out["constraints"] = int(r.A.shape[0])
    if box is None:
        return out
    lo, hi = box.lower, box.upper
    out.update(lower_min=float(lo.min()), lower_max=float(lo.max()), upper_min=float(hi.min()),
               upper_max=float(hi.max()), width_min=float((hi - lo).min()), width_max=float((hi - lo).max()))
    if lo.size <= MAX_INTERVALS_SHOWN:
        out["intervals"] = [[float(a), float(b)] for a, b in zip(lo, hi)]
    return out


def input_set_lines(summary: Optional[dict[str, Any]], kind: Optional[str] = None) -> list[str]:
    """The input set in words: file, dimension, each region's box."""
    if summary is None:
        if kind == "exact":
            return ["No input set: the exact guarantee holds for every input."]
        return ["No input set was declared."]
    if "summary" not in summary:
        summary = input_set_summary(summary)
    head = (f"File `{summary['file']}`: " if summary.get("file") else "") + \
        f"{summary['regions']} region(s) in {summary['dim']} input dimension(s) (raw model inputs)."
    lines = [head]
    for k, r in enumerate(summary["shown"], start=1):
        lines.append(f"Region {k}: " + _region_words(r))
    if summary["regions"] > len(summary["shown"]):
        lines.append(f"... and {summary['regions'] - len(summary['shown'])} more region(s) (listed in the certificates).")
    return lines


def _region_words(r: dict[str, Any]) -> str:
    what = "box" if r["type"] == "box" else f"polytope of {r.get('constraints')} constraint(s) A x <= b"
    if "lower_min" not in r:
        return what + " (no bounding box declared)."
    if "intervals" in r:
        box = ", ".join(f"x{i} in [{num(a)}, {num(b)}]" for i, (a, b) in enumerate(r["intervals"]))
    else:
        box = (f"lower bounds from {num(r['lower_min'])} to {num(r['lower_max'])}, upper bounds from "
               f"{num(r['upper_min'])} to {num(r['upper_max'])}, widths from {num(r['width_min'])} to {num(r['width_max'])}")
    return f"{what}" + (" within the box " if r["type"] != "box" else " ") + box + "."


# ----- every bound on the difference -----------------------------------------------------------
def bound_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every bound the document holds on ``sup_X ||f - g||`` (f the original, g the final model):
    ``{"label", "kind": "certified upper" | "attained lower", "value", "meaning"}``."""
    rows: list[dict[str, Any]] = []
    ov = doc.get("overall") or {}
    cert_bound = ov.get("bound_on_set") if ov.get("bound_on_set") is not None else (ov.get("a") if not ov.get("b") else None)
    if cert_bound is not None and ov.get("kind") != "exact":
        rows.append({"label": "certificates", "kind": "certified upper", "value": float(cert_bound),
                     "meaning": "max_i |f_i - g_i| on the input set, composed from the certificates and re-checked "
                                "by `lumpver check` (exact real arithmetic of the stored weights)"})
    for b in doc.get("backends", []):
        if b.get("upper_bound") is not None and b.get("verdict") != "violated":
            rows.append({"label": b["backend"], "kind": "certified upper", "value": float(b["upper_bound"]),
                         "meaning": f"{b['backend']}'s certified bound on ||f - g||_{b.get('norm')} over the input set"})
        if b.get("lower_bound") is not None and (b["lower_bound"] > 0 or b["backend"] == "falsify"):  # 0: trivial
            rows.append({"label": b["backend"], "kind": "attained lower", "value": float(b["lower_bound"]),
                         "meaning": f"||f(x) - g(x)||_{b.get('norm')} attained at an input the {b['backend']} search "
                                    "found (onnxruntime): the worst case is at least this"})
    return rows


def bounds_caption(rows: list[dict[str, Any]], epsilon: Optional[float]) -> str:
    """A caption that says what the plot shows and nothing more."""
    ups = [r["value"] for r in rows if r["kind"] == "certified upper"]
    lows = [r["value"] for r in rows if r["kind"] == "attained lower"]
    text = ("Every bound on the worst-case difference sup_x ||f(x) - g(x)|| over the input set between the original "
            "f and the final model g. Down triangles: certified upper bounds; up triangles: values attained at "
            "actual inputs (lower bounds).")
    if ups and lows:
        text += f" The worst case lies in [{num_down(max(lows))}, {num_up(min(ups))}]."
    elif ups:
        text += f" The worst case is at most {num_up(min(ups))}."
    elif lows:
        text += f" No upper bound was certified; the worst case is at least {num_down(max(lows))}."
    if epsilon is not None:
        text += (f" The dashed line is the tolerance epsilon = {num(epsilon)} the back-ends were asked to check, "
                 "not a measured error.")
    return text


# ----- sizes -----------------------------------------------------------------------------------
def sparsity(nonzero: Optional[int], total: Optional[int]) -> Optional[float]:
    """Fraction of zero parameters, or None when unknown."""
    if nonzero is None or not total:
        return None
    return 1.0 - nonzero / total
