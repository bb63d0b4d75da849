"""Figures for reports (DESIGN.md §9): matplotlib with the Agg backend, returned as PNG bytes.

Each function takes plain JSON facts (certificate fields) and returns the PNG of one figure, so
the HTML report can embed it as ``data:image/png;base64,...`` and stay one self-contained file.
matplotlib is imported inside :func:`_figure` only (the CLI must start fast).
"""
from __future__ import annotations

import base64
import io
from collections import Counter
from typing import Any, Optional, Sequence

_BEFORE, _AFTER, _THIRD = "#8da0cb", "#1b9e77", "#d95f02"


def _figure(width: float = 6.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _legend_outside(ax) -> None:
    """The legend right of the axes, where it cannot cover a bar."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def widths_plot(series: Sequence[tuple[str, Sequence[int]]]) -> bytes:
    """Grouped bars: hidden-layer widths of each model (``[(label, widths), ...]``, first = original)."""
    plt, fig, ax = _figure()
    n_layers = max((len(w) for _, w in series), default=0)
    bar = 0.8 / max(1, len(series))
    colors = [_BEFORE, _AFTER, _THIRD, "#7570b3", "#e7298a", "#66a61e"]
    for k, (label, widths) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * bar for i in range(len(widths))]
        ax.bar(xs, list(widths), bar, label=label, color=colors[k % len(colors)])
    ax.set_xticks(range(n_layers), [f"hidden {i + 1}" for i in range(n_layers)])
    ax.set_ylabel("neurons")
    ax.set_title("Hidden-layer widths")
    _legend_outside(ax)
    return _png(plt, fig)


def class_size_counts(claim: dict[str, Any]) -> list[dict[int, int]]:
    """Per layer of an exact-lumping claim: class size -> number of kept classes of that size.

    Classes are the non-negative ``class_of`` labels whose ``kept`` flag is true (dead classes and
    constants, label -1, are not in the quotient).
    """
    out = []
    for layer in claim.get("layers", []):
        kept = layer.get("kept", [])
        sizes = Counter(c for c in layer.get("class_of", []) if c >= 0 and (c >= len(kept) or kept[c]))
        out.append(dict(Counter(sizes.values())))
    return out


def class_sizes_plot(claim: dict[str, Any]) -> bytes:
    """Histogram per layer of the quotient's class sizes (how many neurons each kept neuron stands for)."""
    plt, fig, ax = _figure()
    counts = class_size_counts(claim)
    sizes = sorted({s for c in counts for s in c})
    bar = 0.8 / max(1, len(counts))
    for k, c in enumerate(counts):
        xs = [i + (k - (len(counts) - 1) / 2) * bar for i in range(len(sizes))]
        ax.bar(xs, [c.get(s, 0) for s in sizes], bar, label=f"hidden {k + 1}")
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_xlabel("class size (original neurons merged into one)")
    ax.set_ylabel("classes")
    ax.set_title("Class sizes of the exact quotient")
    _legend_outside(ax)
    return _png(plt, fig)


def bounds_plot(rows: Sequence[dict[str, Any]], epsilon: Optional[float] = None) -> bytes:
    """Every bound on ``sup_X ||f - g||`` on one log axis, one column per source (DESIGN.md §9).

    ``rows``: ``{"label", "kind": "certified upper" | "attained lower", "value"}``
    (:func:`lumpver.reports.facts.bound_rows`). Down triangles are certified upper bounds, up
    triangles attained values; the band between the largest attained value and the smallest
    certified bound holds the true worst case. The legend sits below the axes, off the data.
    """
    plt, fig, ax = _figure(6.4, 3.8)
    labels = list(dict.fromkeys(str(r["label"]) for r in rows))
    vals = [r["value"] for r in rows if r["value"] and r["value"] > 0] + ([epsilon] if epsilon else [])
    floor = min(vals) / 5 if vals else 1e-9
    top = max(vals) * 5 if vals else 1.0
    ups = [r["value"] for r in rows if r["kind"] == "certified upper"]
    lows = [r["value"] for r in rows if r["kind"] == "attained lower"]
    if ups and lows:
        ax.axhspan(max(max(lows), floor), min(ups), color=_AFTER, alpha=.12, label="worst case lies here")
    seen: set[str] = set()
    for r in rows:
        x, v = labels.index(str(r["label"])), max(r["value"], floor)
        upper = r["kind"] == "certified upper"
        name = "certified upper bound" if upper else "attained value (lower bound)"
        ax.plot(x, v, "v" if upper else "^", color=_AFTER if upper else _THIRD, ms=11,
                label=None if name in seen else name)
        seen.add(name)
    if epsilon:
        ax.axhline(epsilon, color="k", ls="--", lw=1, label=f"epsilon asked = {epsilon:.9g}")
    ax.set_yscale("log")
    ax.set_ylim(floor, top)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xticks(range(len(labels)), labels, fontsize=9)
    ax.set_ylabel("sup ||f(x) - g(x)|| on the set")
    ax.set_title("Every bound on the worst-case difference")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    return _png(plt, fig)


def pvalues_plot(evidence: dict[str, Any]) -> bytes:
    """Learn-then-Test evidence: p-value and empirical risk against the pruning level (DESIGN.md §7)."""
    plt, fig, ax = _figure()
    grid = list(evidence.get("grid", []))
    pv = [p if p is not None else float("nan") for p in evidence.get("pvalues", [])]
    tested = min(len(grid), len(pv))
    ax.plot(grid[:tested], [max(p, 1e-300) for p in pv[:tested]], "o-", color=_AFTER, label="p-value")
    if evidence.get("delta") is not None:
        ax.axhline(evidence["delta"], color="k", ls="--", lw=1, label=f"delta = {evidence['delta']:g}")
    chosen = evidence.get("chosen_index")
    if chosen is not None and chosen < tested:
        ax.plot(grid[chosen], max(pv[chosen], 1e-300), "*", color=_THIRD, ms=16, label="chosen level")
    ax.set_yscale("log")
    ax.set_xlabel("pruning level (fraction of weights removed)")
    ax.set_ylabel("p-value of H0: risk > alpha")
    risks = evidence.get("risks") or []
    if risks:
        ax2 = ax.twinx()
        ax2.plot(grid[:len(risks)], risks, "s:", color=_BEFORE, ms=4, label="empirical risk")
        if evidence.get("alpha") is not None:
            ax2.axhline(evidence["alpha"], color=_BEFORE, ls=":", lw=1)
        ax2.set_ylabel("empirical risk", color=_BEFORE)
    ax.set_title("Confident pruning: p-values by level")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)
    return _png(plt, fig)
