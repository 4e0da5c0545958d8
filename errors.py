"""Typed errors raised by BabelCLIP.

Every user-facing failure is one of these. Each message names the file or input
at fault, says what is wrong, and says what to do about it, so that ComfyUI can
show it to the user as it is.
"""

from __future__ import annotations

__all__ = [
    "BabelClipError",
    "InvalidModelFileError",
    "IncompatibleAdapterError",
    "InvalidDataError",
    "InvalidPromptError",
    "UnsafePathError",
    "UnsupportedModelError",
    "StorageError",
]


class BabelClipError(Exception):
    """Base class of every error BabelCLIP raises on purpose."""


class InvalidModelFileError(BabelClipError):
    """A model file or folder is missing, unreadable, unsafe or malformed."""


class UnsupportedModelError(BabelClipError):
    """A well-formed model that BabelCLIP cannot use (architecture, family, ...)."""


class IncompatibleAdapterError(BabelClipError):
    """An adapter does not fit the encoder or the CLIP/checkpoint it is used with."""


class InvalidDataError(BabelClipError):
    """A data file or a parameter value is invalid."""


class InvalidPromptError(BabelClipError):
    """A prompt cannot be parsed or encoded."""


class UnsafePathError(BabelClipError):
    """A file name points outside the model folder it must stay in."""


class StorageError(BabelClipError):
    """A file could not be written (disk full, no permission); nothing was left half-written."""
