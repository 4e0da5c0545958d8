"""Telling a safetensors file from a pickle renamed to ``.safetensors``, before anything is loaded.

A safetensors file starts with the length of its JSON header as a little-endian 64-bit integer, then the
header itself. The first byte of that length can be anything — safetensors pads headers to multiples of 8, so
one valid file in 32 has a first byte of ``0x80`` (pickle's PROTO opcode), and a header of 19,280 bytes starts
with ``PK`` (a zip file's signature). A file is therefore taken as safetensors when its header parses: a length
within limits, followed by a JSON object. Only a file that is *not* valid safetensors is examined for pickle and
zip signatures, so that the message can say what it really is.
"""

from __future__ import annotations

import json
import os
import struct

from ..errors import InvalidModelFileError

__all__ = ["check_safetensors", "looks_like_pickle", "SAFETENSORS_MAX_HEADER"]

#: the limit the safetensors library itself applies to a header
SAFETENSORS_MAX_HEADER = 100_000_000


def looks_like_pickle(head: bytes) -> bool:
    """True when ``head`` starts like ``torch.save`` output: a zip archive (``PK``) or a pickle (PROTO 0x80)."""
    return head[:2] == b"PK" or head[:1] == b"\x80"


def _header_is_json_object(f, length: int) -> bool:
    raw = f.read(length)
    if len(raw) != length or raw[:1] != b"{":
        return False
    try:
        return isinstance(json.loads(raw), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


def check_safetensors(path: str, *, what: str, fix: str, max_header: int = SAFETENSORS_MAX_HEADER) -> int:
    """Check that ``path`` is a safetensors file and return the length of its JSON header.

    Args:
        what: names the file in messages ("Adapter file", "Encoder weights").
        fix: what the user should do when the file is not usable ("Download or train it again.").
        max_header: the largest header accepted, in bytes.

    Raises:
        InvalidModelFileError: the file is missing, truncated, a pickle/zip file, or otherwise not safetensors.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            if 2 <= length <= max_header and length + 8 <= size and _header_is_json_object(f, length):
                return length
    except FileNotFoundError:
        raise InvalidModelFileError(f"{what} {path!r} does not exist. Check the name and folder.") from None
    except OSError as e:
        raise InvalidModelFileError(f"Cannot read {what.lower()} {path!r}: {e.strerror or e}.") from None
    if looks_like_pickle(head):
        raise InvalidModelFileError(
            f"{what} {path!r} is a pickle/zip file (as written by torch.save) renamed to .safetensors. BabelCLIP "
            f"never opens pickles, because they can run code. {fix}")
    if len(head) < 8:
        raise InvalidModelFileError(f"{what} {path!r} is {size} bytes long: it is truncated or empty. {fix}")
    if length + 8 > size and 2 <= length <= max_header:
        raise InvalidModelFileError(
            f"{what} {path!r} is truncated: its header claims {length} bytes but the file has {size}. {fix}")
    raise InvalidModelFileError(
        f"{what} {path!r} is not a valid safetensors file (header of {length} bytes in a file of {size} bytes, "
        f"not a JSON object): it is truncated or corrupted. {fix}")
