"""Writing files so that a crash, a kill or a full disk never leaves a broken one.

Every file BabelCLIP writes (adapters, checkpoints, reports) goes through
:func:`atomic_write`: the content is written to a hidden temporary file in the
same folder, flushed to disk, and renamed over the target in one step. A reader
therefore sees the previous file or the complete new one, never a half-written
one. A failed write (disk full, no permission) removes the temporary file and
raises :class:`~babelclip.errors.StorageError`; the previous file is untouched.
A process killed mid-write can leave a hidden ``.<name>.*.part`` file behind,
which no loader lists and the next successful write of the same file removes.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
import time
from typing import Callable

from ..errors import StorageError

__all__ = ["atomic_write", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".part"
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _umask() -> int:
    """The process's umask, read when a file is written (importing this module changes nothing).

    New files get the permissions open() would give them, not mkstemp's 0600. Linux reports the umask in
    /proc; elsewhere it can only be read by setting it, which this does for the shortest possible moment.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    try:
        _fsync(folder)
    except OSError:  # some filesystems (and Windows) cannot sync a directory; the rename is still atomic
        pass


def _reason(error: BaseException, folder: str) -> str:
    chain, e = [], error
    while e is not None and len(chain) < 10:  # torch reports a failed write as RuntimeError with the OSError inside
        chain.append(e)
        e = e.__cause__ or e.__context__
    code = next((getattr(x, "errno", None) for x in chain if getattr(x, "errno", None)), None)
    text = " ".join(str(x) for x in chain)
    if code in _NO_SPACE or "No space left" in text or "StorageFull" in text or "File too large" in text:
        return f"the disk is full. Free some space in {folder!r} or choose another folder"
    if code in _NO_ACCESS or "Permission denied" in text or "Read-only file system" in text:
        return f"{folder!r} is not writable. Choose a folder you can write to"
    return f"{type(error).__name__}: {str(error)[:200]}. Check the free space and permissions of {folder!r}"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], what: str = "file") -> str:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically; return ``path``.

    ``what`` names the file in messages ("adapter", "checkpoint", ...).
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(folder)
    except Exception as e:  # torch and safetensors report I/O failures as RuntimeError / SafetensorError
        raise StorageError(f"Could not write the {what} {path!r}: {_reason(e, folder)}. Nothing was written; "
                           f"the previous file, if any, is unchanged.") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*{TEMP_SUFFIX}")):
        try:  # left by a process killed mid-write (older than a minute: not a concurrent writer's)
            if time.time() - os.path.getmtime(stale) > 60:
                os.unlink(stale)
        except OSError:
            pass
    return path
