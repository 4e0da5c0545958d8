"""Adapter files: round trip, metadata, validation before allocation, refusal of unsafe files."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from babelclip.errors import IncompatibleAdapterError, InvalidModelFileError
from babelclip.models import FAMILIES, build_adapter, load_adapter, read_adapter_spec, save_adapter
from babelclip.models.adapter_file import check_compatible


def _rewrite(src, dst, *, meta=None, drop=(), tensors=None):
    """Copy an adapter file with changed metadata or tensors."""
    with safe_open(str(src), "pt") as f:
        md = dict(f.metadata())
        ts = {k: f.get_tensor(k) for k in f.keys()}
    for k in drop:
        md.pop(k, None)
    md.update(meta or {})
    if tensors:
        ts.update(tensors)
    save_file(ts, str(dst), metadata=md)
    return dst


@pytest.fixture
def sd1_file(tmp_path, xlmr, adapter_factory):
    return adapter_factory(tmp_path / "sd1.safetensors", xlmr, "sd1", "mlp", languages=["zh", "ru"],
                           recipe={"name": "altclip-kd", "lr": 1e-4}, layer="penultimate")


@pytest.mark.parametrize("arch", ["linear", "mlp", "bottleneck", "resampler"])
def test_round_trip_preserves_weights_and_metadata(tmp_path, xlmr, arch):
    torch.manual_seed(1)
    ad = build_adapter(arch, 32, FAMILIES["sdxl"])
    path = save_adapter(ad, tmp_path / f"{arch}.safetensors",
                        {"encoder": xlmr.info, "family": "sdxl", "languages": ["ja"], "layer": -2})
    loaded = load_adapter(path, encoder=xlmr.info, family=FAMILIES["sdxl"])
    for k, v in ad.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    spec = loaded.spec
    assert spec.arch == arch and spec.family.name == "sdxl" and spec.layer == -2
    assert spec.encoder["fingerprint"] == xlmr.info.fingerprint
    assert json.loads(spec.metadata["babelclip.languages"]) == ["ja"]
    assert all(isinstance(v, str) for v in spec.metadata.values())
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_save_never_overwrites_by_default(sd1_file, xlmr):
    with pytest.raises(InvalidModelFileError, match="already exists"):
        save_adapter(build_adapter("mlp", 32, FAMILIES["sd1"]), sd1_file, {"encoder": xlmr.info, "family": "sd1"})


def test_wrong_family_names_both_sides(sd1_file, xlmr):
    with pytest.raises(IncompatibleAdapterError) as e:
        load_adapter(sd1_file, encoder=xlmr.info, family=FAMILIES["sdxl"])
    msg = str(e.value)
    assert "sd1.safetensors" in msg and "SD1.x" in msg and "SDXL" in msg and "Load an adapter" in msg


def test_wrong_encoder_names_both_sides(sd1_file, encoders):
    with pytest.raises(IncompatibleAdapterError) as e:
        load_adapter(sd1_file, encoder=encoders["bert"].info)
    msg = str(e.value)
    assert "xlm-roberta" in msg and "bert" in msg and "Load the encoder" in msg


def test_same_size_other_encoder_is_caught_by_fingerprint(tmp_path, sd1_file, xlmr):
    other = _rewrite(sd1_file, tmp_path / "other.safetensors", meta={"babelclip.encoder": json.dumps(
        {**xlmr.info.to_dict(), "fingerprint": "0000000000000000", "name": "xlm-roberta-base"})})
    with pytest.raises(IncompatibleAdapterError, match="fingerprint"):
        load_adapter(other, encoder=xlmr.info)


def test_a_fine_tune_of_the_encoder_runs_its_adapters(sd1_file, xlmr, xlmr_fine_tune):
    """The metadata records the weights digest of the encoder it was trained on, but another checkpoint with the
    same vocabulary and sizes (a fine-tune) may run the adapter: only the fingerprint is checked."""
    spec = read_adapter_spec(sd1_file)
    assert spec.encoder["weights"] == xlmr.info.weights != xlmr_fine_tune.info.weights
    check_compatible(spec, xlmr_fine_tune.info)
    assert load_adapter(sd1_file, encoder=xlmr_fine_tune.info, family=FAMILIES["sd1"]).spec.arch == "mlp"


def test_wrong_dims_in_the_connected_encoder(tmp_path, sd1_file, xlmr):
    bigger = _rewrite(sd1_file, tmp_path / "dims.safetensors", meta={"babelclip.encoder": json.dumps(
        {**xlmr.info.to_dict(), "hidden_size": 1024})})
    with pytest.raises(IncompatibleAdapterError, match="hidden size 1024"):
        check_compatible(read_adapter_spec(bigger), xlmr.info)


@pytest.mark.parametrize("meta,error,match", [
    ({"babelclip.arch": "hypernet"}, IncompatibleAdapterError, "does not know"),
    ({"babelclip.format_version": "7"}, IncompatibleAdapterError, "newer BabelCLIP"),
    ({"babelclip.format_version": "one"}, InvalidModelFileError, "format_version"),
    ({"babelclip.arch_config": "{not json"}, InvalidModelFileError, "malformed"),
    ({"babelclip.arch_config": json.dumps({"in_dim": 32})}, InvalidModelFileError, "does not fit"),
    ({"babelclip.target": json.dumps({"family": "hidream"})}, IncompatibleAdapterError, "hidream"),
    ({"babelclip.target": json.dumps({"family": "sdxl"})}, InvalidModelFileError, "inconsistent"),
])
def test_bad_metadata(tmp_path, sd1_file, meta, error, match):
    bad = _rewrite(sd1_file, tmp_path / "bad.safetensors", meta=meta)
    with pytest.raises(error, match=match):
        load_adapter(bad)


def test_missing_metadata_is_not_an_adapter(tmp_path, sd1_file):
    bad = _rewrite(sd1_file, tmp_path / "plain.safetensors", drop=["babelclip.arch", "babelclip.encoder"])
    with pytest.raises(InvalidModelFileError, match="not a BabelCLIP adapter"):
        load_adapter(bad)


def test_shape_mismatch_is_caught_from_the_header(tmp_path, sd1_file):
    bad = _rewrite(sd1_file, tmp_path / "shape.safetensors", tensors={"pooled_proj.weight": torch.zeros(3, 3)})
    with pytest.raises(InvalidModelFileError, match="do not match"):
        read_adapter_spec(bad)


def test_corrupted_tensor_bytes_fail_the_hash(tmp_path, sd1_file):
    with safe_open(str(sd1_file), "pt") as f:
        w = f.get_tensor("pooled_proj.weight").clone()
    w[0, 0] += 1
    bad = _rewrite(sd1_file, tmp_path / "flip.safetensors", tensors={"pooled_proj.weight": w})
    with pytest.raises(InvalidModelFileError, match="corrupted"):
        load_adapter(bad)


def test_nan_weights_are_refused(tmp_path, sd1_file):
    with safe_open(str(sd1_file), "pt") as f:
        w = f.get_tensor("pooled_proj.weight").clone()
    w[0, 0] = float("nan")
    bad = _rewrite(sd1_file, tmp_path / "nan.safetensors", tensors={"pooled_proj.weight": w},
                   drop=["babelclip.tensor_hash"])
    with pytest.raises(InvalidModelFileError, match="NaN"):
        load_adapter(bad)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickle_files_are_refused_with_conversion_hint(tmp_path, suffix):
    path = tmp_path / f"adapter{suffix}"
    path.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(InvalidModelFileError, match="convert it"):
        load_adapter(path)


def test_pickle_renamed_to_safetensors(tmp_path):
    path = tmp_path / "renamed.safetensors"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(InvalidModelFileError, match="pickle"):
        load_adapter(path)


@pytest.mark.parametrize("content", [b"", b"\x01\x02", os.urandom(4096),
                                     (10 ** 12).to_bytes(8, "little") + b"{}"])
def test_truncated_empty_random_or_huge_header(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFileError):
        load_adapter(path)


def test_truncated_real_file(tmp_path, sd1_file):
    data = sd1_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelFileError):
        load_adapter(cut)
