"""Reports for people: what a reduction preserved, in plain words first (DESIGN.md §9).

:func:`write_report` renders a certificate (plus optional extra facts) as Markdown, HTML or
JSON, chosen by the file suffix. The text is built only from the certificate's fields, so a
report never claims more than its certificate.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from lumpver.errors import InputError
from lumpver.fileio import write_text_atomic

_KIND_WORDS = {
    "exact": "The reduced network computes the same function as the original for every input "
             "(exact lumping), up to the stated floating-point tolerance.",
    "exact-on-set": "The reduced network computes the same function as the original on the declared "
                    "input set (and only there), up to the stated floating-point tolerance.",
    "bounded": "On the declared input set, the reduced network's outputs differ from the original's by at "
               "most the certified epsilon.",
    "statistical": "With the stated confidence over the draw of the calibration data, the reduced network's "
                   "risk is at most alpha.",
}


def summary_lines(cert: dict[str, Any]) -> list[str]:
    """Plain-language statements of what the certificate guarantees."""
    g, s = cert["guarantee"], cert["stats"]
    lines = [_KIND_WORDS[g["kind"]]]
    ft = g.get("float_tolerance")
    if ft and "discrepancy_bound" in ft:
        d = ft["discrepancy_bound"]
        lines.append(f"Sound bound on the discrepancy in real arithmetic: max_i |f_i(x) - g_i(x)| <= "
                     f"{d['a']:.3g} + {d['b']:.3g} * ||x||_inf (grouping tolerance {ft.get('grouping_tolerance')}).")
    if g.get("epsilon") is not None:
        lines.append(f"Certified epsilon: {g['epsilon']:.6g} ({g.get('norm')}).")
    pct = 100.0 * s["neurons_after"] / max(1, s["neurons_before"])
    lines.append(f"Hidden neurons: {s['neurons_before']} -> {s['neurons_after']} ({pct:.1f} % kept); "
                 f"parameters: {s['params_before']} -> {s['params_after']}.")
    lines.append("Re-check it independently with: lumpver check <certificate>.")
    return lines


def _width_rows(cert: dict[str, Any]) -> list[tuple[str, int, int]]:
    s = cert["stats"]
    return [(f"hidden {i + 1}", a, b) for i, (a, b) in enumerate(zip(s["layers_before"], s["layers_after"]))]


def to_markdown(cert: dict[str, Any], title: str = "lumpver report") -> str:
    out = [f"# {title}", "", "## What was preserved", ""]
    out += [f"- {line}" for line in summary_lines(cert)]
    out += ["", "## Models", "", "| role | file | SHA-256 |", "|---|---|---|"]
    for role in ("original", "reduced"):
        if cert.get(role):
            out.append(f"| {role} | `{cert[role]['path']}` | `{cert[role]['sha256'][:16]}...` |")
    out += ["", "## Layer widths", "", "| layer | before | after |", "|---|---:|---:|"]
    out += [f"| {n} | {a} | {b} |" for n, a, b in _width_rows(cert)]
    out += ["", "## Evidence", ""]
    for ev in cert["evidence"]:
        out.append(f"- back-end `{ev.get('backend')}`: **{ev.get('verdict')}**"
                   + (f" ({ev['reason']})" if ev.get("reason") else ""))
    out += ["", f"Reduction time: {cert['stats']['seconds']:.3f} s.", ""]
    return "\n".join(out)


def to_html(cert: dict[str, Any], title: str = "lumpver report") -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(n)}</td><td>{a}</td><td>{b}</td></tr>" for n, a, b in _width_rows(cert))
    evid = "".join(f"<li>back-end <code>{e(str(ev.get('backend')))}</code>: <b>{e(str(ev.get('verdict')))}</b></li>"
                   for ev in cert["evidence"])
    summary = "".join(f"<li>{e(line)}</li>" for line in summary_lines(cert))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #999;padding:.2em .6em}</style></head><body>"
            f"<h1>{e(title)}</h1><h2>What was preserved</h2><ul>{summary}</ul>"
            f"<h2>Layer widths</h2><table><tr><th>layer</th><th>before</th><th>after</th></tr>{rows}</table>"
            f"<h2>Evidence</h2><ul>{evid}</ul></body></html>\n")


def write_report(cert: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a report next to a certificate; the suffix picks the format (.md, .html, .json)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".md":
        text = to_markdown(cert)
    elif suffix in (".html", ".htm"):
        text = to_html(cert)
    elif suffix == ".json":
        text = json.dumps({"summary": summary_lines(cert), "certificate": cert}, indent=1) + "\n"
    else:
        raise InputError("report must end in .md, .html or .json", str(path))
    write_text_atomic(path, text)
