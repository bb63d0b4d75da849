"""Reports for people: what a reduction preserved and how it was proved (DESIGN.md §9).

A report renders a *report document*: a JSON-able dict built only from certificates, their
independent re-checks and back-end verdicts, so a report never claims more than its evidence.

* :func:`document_from_certificate` — the document of one certificate (``lumpver reduce --report``);
* :func:`lumpver.api.run.run_spec` builds the document of a spec run (several chained steps);
* :func:`to_markdown`, :func:`to_html` (one self-contained file, figures embedded as base64 PNG,
  no scripts), :func:`to_json`; :func:`write_report` picks the format by suffix.

Document fields: ``format``, ``title``, ``model`` (original), ``input_set``, ``steps`` (each
``{"method", "certificate", "certificate_path", "model_path", "recheck"}``), ``backends``
(verdicts of the declared back-ends on the final model), ``overall`` (see :func:`overall`),
``seconds``.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Optional

from lumpver.errors import InputError
from lumpver.fileio import write_text_atomic
from lumpver.reports import plots
from lumpver.reports.facts import (bound_rows, bounds_caption, input_set_lines, input_set_summary, num, num_down,
                                   num_up, provenance, provenance_line, sparsity)
from lumpver.reports.plots import data_uri

REPORT_FORMAT = "lumpver-report/1"

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
#: strength order of guarantee kinds: a chain is as weak as its weakest link
_ORDER = {"exact": 0, "exact-on-set": 1, "bounded": 2, "statistical": 3}


# ----- plain words ---------------------------------------------------------------------------
def summary_lines(cert: dict[str, Any]) -> list[str]:
    """Plain-language statements of what one certificate guarantees."""
    g, s = cert["guarantee"], cert["stats"]
    lines = [_KIND_WORDS[g["kind"]]]
    ft = g.get("float_tolerance")
    if isinstance(ft, dict) and isinstance(ft.get("discrepancy_bound"), dict):
        d = ft["discrepancy_bound"]
        lines.append(f"Sound bound on the discrepancy in real arithmetic: max_i |f_i(x) - g_i(x)| <= "
                     f"{num_up(d['a'])} + {num_up(d['b'])} * ||x||_inf (grouping tolerance {ft.get('grouping_tolerance')}).")
    elif g["kind"] == "exact-on-set" and isinstance(ft, dict) and ft.get("discrepancy_bound") is not None:
        lines.append(f"Sound bound on the discrepancy on the input set, in real arithmetic: "
                     f"max_i |f_i(x) - g_i(x)| <= {num_up(ft['discrepancy_bound'])}.")
    elif g.get("epsilon") is not None:
        lines.append(f"Certified epsilon: {num_up(g['epsilon'])} ({g.get('norm')}).")
    if g["kind"] == "statistical" and g.get("statement"):
        lines.append(str(g["statement"]).capitalize() + ".")
    pct = 100.0 * s["neurons_after"] / max(1, s["neurons_before"])
    lines.append(f"Hidden neurons: {s['neurons_before']} -> {s['neurons_after']} ({pct:.1f} % kept); "
                 f"parameters: {s['params_before']} -> {s['params_after']}.")
    return lines


def how_proved(ev: dict[str, Any]) -> str:
    """One sentence on how an evidence entry establishes its claim."""
    backend = ev.get("backend")
    if ev.get("step") == "on-set":
        n_in = sum(len(layer.get("stably_inactive", [])) for layer in ev.get("layers", []))
        n_fold = sum(len(layer.get("folded", [])) for layer in ev.get("layers", []))
        return (f"Bound propagation ({ev.get('method')}{' + LP' if ev.get('lp') else ''}, {ev.get('n_leaves')} "
                f"input sub-region(s)) proved {n_in} neuron(s) stably inactive on the input set (removed) and "
                f"folded {n_fold} stably linear neuron(s) into a basis of the others (linear lumping, DESIGN.md §3); "
                f"sound discrepancy bound {num_up(ev.get('discrepancy', 0))}.")
    if backend == "lumping" and "claim" in ev:
        layers = ev["claim"].get("layers", [])
        kept = sum(sum(1 for k in layer.get("kept", []) if k) for layer in layers)
        consts = sum(len(layer["constant"]) if isinstance(layer.get("constant"), dict)  # channel claims
                     else sum(1 for c in layer.get("class_of", []) if c < 0) for layer in layers)
        dead = sum(sum(1 for k in layer.get("kept", []) if not k) for layer in layers)
        unit = "channel" if layers and layers[0].get("unit") == "channel" else "neuron"
        where = ("conv/dense node of the operator graph (a residual Add or a Concat merges only classes its inputs "
                 "agree on, DESIGN.md §10)" if ev["claim"].get("unit") == "graph-channel" else "hidden layer")
        return (f"Exact lumping (DESIGN.md §2): the {unit}s of each {where} were partitioned into classes with "
                f"proportional class-aggregated signatures; {kept} class(es) kept, {consts} constant {unit}(s) "
                f"folded into biases, {dead} dead class(es) dropped. The partition and scales are in the "
                f"certificate and the checker replays the quotient.")
    if backend == "learn-then-test":
        lvl = ev.get("chosen_level")
        return (f"Learn then Test (DESIGN.md §7) on n = {ev.get('n')} calibration examples, {ev.get('pvalue')} "
                f"p-values, {ev.get('procedure')}: largest pruning level whose risk is certified <= alpha = "
                f"{ev.get('alpha')} at confidence {ev.get('confidence')}: "
                + (f"{lvl}." if lvl is not None else "none (abstained)."))
    if backend == "sampling":
        return (f"Largest error seen by onnxruntime on sampled points of the input set: {num_down(ev.get('lower_bound', 0))} "
                "(a lower bound of the true worst case).")
    if backend == "reduction":
        params = ", ".join(f"{k} = {v}" for k, v in ev.items()
                           if k not in ("backend", "verdict", "method", "trials") and not isinstance(v, (list, dict)))
        return f"Reduction method {ev.get('method')}" + (f" ({params})." if params else ".")
    bits = [f"Back-end {backend}: {ev.get('verdict')}"]
    if ev.get("upper_bound") is not None:
        bits.append(f"certified upper bound {num_up(ev['upper_bound'])}")
    if ev.get("lower_bound") is not None:
        bits.append(f"attained lower bound {num_down(ev['lower_bound'])}")
    if ev.get("reason"):
        bits.append(str(ev["reason"]))
    return "; ".join(bits) + "."


def _step_discrepancy(cert: dict[str, Any]) -> Optional[tuple[float, float]]:
    """``(a, b)`` with ``|f - g| <= a + b ||x||_inf`` (b = 0 for set-wise bounds), or None for statistical."""
    g = cert["guarantee"]
    ft = g.get("float_tolerance") or {}
    d = ft.get("discrepancy_bound") if isinstance(ft, dict) else None
    if isinstance(d, dict):
        return float(d["a"]), float(d["b"])
    if isinstance(d, (int, float)):
        return float(d), 0.0
    if g["kind"] == "bounded" and g.get("epsilon") is not None and g.get("norm") in ("linf", "l1", "l2"):
        return float(g["epsilon"]), 0.0  # every listed norm dominates the max-abs difference
    return None


def overall(steps: list[dict[str, Any]], xmax: Optional[float] = None) -> dict[str, Any]:
    """The guarantee of a chain of steps (original -> step 1 -> ... -> final), in words.

    By the triangle inequality the per-step discrepancy bounds add up on the inputs where all of
    them hold. A chain is as weak as its weakest kind; a statistical step does not compose with
    the others, so then only the per-step statements hold. ``xmax`` (the largest ``||x||_inf`` on
    the declared input set) turns ``a + b ||x||_inf`` into one number on that set.
    """
    certs = [s["certificate"] for s in steps if s.get("certificate")]
    if not certs:
        return {"kind": None, "statement": "No reduction step produced a certificate.", "holds": None}
    missing = [str(s.get("index", i)) for i, s in enumerate(steps, start=1) if not s.get("certificate")]
    if missing:
        return {"kind": None, "holds": None, "steps": len(steps), "statement": (
            f"Step(s) {', '.join(missing)} have no certificate, so no guarantee covers the whole chain; "
            "each certified step's own guarantee holds as stated.")}
    kind = max((c["guarantee"]["kind"] for c in certs), key=_ORDER.__getitem__)
    rechecked = [s.get("recheck") for s in steps if s.get("certificate")]
    if any(r is not None and r.get("holds") is False for r in rechecked):
        holds = False
    elif any(r is None for r in rechecked):  # re-check not run
        holds = None
    else:
        holds = True
    out: dict[str, Any] = {"kind": kind, "holds": holds, "steps": len(certs)}
    if kind == "statistical":
        out["statement"] = ("The chain contains a statistical step: each step's own guarantee holds as stated; "
                            "they are not combined into one.")
        return out
    parts = [_step_discrepancy(c) for c in certs]
    if any(p is None for p in parts):
        out["statement"] = "Each step's guarantee holds as stated; they are not combined into one."
        return out
    a, b = sum(p[0] for p in parts), sum(p[1] for p in parts)
    where = "for every input x" if kind == "exact" else "for every x in the declared input set"
    bound = num_up(a) + (f" + {num_up(b)} * ||x||_inf" if b else "")
    if kind != "exact" and xmax is not None and b:
        out["bound_on_set"] = a + b * xmax
        bound += f" <= {num_up(a + b * xmax)} (||x||_inf <= {num(xmax)} on the set)"
    out.update({"a": a, "b": b, "statement": (
        f"{_KIND_WORDS[kind]} Composed over {len(certs)} step(s) by the triangle inequality: {where}, "
        f"max_i |f_i(x) - g_i(x)| <= {bound}, in exact real arithmetic of the stored weights.")})
    return out


# ----- documents -----------------------------------------------------------------------------
def document_from_certificate(cert: dict[str, Any], title: str = "lumpver report",
                              recheck: Optional[dict[str, Any]] = None,
                              sizes: Optional[dict[str, int]] = None) -> dict[str, Any]:
    """The report document of one certificate; ``sizes``: file bytes of ``original`` and ``reduced``."""
    sizes = sizes or {}
    steps = [{"method": cert["guarantee"]["kind"], "certificate": cert, "recheck": recheck,
              "model_path": cert["reduced"]["path"] if cert.get("reduced") else None, "bytes": sizes.get("reduced")}]
    summary = input_set_summary(cert["guarantee"].get("input_set"))
    return {"format": REPORT_FORMAT, "title": title, "model": {"path": cert["original"]["path"],
            "sha256": cert["original"]["sha256"], "hidden_widths": cert["stats"]["layers_before"],
            "bytes": sizes.get("original")},
            "input_set": summary, "steps": steps, "backends": [], "overall": overall(steps, _xmax(summary)),
            "seconds": cert["stats"]["seconds"],
            # kept for readers of the first report format
            "summary": summary_lines(cert), "certificate": cert}


def _xmax(summary: Optional[dict[str, Any]]) -> Optional[float]:
    """Largest ``||x||_inf`` on the set, when every region is summarised with a box."""
    if summary is None or summary["regions"] != len(summary["shown"]) or any("lower_min" not in r for r in summary["shown"]):
        return None
    return max(max(abs(r["lower_min"]), abs(r["upper_max"])) for r in summary["shown"])


def _stats(step: dict[str, Any]) -> Optional[dict[str, Any]]:
    """A step's size statistics (its own record, else its certificate's)."""
    if step.get("stats"):
        return step["stats"]
    return step["certificate"]["stats"] if step.get("certificate") else None


def _all_stats(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [st for st in map(_stats, doc["steps"]) if st is not None]


def _final_stats(doc: dict[str, Any]) -> Optional[tuple[list[int], list[int], dict[str, Any], dict[str, Any]]]:
    stats = _all_stats(doc)
    if not stats:
        return None
    return stats[0]["layers_before"], stats[-1]["layers_after"], stats[0], stats[-1]


def headline(doc: dict[str, Any]) -> list[str]:
    """The first paragraph of a report: what the run produced and what holds, in plain words."""
    fs = _final_stats(doc)
    if fs is None:
        return ["No reduction was made."]
    _, _, first, last = fs
    n0, n1 = first["neurons_before"], last["neurons_after"]
    p0, p1 = first["params_before"], last["params_after"]
    final = next((s.get("model_path") for s in reversed(doc["steps"]) if s.get("model_path")), None)
    lines = [f"The reduced network{f' `{final}`' if final else ''} has {n1} hidden neurons instead of {n0} "
             f"({100.0 * n1 / max(1, n0):.1f} % kept)" + _channel_words(doc) + f" and {p1} parameters instead of {p0}"
             + (f" ({last['nonzero_params_after']} of them nonzero, {first['nonzero_params_before']} before; "
                f"sparsity {_pct(sparsity(last['nonzero_params_after'], p1))})"
                if "nonzero_params_after" in last and "nonzero_params_before" in first else "") + _bytes_words(doc) + "."]
    ov = doc.get("overall") or {}
    if ov.get("statement"):
        lines.append(ov["statement"])
    if ov.get("holds") is True:
        lines.append("Every certificate was re-checked independently from the model files (`lumpver check`): it holds.")
    elif ov.get("holds") is False:
        lines.append("WARNING: a certificate did NOT re-check; do not rely on this reduction.")
    for b in doc.get("backends", []):
        lines.append(_backend_sentence(b))
    return lines


def _channel_series(stats: list[dict[str, Any]]) -> Optional[list[list[int]]]:
    """Channels per hidden layer: original, then after each step (None unless every step has them)."""
    if not stats or not all("channels_before" in st and "channels_after" in st for st in stats):
        return None
    return [stats[0]["channels_before"]] + [st["channels_after"] for st in stats]


def _channel_words(doc: dict[str, Any]) -> str:
    series = _channel_series(_all_stats(doc))
    if series is None:
        return ""
    c0, c1 = series[0], series[-1]
    return (f", {sum(c1)} channels instead of {sum(c0)} (per hidden layer {c1} instead of {c0}; a conv layer's "
            "channel is one filter, a dense layer's is one neuron)")


def _pct(fraction: Optional[float]) -> str:
    return "-" if fraction is None else f"{100.0 * fraction:.2f} %"


def _bytes_words(doc: dict[str, Any]) -> str:
    final = next((s.get("bytes") for s in reversed(doc["steps"]) if s.get("bytes")), None)
    first = (doc.get("model") or {}).get("bytes")
    if not final or not first:
        return ""
    return f"; model file {final} bytes instead of {first} ({100.0 * final / first:.1f} %)"


def _backend_sentence(b: dict[str, Any]) -> str:
    norm = b.get("norm", "linf")
    claim = f"sup_x ||f(x) - g(x)||_{norm} <= {num(b.get('epsilon'))}"
    v = b.get("verdict")
    if v == "skipped":
        return f"Back-end {b['backend']} was not asked: {b.get('reason')}."
    if b["backend"] == "falsify" and v != "violated":
        return (f"The falsifier found no input where {claim} fails; the largest difference it attained, "
                f"{num_down(b.get('lower_bound'))}, is a lower bound of the worst case (it cannot prove bounds).")
    if v == "proved":
        return f"Back-end {b['backend']} proved {claim} on the input set."
    if v == "violated":
        return f"Back-end {b['backend']} found an input where {claim} FAILS (counterexample replayed)."
    return f"Back-end {b['backend']} could not decide {claim} ({b.get('reason') or 'unknown'})."


def _width_table(doc: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    stats = _all_stats(doc)
    cols = ["layer", "original"] + [f"after step {i + 1}" for i in range(len(stats))]
    if not stats:
        return cols, []
    series = [stats[0]["layers_before"]] + [st["layers_after"] for st in stats]
    n = max(len(s) for s in series)
    rows = [[f"hidden {i + 1}"] + [s[i] if i < len(s) else "-" for s in series] for i in range(n)]
    rows.append(["total hidden"] + [sum(s) for s in series])
    channels = _channel_series(stats)
    if channels is not None:
        rows += [[f"channels, hidden {i + 1}"] + [s[i] if i < len(s) else "-" for s in channels]
                 for i in range(max(map(len, channels)))]
        rows.append(["total channels"] + [sum(s) for s in channels])
    rows.append(["parameters", stats[0]["params_before"]] + [st["params_after"] for st in stats])
    if any("nonzero_params_after" in st for st in stats):
        rows.append(["nonzero parameters", stats[0].get("nonzero_params_before", "-")]
                    + [st.get("nonzero_params_after", "-") for st in stats])
        rows.append(["sparsity (zero parameters)", _pct(sparsity(stats[0].get("nonzero_params_before"), stats[0]["params_before"]))]
                    + [_pct(sparsity(st.get("nonzero_params_after"), st["params_after"])) for st in stats])
    sizes = [(doc.get("model") or {}).get("bytes")] + [s.get("bytes") for s in doc["steps"] if _stats(s)]
    if any(sizes):
        rows.append(["file bytes"] + [num(b) for b in sizes])
    return cols, rows


def _step_rows(doc: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for i, s in enumerate(doc["steps"], start=1):
        c, st, rc = s.get("certificate"), _stats(s), s.get("recheck")
        size = f"{st['neurons_before']} -> {st['neurons_after']}" if st else "-"
        secs = f"{st['seconds']:.2f}" if st else "-"
        if not c:
            rows.append([i, s.get("method"), "none", size, secs, "no certificate"])
            continue
        rows.append([i, s.get("method"), c["guarantee"]["kind"], size, secs,
                     _recheck_word(rc)])
    return rows


def _recheck_word(rc: Optional[dict[str, Any]]) -> str:
    if rc is None:
        return "not run"
    return "holds" if rc["holds"] else "DOES NOT HOLD"


_STEP_COLS = ["step", "method", "guarantee", "hidden neurons", "seconds", "independent re-check"]
_BACKEND_COLS = ["back-end", "verdict", "certified upper bound", "falsifier lower bound", "seconds", "note"]


def _backend_rows(doc: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for b in doc.get("backends", []):
        verdict = b.get("verdict")
        if b.get("backend") == "falsify" and verdict == "unknown":
            verdict = "lower bound only"  # the falsifier never proves: its answer is the attained value
        rows.append([b.get("backend"), verdict, num_up(b.get("upper_bound")), num_down(b.get("lower_bound")),
                     f"{b['seconds']:.2f}" if b.get("seconds") is not None else "-", b.get("reason") or ""])
    return rows


def figures(doc: dict[str, Any]) -> list[tuple[str, bytes]]:
    """``(caption, png)`` for every figure the document's facts support."""
    out: list[tuple[str, bytes]] = []
    stats = _all_stats(doc)
    if stats:
        series = [("original", stats[0]["layers_before"])]
        series += [(f"after step {i + 1}", st["layers_after"]) for i, st in enumerate(stats)]
        out.append(("Hidden-layer widths before and after each step.", plots.widths_plot(series)))
    certs = [s["certificate"] for s in doc["steps"] if s.get("certificate")]
    for i, c in enumerate(certs, start=1):
        for ev in c["evidence"]:
            if ev.get("backend") == "lumping" and isinstance(ev.get("claim"), dict):
                out.append((f"Step {i}: sizes of the classes of the exact quotient (how many original neurons each "
                            "kept neuron stands for).", plots.class_sizes_plot(ev["claim"])))
                break
        for ev in c["evidence"]:
            if ev.get("backend") == "learn-then-test" and ev.get("grid"):
                out.append((f"Step {i}: Learn-then-Test p-values against the pruning level.", plots.pvalues_plot(ev)))
    rows = bound_rows(doc)
    if rows:
        eps = next((b.get("epsilon") for b in doc.get("backends", []) if b.get("epsilon") is not None), None)
        out.append((bounds_caption(rows, eps), plots.bounds_plot(rows, eps)))
    return out


