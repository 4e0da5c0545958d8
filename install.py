"""Install BabelCLIP's Python requirements in the right environment.

Who runs this file, and what it does:

* **Automatic1111 / Forge** run ``install.py`` of every extension with ``launch``
  importable: requirements go through ``launch.run_pip`` into the web UI's venv.
* **ComfyUI-Manager** runs it from ``custom_nodes/<pack>/`` with ComfyUI's Python
  (after installing ``requirements.txt`` itself): only what is still missing is
  installed, with that same Python.
* **By hand**: ``python install.py`` installs what is missing into the running
  Python; ``--dry-run`` only reports.

torch is never installed or upgraded here: the host application owns it.
No model is downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NEVER_INSTALL = {"torch", "torchvision", "torchaudio"}


def read_requirements(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line and not line.startswith("-")]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()


def is_satisfied(requirement: str) -> bool:
    """True if ``requirement`` (a PEP 508 line) is installed at an acceptable version."""
    from importlib import metadata

    try:
        version = metadata.version(_name(requirement))
    except metadata.PackageNotFoundError:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: presence is the best check available
        return True
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def detect_context() -> str:
    try:
        import launch  # noqa: F401  (Automatic1111 / Forge)

        if hasattr(launch, "run_pip"):
            return "automatic1111"
    except ImportError:
        pass
    if os.path.basename(os.path.dirname(HERE)) == "custom_nodes":
        return "comfyui"
    return "manual"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="only report what would be installed")
    parser.add_argument("--requirements", default=os.path.join(HERE, "requirements.txt"),
                        help="requirements file (default: the pack's requirements.txt)")
    args = parser.parse_args(argv)

    context = detect_context()
    wanted = [r for r in read_requirements(args.requirements) if _name(r).lower() not in NEVER_INSTALL]
    missing = [r for r in wanted if not is_satisfied(r)]
    print(f"[BabelCLIP] install context: {context}; {len(wanted)} requirements, {len(missing)} missing")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("[BabelCLIP] torch is not installed: install the PyTorch build for your machine first "
              "(https://pytorch.org/get-started/locally/); BabelCLIP never installs torch itself.")
    if not missing:
        print("[BabelCLIP] all requirements are satisfied")
        return 0
    if args.dry_run:
        for r in missing:
            print(f"[BabelCLIP] would install: {r}")
        return 0
    if context == "automatic1111":
        import launch

        # one resolve with every requirement, the satisfied ones too: then the installed packages' own pins
        # (transformers 4.x needs huggingface-hub<1.0) constrain what pip picks for the missing ones
        launch.run_pip("install " + " ".join(f'"{r}"' for r in wanted), "BabelCLIP requirements")
        return 0
    cmd = [sys.executable, "-m", "pip", "install", *missing]
    print("[BabelCLIP] running:", " ".join(cmd))
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
