"""The Python API behind ``lumpver reduce --mode exact`` (DESIGN.md §2, CONTRACT.md)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

from lumpver.certificates.format import make_certificate, model_stats
from lumpver.fileio import write_json_atomic
from lumpver.reductions.exact import DEFAULT_TOLERANCE, exact_lump
from lumpver.certificates.exact import discrepancy_bound
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.progress import SILENT, Progress


def default_certificate_path(out_path: str | os.PathLike) -> Path:
    """``reduced.onnx`` -> ``reduced.cert.json``."""
    p = Path(out_path)
    return p.with_name(p.stem + ".cert.json")


def reduce_exact_to_files(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    cert_path: Optional[str | os.PathLike] = None,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress = SILENT,
) -> dict[str, Any]:
    """Exact lumping of an ONNX file: writes the reduced model and its certificate; returns the certificate.

    Both files appear or neither does (the model is removed again if the certificate fails).
    """
    t0 = time.perf_counter()
    cert_path = Path(cert_path) if cert_path else default_certificate_path(out_path)
    net = load_onnx(model_path)
    progress.say(f"loaded {model_path}; lumping {net.n_hidden} hidden neurons in {len(net.layers) - 1} layers")
    result = exact_lump(net, tolerance, progress)
    a, b = discrepancy_bound(net, result.reduced, result.classes, tolerance, result.raw_signatures)
    progress.say(f"writing {out_path} ({result.reduced.n_hidden} hidden neurons)")
    save_onnx(result.reduced, out_path)
    try:
        discrepancy = {"a": a, "b": b, "statement": "for every input x: max_i |f_i(x) - g_i(x)| <= a + b * "
                       "||x||_inf, in exact real arithmetic of the stored float32 weights; float32 evaluation "
                       "by a runtime adds its own rounding to both models"}
        guarantee = {"kind": "exact", "norm": "linf", "float_tolerance": {
            "grouping_tolerance": tolerance, "discrepancy_bound": discrepancy}}
        evidence = [{"backend": "lumping", "verdict": "proved", "claim": result.claim, "discrepancy": discrepancy}]
        cert = make_certificate(model_path, out_path, guarantee, model_stats(net, result.reduced,
                                time.perf_counter() - t0), evidence, cert_path)
        write_json_atomic(cert_path, cert)
    except BaseException:
        Path(out_path).unlink(missing_ok=True)
        raise
    return cert