# ----- renderers -----------------------------------------------------------------------------
def _md_table(cols: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    return out


def to_markdown(doc: dict[str, Any], title: Optional[str] = None) -> str:
    """Markdown (figures are in the HTML report only). Accepts a document or a certificate."""
    doc = _as_document(doc, title)
    out = [f"# {doc['title']}", "", provenance_line(doc), "", "## In plain words", ""]
    out += [f"- {line}" for line in headline(doc)]
    out += ["", "## Input set", ""] + [f"- {line}" for line in input_set_lines(doc.get("input_set"), _kind(doc))]
    rows = bound_rows(doc)
    if rows:
        out += ["", "## Bounds on the difference", ""] + _md_table(_BOUND_COLS, _bound_table(rows))
    out += ["", "## How it was proved", ""]
    for i, s in enumerate(doc["steps"], start=1):
        c = s.get("certificate")
        if not c:
            out.append(f"{i}. **{s.get('method')}**: {s.get('note', 'no certificate')}")
            continue
        out.append(f"{i}. **{s.get('method')}** ({c['guarantee']['kind']}): " + " ".join(summary_lines(c)))
        out += [f"   - {how_proved(ev)}" for ev in c["evidence"]]
        if s.get("note"):
            out.append(f"   - Note: {s['note']}")
        if s.get("certificate_path"):
            out.append(f"   - Certificate `{s['certificate_path']}`; re-check with `lumpver check {s['certificate_path']}`.")
    out += ["", "## Steps", ""] + _md_table(_STEP_COLS, _step_rows(doc))
    cols, rows = _width_table(doc)
    out += ["", "## Widths and parameters", ""] + _md_table(cols, rows)
    if doc.get("backends"):
        out += ["", "## Back-ends on the final model", ""] + _md_table(_BACKEND_COLS, _backend_rows(doc))
    out += ["", "## Files", "", "| role | file | SHA-256 | bytes |", "|---|---|---|---|"]
    out += [f"| {r} | `{p}` | `{h}` | {num(n)} |" for r, p, h, n in _files(doc)]
    out += ["", f"Total time: {doc.get('seconds', 0):.2f} s.", ""]
    return "\n".join(out)


def _files(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = [("original", doc["model"]["path"], doc["model"]["sha256"], doc["model"].get("bytes"))]
    for i, s in enumerate(doc["steps"], start=1):
        c = s.get("certificate")
        if c and c.get("reduced"):
            out.append((f"step {i} result", s.get("model_path") or c["reduced"]["path"], c["reduced"]["sha256"],
                        s.get("bytes")))
    return out


_BOUND_COLS = ["source", "bound", "value", "meaning"]


def _bound_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["label"], r["kind"], num_up(r["value"]) if r["kind"] == "certified upper" else num_down(r["value"]),
             r["meaning"]] for r in rows]


