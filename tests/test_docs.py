"""What the README and the error messages tell a newcomer to type works with what BabelCLIP installs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from babelclip.models.encoder import download_command

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\\\n", " "))


def test_readme_gives_the_download_command_the_errors_give():
    command = download_command("FacebookAI/xlm-roberta-large", "ComfyUI/models/text_encoders/xlm-roberta-large")
    assert command in _one_line(README)
    assert "huggingface-cli" not in README  # huggingface-hub 1.0 and later install only `hf`


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: every connection is refused


def test_download_command_is_understood_by_the_installed_hf(tmp_path):
    """The command runs through the installed `hf` up to the network: its options parse, and the patterns are
    taken as patterns (given as extra arguments they would be requested as files named '*.safetensors')."""
    hf = shutil.which("hf", path=os.path.dirname(sys.executable)) or shutil.which("hf")
    if hf is None:
        pytest.fail("huggingface-hub's `hf` command is not installed (BabelCLIP requires huggingface-hub>=0.34)")
    args = download_command("FacebookAI/xlm-roberta-large", str(tmp_path / "enc")).split()[2:]
    args = [a.strip('"') for a in args]
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp_path / "hf-home"))
    out = subprocess.run([hf, "download", *args, "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    text = out.stdout + out.stderr
    assert "No such option" not in text and "Usage:" not in text, text[-2000:]
    assert "%2A" not in text and "resolve/main/*" not in text, text[-2000:]
    assert not list((tmp_path / "enc").glob("*"))  # nothing was written
