#!/usr/bin/env bash
# The demo on a fresh machine: install BabelCLIP (with the same torch as the tests) into ./.venv, then train and
# evaluate an adapter with tiny built-in models. Needs only Python >= 3.10 and pip; downloads no model.
# Arguments go to `python -m babelclip.training demo` (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."

source tools/venv.sh
install_torch
"${PIP[@]}" -e .
exec "$VENV/bin/python" -m babelclip.training demo "$@"
