"""On-set channel removal for convolutional networks (DESIGN.md §3, §10): the ReLU channels that
are stably inactive at every position over the input set are deleted (exact channel lumping of the
result is ``reduce --mode exact``'s job). The step is re-checked by
:mod:`lumpver.certificates.onset_conv` (bounds recomputed; the discrepancy on X is 0)."""
from __future__ import annotations

from typing import Any

from lumpver.certificates.exact_conv import channels_per_layer
from lumpver.certificates.onset_conv import STEP, inactive_channels, remove_channels
from lumpver.ir.network import Network
from lumpver.progress import SILENT, Progress
from lumpver.specs.inputset import InputSet


def channel_onset(net: Network, input_set: InputSet, method: str = "crown",
                  progress: Progress = SILENT) -> tuple[Network, list[dict[str, Any]]]:
    """``(reduced network, [the on-set-channels step])``: ``net`` without its stably inactive channels."""
    removed = inactive_channels(net, input_set, method)
    reduced = remove_channels(net, removed)
    progress.say(f"on-set: removed {sum(r.size for r in removed)} stably inactive channel(s)")
    step = {"step": STEP, "backend": "bounds", "verdict": "proved", "method": method,
            "removed": [r.tolist() for r in removed], "discrepancy": 0.0,
            "channels_before": channels_per_layer(net), "channels_after": channels_per_layer(reduced)}
    return reduced, [step]
