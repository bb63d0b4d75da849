#!/usr/bin/env bash
# Install everything the test suite needs, then run it (README: "Run the tests"; .ci/run calls this).
#   bash scripts/test.sh [pytest arguments]
# Needs: Python >= 3.10 with pip, ../shared beside the clone (public networks), and for the HTML-report
# tests a headless Chromium: installed here from the distribution's packages when missing (apt-get,
# as root or with sudo). Without a way to install it, the script stops before running anything.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && ! command -v google-chrome >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  if ! command -v apt-get >/dev/null 2>&1 || { [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; }; then
    echo "scripts/test.sh: headless Chromium is missing and cannot be installed here (no apt-get/sudo);" \
         "install chromium, then run again" >&2
    exit 2
  fi
  echo "scripts/test.sh: installing chromium (HTML report tests)" >&2
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

python3 -m pip install -e ".[test]"
# Two pytest workers (pytest-xdist), tests handed out one at a time (worksteal): the suite is ~1,000 mostly
# single-threaded tests, so this halves its wall time on a 2-core machine (bench/RESULTS.md, "test suite").
# One BLAS thread per worker: two workers with two BLAS threads each would oversubscribe the cores.
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
       MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
python3 -m pytest -q -n 2 --dist worksteal "$@"
