#!/usr/bin/env bash
# VNN-COMP: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks only (no analysis, as the rules require): the network loads (supported ops, finite
# weights) and the property parses against it. Exits 1 with one line on stderr when lumpver cannot
# handle the instance, so the slot is skipped; the on-set reduction runs inside run_instance.sh.
VERSION="${1:-}"; CATEGORY="${2:-}"; ONNX="${3:-}"; VNNLIB="${4:-}"
if [ "$VERSION" != "v1" ] || [ -z "$ONNX" ] || [ -z "$VNNLIB" ]; then
  echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2; exit 1
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$HERE/lumpver_vnncomp.py" prepare "$CATEGORY" "$ONNX" "$VNNLIB"
