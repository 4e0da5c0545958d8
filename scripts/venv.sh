# Sourced by scripts/test.sh and bench/run.sh: make (or reuse) the virtual environment both install into.
# Sets VENV and PIP; PYTHON (default python3) makes the venv, BABELCLIP_VENV (default .venv) moves it.
PYTHON=${PYTHON:-python3}
VENV=${BABELCLIP_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
