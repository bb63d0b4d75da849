#!/usr/bin/env bash
# VNN-COMP: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Reduces the network on the property's input set (exact on that set, with a certificate) and
# caches it under ${TMPDIR:-/tmp}/lumpver-cache/<sha256 of onnx+vnnlib>. Always exits 0: without a
# cache, run_instance.sh reduces on the fly.
VERSION="${1:-}"; CATEGORY="${2:-}"; ONNX="${3:-}"; VNNLIB="${4:-}"
if [ "$VERSION" != "v1" ] || [ -z "$ONNX" ] || [ -z "$VNNLIB" ]; then
  echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2; exit 1
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python3 "$HERE/lumpver_vnncomp.py" prepare "$CATEGORY" "$ONNX" "$VNNLIB" || true
exit 0
