#!/usr/bin/env bash
# VNN-COMP: install_tool.sh v1 -- installs lumpver from this repository with pip.
set -euo pipefail
VERSION="${1:-v1}"
if [ "$VERSION" != "v1" ]; then echo "install_tool.sh: expected version v1, got '$VERSION'" >&2; exit 1; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python3 -m pip install -e "$REPO"
python3 -m lumpver --version
