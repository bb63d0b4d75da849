"""On-set channel reduction for convolutional chains (DESIGN.md §3, §10): the ReLU channels that are
stably inactive at every position over the input set are deleted and stably active channels whose
augmented filters are linear combinations of others are folded into their readers
(:mod:`lumpver.reductions.onset_fold_conv`; exact channel lumping of the result is ``reduce --mode
exact``'s job). The step is re-checked by :mod:`lumpver.certificates.onset_conv` (bounds recomputed;
the discrepancy on X is 0 without folds, else its recomputed sound bound)."""
from __future__ import annotations

from typing import Any

from lumpver.certificates.exact_conv import channels_per_layer
from lumpver.certificates.onset_conv import STEP, ChannelBounds, channel_fold_discrepancy
from lumpver.ir.network import Network
from lumpver.progress import SILENT, Progress
from lumpver.reductions.onset_fold import QR_TOL
from lumpver.reductions.onset_fold_conv import choose_channel_folds, fold_channels
from lumpver.specs.inputset import InputSet


def channel_onset(net: Network, input_set: InputSet, method: str = "crown", progress: Progress = SILENT,
                  qr_tol: float = QR_TOL) -> tuple[Network, list[dict[str, Any]]]:
    """``(reduced network, [the on-set-channels step])``: ``net`` without its stably inactive channels
    and with its linearly dependent stably active channels folded into their readers."""
    progress.say(f"on-set: bounds of {len(net.layers)} layers over {len(input_set.regions)} region(s)")
    cb = ChannelBounds.on_set(net, input_set, method)
    folds = choose_channel_folds(net, cb, qr_tol)
    reduced = fold_channels(net, folds)
    n_removed = sum(c.removed.size for c in folds.claims)
    step: dict[str, Any] = {"step": STEP, "backend": "bounds", "verdict": "proved", "method": method,
                            "removed": [c.removed.tolist() for c in folds.claims], "discrepancy": 0.0}
    if folds.n_folded:
        step.update(folds=folds.to_json(), qr_tolerance=qr_tol,
                    discrepancy=channel_fold_discrepancy(net, folds.claims, cb, reduced))
    n_linear = sum(c.basis.size + c.folded.size for c in folds.claims)
    step.update(channels_before=channels_per_layer(net), channels_after=channels_per_layer(reduced),
                reason=f"{method} bounds on X proved {n_removed} channel(s) 0 at every position (removed) and "
                       f"{n_linear} linear at every position; {folds.n_folded} of these are linear combinations of "
                       "others of their layer and were folded into their readers' filters (DESIGN.md §3, §10); "
                       f"sound discrepancy bound on X {step['discrepancy']:.3e}")
    progress.say(f"on-set: removed {n_removed} stably inactive channel(s), folded {folds.n_folded} stably linear "
                 f"one(s); discrepancy on X <= {step['discrepancy']:.3e}")
    return reduced, [step]
