"""A valid safetensors file is never taken for a pickle, whatever bytes its header length starts with.

safetensors pads headers to multiples of 8, so one valid file in 32 has a header length whose first byte is
0x80 (pickle's PROTO opcode), and a header of 19,280 bytes starts with ``PK`` (a zip archive's signature).
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babelclip.errors import InvalidModelFileError
from babelclip.models import load_adapter, load_encoder, read_adapter_spec
from babelclip.models.weights_format import check_safetensors

from .conftest import make_adapter_file

PK_LENGTH = 0x4B50  # 19,280: little-endian bytes b"PK\0\0..."


def repad(path, length: int) -> None:
    """Rewrite the safetensors file at ``path`` with its JSON header padded by spaces to ``length`` bytes,
    as the safetensors library pads it (the tensors are untouched)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(json.loads(raw[8:8 + n]), separators=(",", ":")).encode()
    assert len(header) <= length, f"header is already {len(header)} bytes"
    path.write_bytes(struct.pack("<Q", length) + header + b" " * (length - len(header)) + raw[8 + n:])


def lengths_with_first_byte(first: int, start: int, count: int) -> list[int]:
    """Header lengths (multiples of 8) from ``start`` on whose little-endian first byte is ``first``."""
    out, n = [], (start // 256) * 256 + first
    while len(out) < count:
        if n >= start:
            out.append(n)
        n += 256
    return out


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory, xlmr):
    return make_adapter_file(tmp_path_factory.mktemp("weights-format") / "a.safetensors", xlmr)


@pytest.mark.parametrize("length", [*lengths_with_first_byte(0x80, 2048, 3), PK_LENGTH])
def test_adapter_with_pickle_like_header_length_loads(adapter_file, xlmr, tmp_path, length):
    path = tmp_path / "adapter.safetensors"
    shutil.copy(adapter_file, path)
    repad(path, length)
    head = path.read_bytes()[:2]
    assert head[:1] == b"\x80" or head == b"PK"
    adapter = load_adapter(path, encoder=xlmr.info)
    reference = load_adapter(adapter_file, encoder=xlmr.info)
    assert adapter.spec.metadata == reference.spec.metadata
    for (name, a), (_, b) in zip(adapter.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("length", [lengths_with_first_byte(0x80, 4096, 1)[0], PK_LENGTH])
def test_encoder_weights_with_pickle_like_header_length_load(encoder_dirs, tmp_path, length):
    folder = tmp_path / "enc"
    shutil.copytree(encoder_dirs["xlm-roberta"], folder)
    weights = folder / "model.safetensors"
    repad(weights, length)
    assert weights.read_bytes()[:1] in (b"\x80", b"P")
    encoder = load_encoder(folder)
    reference = load_encoder(encoder_dirs["xlm-roberta"])
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    mask = torch.ones_like(ids)
    assert torch.equal(encoder(ids, mask), reference(ids, mask))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.integers(min_value=0, max_value=4000))
def test_every_padded_header_length_is_safetensors(adapter_file, tmp_path, extra):
    """Property: whatever multiple of 8 the header is padded to, the file reads as the adapter it is."""
    path = tmp_path / "p.safetensors"
    shutil.copy(adapter_file, path)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    length = n + 8 * extra
    repad(path, length)
    assert check_safetensors(str(path), what="Adapter file", fix="") == length
    assert read_adapter_spec(path).arch == "mlp"


def _torch_zip() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("payload", [_torch_zip(), pickle.dumps({"w": [1.0]}, protocol=2),
                                     pickle.dumps({"w": [1.0]}, protocol=4)], ids=["torch-zip", "pickle2", "pickle4"])
def test_real_pickles_are_still_named_as_pickles(tmp_path, payload):
    path = tmp_path / "renamed.safetensors"
    path.write_bytes(payload)
    with pytest.raises(InvalidModelFileError, match=r"renamed\.safetensors.*pickle/zip"):
        check_safetensors(str(path), what="Adapter file", fix="Download it again.")


def test_truncated_file_says_truncated(adapter_file, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(adapter_file.read_bytes()[:100])
    with pytest.raises(InvalidModelFileError, match=r"cut\.safetensors.*truncated.*Download"):
        check_safetensors(str(path), what="Adapter file", fix="Download it again.")
