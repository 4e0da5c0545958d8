"""Encoders: every supported family loads offline, layers, dtype, batching, masks, bad folders."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch

from babelclip.errors import InvalidDataError, InvalidModelFileError, UnsupportedModelError
from babelclip.models import load_encoder
from babelclip.models.encoder import EncoderInfo, weights_digest
from babelclip.models.tiny import TINY_ENCODER_TYPES

FAMILIES = TINY_ENCODER_TYPES


@pytest.mark.parametrize("model_type", FAMILIES)
def test_each_family_loads_with_identity(encoders, model_type):
    enc = encoders[model_type]
    assert enc.info.model_type == model_type
    assert enc.info.hidden_size == 32 and enc.info.num_layers == 2
    assert len(enc.info.fingerprint) == 16
    assert not any(p.requires_grad for p in enc.parameters())
    assert not enc.model.training


def test_the_weights_digest_names_the_checkpoint_and_the_fingerprint_its_vocabulary(encoder_dirs, encoders, xlmr,
                                                                                      xlmr_fine_tune):
    """A fine-tune shares its base's vocabulary and sizes (the fingerprint an adapter is checked against) but not
    its weights digest, which keys the caches of the encoder's states; a folder loads to one digest every time."""
    assert xlmr_fine_tune.info.fingerprint == xlmr.info.fingerprint
    assert xlmr_fine_tune.info.weights != xlmr.info.weights
    assert re.fullmatch("[0-9a-f]{16}", xlmr.info.weights)
    assert load_encoder(encoder_dirs["xlm-roberta"]).info.weights == xlmr.info.weights
    assert len({e.info.weights for e in encoders.values()}) == len(encoders)
    assert xlmr.info.to_dict()["weights"] == xlmr.info.weights


def test_the_identity_is_the_fingerprint_then_the_weights_digest(xlmr, xlmr_fine_tune):
    """``identity``: the one spelling of what keys the encoder's computations (feature caches, code-switched
    copies, host checkpoints), in the order and with the names those keys had before it existed."""
    info = EncoderInfo("e", "xlm-roberta", 32, 2, 100, "e1", weights="w1")
    assert info.identity == {"fingerprint": "e1", "weights": "w1"} and list(info.identity) == ["fingerprint", "weights"]
    assert xlmr.info.identity == {"fingerprint": xlmr.info.fingerprint, "weights": xlmr.info.weights}
    assert xlmr_fine_tune.info.identity != xlmr.info.identity  # one vocabulary, other weights
    assert "identity" not in xlmr.info.to_dict()  # not stored in adapter files: the fields are


def test_the_weights_digest_reads_a_strided_sample_of_each_tensor():
    torch.manual_seed(0)
    layer = torch.nn.Linear(300, 100)  # 30,000 weights: every 8th is read (at most 4096); the 100 biases all
    before = weights_digest(layer)
    assert weights_digest(layer) == before
    with torch.no_grad():
        layer.weight.view(-1)[8] += 1e-3
    moved = weights_digest(layer)
    assert moved != before
    with torch.no_grad():
        layer.weight.view(-1)[9] += 1e-3  # between two samples: unseen (a fine-tune moves nearly every weight)
    assert weights_digest(layer) == moved
    with torch.no_grad():
        layer.bias[-1] += 1e-3
    assert weights_digest(layer) != moved
    assert weights_digest(layer.to(torch.float64)) == weights_digest(layer.to(torch.float32))  # values, not dtype


@pytest.mark.parametrize("model_type", FAMILIES)
def test_padding_never_changes_a_prompts_output(encoders, model_type):
    enc = encoders[model_type]
    short = enc.with_special_tokens(enc.tokenize("一只红色的猫")[0])
    long = enc.with_special_tokens(enc.tokenize("a watercolor painting of a lighthouse in a storm")[0])
    alone = enc.encode_ids([short]).hidden[0]
    for layer in ("last", "penultimate", 1):
        alone = enc.encode_ids([short], layer).hidden[0]
        padded = enc.encode_ids([short], layer, pad_to=len(short) + 9).hidden[0, : len(short)]
        batched = enc.encode_ids([long, short], layer).hidden[1, : len(short)]
        torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_layer_selection(encoders, model_type):
    enc = encoders[model_type]
    ids = [enc.with_special_tokens(enc.tokenize("красная кошка")[0])]
    last = enc.encode_ids(ids, "last").hidden
    assert torch.equal(enc.encode_ids(ids, -1).hidden, last)
    assert torch.equal(enc.encode_ids(ids, 2).hidden, last)
    pen = enc.encode_ids(ids, "penultimate").hidden
    assert torch.equal(enc.encode_ids(ids, -2).hidden, pen)
    assert not torch.allclose(pen, last)
    emb = enc.encode_ids(ids, 0).hidden
    assert not torch.allclose(emb, pen)
    for bad in ("first", 3, -4, 1.5):
        with pytest.raises(InvalidDataError):
            enc.encode_ids(ids, bad)