def _kind(doc: dict[str, Any]) -> Optional[str]:
    return (doc.get("overall") or {}).get("kind")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:62em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #aaa;padding:.25em .7em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}th{background:#eef}.ok{color:#1b7e1b;font-weight:bold}"
        ".bad{color:#b00;font-weight:bold}.plain{font-size:1.08em;background:#f6f8f6;border-left:4px solid #1b9e77;"
        "padding:.6em 1em}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%}"
        "code{background:#f2f2f2;padding:0 .2em}.meta{color:#555;font-size:.9em}"
        "td{overflow-wrap:break-word}")


def _html_table(cols: list[str], rows: list[list[Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v: Any) -> str:
    s = _inline_code(str(v))
    if s in ("holds", "proved"):
        return f"<span class='ok'>{s}</span>"
    if s in ("DOES NOT HOLD", "violated"):
        return f"<span class='bad'>{s}</span>"
    return s


def _inline_code(text: str) -> str:
    """Escape, then render Markdown-style `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(doc: dict[str, Any], title: Optional[str] = None, with_figures: bool = True) -> str:
    """One self-contained HTML file (inline CSS, figures as data URIs, no scripts)."""
    doc = _as_document(doc, title)
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(doc['title'])}</title>"
             f"<style>{_CSS}</style></head><body><h1>{e(doc['title'])}</h1>",
             f"<p class='meta'>{_inline_code(provenance_line(doc))}</p>",
             "<h2>In plain words</h2><div class='plain'>"
             + "".join(f"<p>{_inline_code(line)}</p>" for line in headline(doc)) + "</div>",
             "<h2>Input set</h2><ul>"
             + "".join(f"<li>{_inline_code(line)}</li>" for line in input_set_lines(doc.get("input_set"), _kind(doc)))
             + "</ul>"]
    if bound_rows(doc):
        parts.append("<h2>Bounds on the difference</h2>" + _html_table(_BOUND_COLS, _bound_table(bound_rows(doc))))
    parts.append("<h2>How it was proved</h2><ol>")
    for s in doc["steps"]:
        c = s.get("certificate")
        if not c:
            parts.append(f"<li><b>{e(str(s.get('method')))}</b>: {e(s.get('note', 'no certificate'))}</li>")
            continue
        items = "".join(f"<li>{_inline_code(how_proved(ev))}</li>" for ev in c["evidence"])
        if s.get("note"):
            items += f"<li>Note: {e(s['note'])}</li>"
        if s.get("certificate_path"):
            items += f"<li>Certificate <code>{e(s['certificate_path'])}</code>; re-check with " \
                     f"<code>lumpver check {e(s['certificate_path'])}</code>.</li>"
        parts.append(f"<li><b>{e(str(s.get('method')))}</b> ({e(c['guarantee']['kind'])}): "
                     f"{e(' '.join(summary_lines(c)))}<ul>{items}</ul></li>")
    parts.append("</ol><h2>Steps</h2>" + _html_table(_STEP_COLS, _step_rows(doc)))
    cols, rows = _width_table(doc)
    parts.append("<h2>Widths and parameters</h2>" + _html_table(cols, rows))
    if doc.get("backends"):
        parts.append("<h2>Back-ends on the final model</h2>" + _html_table(_BACKEND_COLS, _backend_rows(doc)))
    if with_figures:
        figs = figures(doc)
        if figs:
            parts.append("<h2>Figures</h2>")
            parts += [f"<figure><img alt='{e(cap)}' src='{data_uri(png)}'><figcaption>{e(cap)}</figcaption></figure>"
                      for cap, png in figs]
    parts.append("<h2>Files</h2>" + _html_table(["role", "file", "SHA-256", "bytes"],
                                                [[r, p, h, num(n)] for r, p, h, n in _files(doc)]))
    parts.append(f"<p>Total time: {doc.get('seconds', 0):.2f} s.</p></body></html>\n")
    return "".join(parts)


def to_json(doc: dict[str, Any], title: Optional[str] = None) -> str:
    doc = _as_document(doc, title)
    return json.dumps({**doc, "headline": headline(doc)}, indent=1, allow_nan=False) + "\n"


def with_provenance(doc: dict[str, Any], command: Optional[str] = None) -> dict[str, Any]:
    """The document with its ``provenance`` (kept when already there)."""
    return doc if doc.get("provenance") else {**doc, "provenance": provenance(command)}


def _as_document(obj: dict[str, Any], title: Optional[str]) -> dict[str, Any]:
    if obj.get("format") == REPORT_FORMAT:
        return {**obj, "title": title or obj.get("title") or "lumpver report"}
    return document_from_certificate(obj, title or "lumpver report")


def render(doc: dict[str, Any], suffix: str) -> str:
    """The report text for a suffix (``.md``, ``.html``/``.htm``, ``.json``)."""
    suffix = suffix.lower()
    if suffix == ".md":
        return to_markdown(doc)
    if suffix in (".html", ".htm"):
        return to_html(doc)
    if suffix == ".json":
        return to_json(doc)
    raise ValueError(suffix)


def write_report(doc: dict[str, Any], path: str | os.PathLike, command: Optional[str] = None) -> None:
    """Write a report of a document or a certificate; the suffix picks the format (.md, .html, .json).
    ``command``: the command line recorded in the report (default: the Python API)."""
    suffix = check_report_path(path).suffix.lower()
    write_text_atomic(path, render(with_provenance(_as_document(doc, None), command), suffix))


REPORT_SUFFIXES = (".md", ".html", ".htm", ".json")


def check_report_path(path: str | os.PathLike) -> Path:
    """InputError unless the suffix names a report format (checked before any work or write)."""
    if Path(path).suffix.lower() not in REPORT_SUFFIXES:
        raise InputError(f"report must end in .md, .html or .json, got {Path(path).suffix or 'no suffix'!r}", str(path))
    return Path(path)
