# Sourced by tools/test.sh, tools/demo.sh and bench/run.sh: make (or reuse) the virtual environment they all
# install into. Sets VENV and PIP and defines install_torch; PYTHON (default python3) makes the venv,
# BABELCLIP_VENV (default .venv) moves it.
PYTHON=${PYTHON:-python3}
VENV=${BABELCLIP_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

# The one torch pin of every script (never in requirements.txt: ComfyUI and the web UIs bring their own), so
# running the demo, the tests and the benchmarks one after another never swaps torch in the venv. torchvision
# comes with it because ComfyUI needs one that matches.
install_torch() {
  case "$(uname -m)" in
    aarch64|arm64) "${PIP[@]}" torch==2.9.1 torchvision==0.24.1 ;;
    *)             "${PIP[@]}" torch==2.14.1 torchvision==0.29.1 ;;
  esac
}
