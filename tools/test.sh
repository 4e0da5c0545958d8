#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv, then run it (unit + real-ComfyUI integration tests).
# Needs only Python >= 3.10 and pip; the package registry is the only network access.
# Set COMFYUI_PATH=<ComfyUI checkout> to also run the integration tests against that ComfyUI.
set -euo pipefail
cd "$(dirname "$0")/.."

source tools/venv.sh

install_torch
# The pack itself (editable, as `babelclip`), its test extras, and what the 2024-03 ComfyUI imports.
"${PIP[@]}" -e ".[test]" -r tests/requirements-comfyui.txt
"${PIP[@]}" --no-deps -r tests/requirements-peers.txt
if [ -n "${COMFYUI_PATH:-}" ]; then
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFYUI_PATH/requirements.txt" > "$VENV/comfyui-path-requirements.txt"
  "${PIP[@]}" -r "$VENV/comfyui-path-requirements.txt"
fi

exec "$VENV/bin/python" -m pytest "$@"
