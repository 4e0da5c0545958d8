"""Shared fixtures: tiny random encoders and adapter files, built once per test session."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from babelclip.models import FAMILIES, build_adapter, load_encoder, save_adapter
from babelclip.models.tiny import TINY_ENCODER_TYPES, build_tiny_encoder


@pytest.fixture(scope="session")
def encoder_dirs(tmp_path_factory):
    """One tiny encoder folder per supported family, keyed by model_type."""
    base = tmp_path_factory.mktemp("encoders")
    return {mt: build_tiny_encoder(base / mt, mt, seed=i) for i, mt in enumerate(TINY_ENCODER_TYPES)}


@pytest.fixture(scope="session")
def encoders(encoder_dirs):
    return {mt: load_encoder(path) for mt, path in encoder_dirs.items()}


@pytest.fixture(scope="session")
def xlmr(encoders):
    return encoders["xlm-roberta"]


def make_adapter_file(path, encoder, family="sd1", arch="mlp", seed=0, **metadata):
    """Save a random adapter for ``encoder`` -> ``family`` at ``path`` and return the path."""
    torch.manual_seed(seed)
    adapter = build_adapter(arch, encoder.info.hidden_size, FAMILIES[family])
    save_adapter(adapter, path, {"encoder": encoder.info, "family": family, **metadata}, overwrite=True)
    return path


@pytest.fixture(scope="session")
def adapter_factory():
    return make_adapter_file


def fine_tune_folder(src, dst, scale=0.01, seed=1):
    """Copy encoder folder ``src`` to ``dst`` with every weight moved by noise of std ``scale`` and return ``dst``:
    a stand-in for a fine-tune (one config and tokenizer, so one fingerprint, but other weights)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    tensors = {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="session")
def fine_tune():
    return fine_tune_folder


@pytest.fixture(scope="session")
def xlmr_fine_tune(encoder_dirs, tmp_path_factory):
    """A fine-tune of the tiny XLM-R encoder (:func:`fine_tune_folder`), loaded."""
    return load_encoder(fine_tune_folder(encoder_dirs["xlm-roberta"], tmp_path_factory.mktemp("tuned") / "xlmr"))
