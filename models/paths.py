"""Resolving names that come from a workflow into files inside model folders.

A workflow is untrusted input: a name in it may try ``..``, an absolute path,
or a symlink that leads out of the model folder. Every name is resolved here
and must land inside one of the allowed folders.
"""

from __future__ import annotations

import os
from typing import Iterable

from ..errors import InvalidModelFileError, UnsafePathError

__all__ = ["resolve_inside", "is_inside", "list_files", "list_model_folders"]


def is_inside(path: str, base: str) -> bool:
    real, real_base = os.path.realpath(path), os.path.realpath(base)
    return real == real_base or real.startswith(real_base.rstrip(os.sep) + os.sep)


def resolve_inside(bases: Iterable[str], name: str, what: str = "model") -> str:
    """Return the existing path ``base/name`` for the first base holding it, confined to that base.

    Raises :class:`UnsafePathError` for absolute names, ``..`` components or
    links that leave the folder, :class:`InvalidModelFileError` if it is absent.
    """
    bases = [b for b in bases if b]
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"The {what} name {name!r} is empty or invalid; pick one from the list.")
    norm = name.replace("\\", "/")
    if os.path.isabs(name) or norm.startswith("/") or ".." in norm.split("/") or (len(norm) > 1 and norm[1] == ":"):
        raise UnsafePathError(
            f"The {what} name {name!r} points outside the model folders ({', '.join(bases)}); "
            f"pick a {what} from the list instead of typing a path.")
    for base in bases:
        path = os.path.join(base, *norm.split("/"))
        if os.path.lexists(path):
            if not is_inside(path, base):
                raise UnsafePathError(
                    f"The {what} {name!r} is a link to {os.path.realpath(path)!r}, outside {base!r}. "
                    f"Copy the file into the folder instead of linking it out.")
            return path
    raise InvalidModelFileError(
        f"The {what} {name!r} was not found in {', '.join(bases) or 'any model folder'}. "
        f"Put it there, or choose one that is listed.")


def list_files(bases: Iterable[str], suffixes: tuple[str, ...]) -> list[str]:
    """Files under ``bases`` (recursively) with one of ``suffixes``, as '/'-separated relative names."""
    found: set[str] = set()
    for base in bases:
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in files:
                if f.lower().endswith(suffixes) and not f.startswith("."):
                    rel = os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/")
                    found.add(rel)
    return sorted(found)


def list_model_folders(bases: Iterable[str], marker: str = "config.json", depth: int = 2) -> list[str]:
    """Folders under ``bases`` (up to ``depth`` levels) that hold ``marker``, as relative names."""
    found: set[str] = set()
    for base in bases:
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base, followlinks=False):
            rel = os.path.relpath(root, base)
            level = 0 if rel == "." else rel.count(os.sep) + 1
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if level < depth else []
            if level and marker in files:
                found.add(rel.replace(os.sep, "/"))
    return sorted(found)
