"""install.py in its three contexts: by hand, under ComfyUI-Manager, under Automatic1111."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_by_hand_reports_satisfied_requirements():
    out = run([str(REPO / "install.py"), "--dry-run"], cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "install context: manual" in out.stdout
    assert "all requirements are satisfied" in out.stdout


def test_missing_requirement_is_listed_and_torch_never_installed(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("torch==0.0.1\nbabelclip-surely-missing-package>=1.0\nsafetensors>=0.1\n")
    out = run([str(REPO / "install.py"), "--dry-run", "--requirements", str(req)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "would install: babelclip-surely-missing-package>=1.0" in out.stdout
    assert "torch==0.0.1" not in out.stdout and "safetensors" not in out.stdout.split("missing")[-1]


def test_comfyui_manager_context(tmp_path):
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "babelclip"
    pack.mkdir(parents=True)
    shutil.copy(REPO / "install.py", pack)
    shutil.copy(REPO / "requirements.txt", pack)
    out = run(["install.py", "--dry-run"], cwd=pack)
    assert out.returncode == 0, out.stderr
    assert "install context: comfyui" in out.stdout


def test_automatic1111_context_uses_launch_run_pip(tmp_path):
    # Automatic1111 exposes `launch.run_pip`; this stand-in records the calls instead of installing.
    (tmp_path / "launch.py").write_text(
        "import os\n"
        "def run_pip(command, desc=None):\n"
        "    with open(os.environ['RECORD'], 'a') as f:\n"
        "        f.write(command + '\\n')\n")
    req = tmp_path / "req.txt"
    req.write_text("babelclip-surely-missing-package>=1.0\npackaging\ntorchvision\n")
    record = tmp_path / "calls.txt"
    out = run([str(REPO / "install.py"), "--requirements", str(req)], cwd=tmp_path,
              env_extra={"PYTHONPATH": str(tmp_path), "RECORD": str(record)})
    assert out.returncode == 0, out.stderr
    assert "install context: automatic1111" in out.stdout
    # one pip call with the satisfied requirements too, so that the installed packages' pins constrain the missing
    # ones (alone, huggingface-hub>=0.34 resolves to a 2.x that the web UI's transformers 4.x cannot use); never torch*
    assert record.read_text().splitlines() == ['install "babelclip-surely-missing-package>=1.0" "packaging"']
