#!/usr/bin/env bash
# VNN-COMP: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT
# Writes to RESULTS: sat (+ counterexample on the ORIGINAL network's inputs and outputs), unsat,
# timeout, unknown or error. Reduces the network on the property's input set (timed, here), checks
# the reduced network, and falls back to `lumpver verify --reduce` with the time left.
VERSION="${1:-}"; CATEGORY="${2:-}"; ONNX="${3:-}"; VNNLIB="${4:-}"; RESULTS="${5:-}"; TIMEOUT="${6:-}"
if [ "$VERSION" != "v1" ] || [ -z "$RESULTS" ] || [ -z "$TIMEOUT" ]; then
  echo "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT" >&2; exit 1
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python3 "$HERE/lumpver_vnncomp.py" run "$CATEGORY" "$ONNX" "$VNNLIB" "$RESULTS" "$TIMEOUT"
status=$?
if [ ! -s "$RESULTS" ]; then echo "error" > "$RESULTS"; fi
exit $status
