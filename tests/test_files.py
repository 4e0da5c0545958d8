"""models/files.py: importing it changes nothing in the process; new files follow the umask of the moment."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from babelclip.models.files import atomic_write


def test_import_leaves_the_umask_alone():
    code = ("import os; calls = []; real = os.umask\n"
            "os.umask = lambda mask: (calls.append(mask), real(mask))[1]\n"
            "import babelclip.models.files; print(calls)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(os.name != "posix", reason="umask permissions are POSIX")
@pytest.mark.parametrize("mask, mode", [(0o027, 0o640), (0o002, 0o664)])
def test_new_files_get_the_permissions_of_the_current_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").close(), "test file")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
