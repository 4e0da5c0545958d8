"""Adapter architectures: registry, documented sizes, output shapes per family, masking."""

from __future__ import annotations

import re

import pytest
import torch

import babelclip.models.adapters as adapters_mod
from babelclip.errors import IncompatibleAdapterError
from babelclip.models import ARCHITECTURES, FAMILIES, build_adapter
from babelclip.models.adapters import Adapter, register_arch

ARCHS = ("linear", "mlp", "bottleneck", "resampler")


def test_registry_holds_the_four_architectures_with_their_approach():
    assert set(ARCHS) <= set(ARCHITECTURES)
    for name in ARCHS:
        cls = ARCHITECTURES[name]
        assert cls.arch == name and cls.approach and cls.__doc__


def test_documented_parameter_counts_match_the_code():
    """The table in the module docstring (XLM-R-large input, SD1.5 and SDXL) is what the code builds."""
    rows = re.findall(r"``(\w+)``\s+.+?\s+([\d,]+)\s+([\d,]+)\s*$", adapters_mod.__doc__, flags=re.M)
    documented = {name: (int(a.replace(",", "")), int(b.replace(",", ""))) for name, a, b in rows}
    assert set(documented) == set(ARCHS)
    for name, (sd15, sdxl) in documented.items():
        got = tuple(build_adapter(name, 1024, FAMILIES[f], device="meta").num_parameters() for f in ("sd1", "sdxl"))
        assert got == (sd15, sdxl), name
    assert documented["mlp"][0] <= 10_000_000  # PEA-size adapter stays small


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_output_shapes_per_family(arch, family):
    fam = FAMILIES[family]
    ad = build_adapter(arch, 32, fam)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = ad(torch.randn(2, 5, 32), mask)
    tokens = 77 if arch == "resampler" else 5
    assert out.cond.shape == (2, tokens, fam.cond_dim)
    assert out.pooled.shape == (2, fam.pooled_dim)
    assert out.mask.shape == (2, tokens)
    assert fam.cond_dim == sum(fam.parts)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_does_not_change_real_tokens_or_pooled(arch):
    torch.manual_seed(0)
    ad = build_adapter(arch, 16, FAMILIES["sd1"]).eval()
    h = torch.randn(1, 4, 16)
    alone = ad(h, torch.ones(1, 4, dtype=torch.long))
    padded_h = torch.cat([h, torch.randn(1, 3, 16) * 50], 1)
    padded = ad(padded_h, torch.tensor([[1, 1, 1, 1, 0, 0, 0]]))
    torch.testing.assert_close(padded.pooled, alone.pooled, atol=1e-5, rtol=1e-5)
    if ad.token_aligned:
        torch.testing.assert_close(padded.cond[:, :4], alone.cond, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(padded.cond, alone.cond, atol=1e-5, rtol=1e-5)


def test_unknown_architecture_and_double_registration():
    with pytest.raises(IncompatibleAdapterError, match="Unknown adapter architecture 'lora'"):
        build_adapter("lora", 32, FAMILIES["sd1"])
    with pytest.raises(ValueError, match="twice"):
        register_arch(type("Dup", (Adapter,), {"arch": "mlp"}))


@pytest.mark.parametrize("arch", ARCHS)
def test_adapters_are_trainable(arch):
    ad = build_adapter(arch, 16, FAMILIES["sdxl"])
    out = ad(torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.long))
    (out.cond.square().mean() + out.pooled.square().mean()).backward()
    assert all(p.grad is not None for p in ad.parameters())