def test_batched_encode_masks_and_shapes(xlmr):
    texts = ["a", "a red cat sleeping on a wooden roof", ""]
    out = xlmr.encode(texts)
    lengths = [len(xlmr.with_special_tokens(xlmr.tokenize(t)[0])) for t in texts]
    assert out.hidden.shape == (3, max(lengths), 32)
    assert out.mask.sum(1).tolist() == lengths


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_and_device(encoder_dirs, encoders, dtype):
    enc = load_encoder(encoder_dirs["bert"], device="cpu", dtype=dtype)
    assert enc.dtype == dtype and enc.device.type == "cpu"
    assert enc.info.weights == encoders["bert"].info.weights  # the checkpoint's digest, whatever it is cast to
    assert enc.encode(["hola"]).hidden.dtype == dtype


def test_too_long_sequence_is_refused(xlmr):
    with pytest.raises(InvalidDataError, match="chunk"):
        xlmr.encode_ids([[5] * (xlmr.max_length + 1)])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_and_config(tmp_path, encoder_dirs):
    with pytest.raises(InvalidModelFileError, match="does not exist"):
        load_encoder(tmp_path / "nope")
    d = _copy(encoder_dirs["bert"], tmp_path / "noconf")
    os.remove(d / "config.json")
    with pytest.raises(InvalidModelFileError, match="config.json"):
        load_encoder(d)


def test_remote_code_config_is_refused(tmp_path, encoder_dirs):
    d = _copy(encoder_dirs["bert"], tmp_path / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidModelFileError, match="custom code"):
        load_encoder(d)


def test_pickle_only_weights_are_refused(tmp_path, encoder_dirs):
    d = _copy(encoder_dirs["bert"], tmp_path / "pickle")
    os.rename(d / "model.safetensors", d / "pytorch_model.bin")
    with pytest.raises(InvalidModelFileError, match="pickle"):
        load_encoder(d)


def test_unsupported_architecture(tmp_path, encoder_dirs):
    d = _copy(encoder_dirs["bert"], tmp_path / "gpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        load_encoder(d)


def test_missing_tokenizer(tmp_path, encoder_dirs):
    d = _copy(encoder_dirs["xlm-roberta"], tmp_path / "notok")
    for f in ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer_config.json"):
        os.remove(d / f)
    with pytest.raises(InvalidModelFileError, match="tokenizer"):
        load_encoder(d)


@pytest.mark.parametrize("model_type", ["xlm-roberta", "t5"])
def test_int8_encoder_runs_quantized_and_stays_close(encoder_dirs, encoders, model_type):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    full = encoders[model_type]
    enc = load_encoder(encoder_dirs[model_type], int8=True)
    kinds = {type(m) for m in enc.model.modules()}
    assert DynamicInt8Linear in kinds and torch.nn.Linear not in kinds and enc.int8 and not full.int8
    assert enc.info == full.info  # same model for adapters: the same fingerprint
    assert enc.info.weights == full.info.weights != ""  # the checkpoint's (int8 is keyed apart in the caches)
    texts = ["a red cat sleeping on a wooden roof", "кошка спит на крыше", "猫"]
    for layer in ("last", "penultimate"):
        a, b = full.encode(texts, layer).hidden, enc.encode(texts, layer).hidden
        assert a.shape == b.shape and not torch.equal(a, b)  # really quantized ...
        cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
        assert cos.min() > 0.98, cos  # ... and still the same states


def test_int8_needs_float32_on_the_cpu(encoder_dirs):
    with pytest.raises(UnsupportedModelError, match=r"int8 needs the encoder 'xlm-roberta' in float32 on the CPU.*"
                                                    r"turn int8 off"):
        load_encoder(encoder_dirs["xlm-roberta"], dtype=torch.float16, int8=True)
