"""Adapter architectures: registry, documented sizes, output shapes per family, masking."""

from __future__ import annotations

import pathlib
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
    """The table in the module docstring (XLM-R-large input, SD1.5, SDXL, SD3, Flux) is what the code builds, and
    the README's table says the same in millions and fp16 megabytes."""
    rows = re.findall(r"``(\w+)``\s+.+?\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s*$", adapters_mod.__doc__,
                      flags=re.M)
    documented = {name: tuple(int(x.replace(",", "")) for x in counts) for name, *counts in rows}
    assert set(documented) == set(ARCHS)
    for name, counts in documented.items():
        got = tuple(build_adapter(name, 1024, FAMILIES[f], device="meta").num_parameters()
                    for f in ("sd1", "sdxl", "sd3", "flux"))
        assert got == counts, name
    assert documented["mlp"][0] <= 10_000_000  # PEA-size adapter stays small
    assert documented["mlp"][3] * 2 <= 112_000_000  # Flux mlp in fp16: at most PEA-Diffusion's Flux adapter (112 MB)
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for name, counts in documented.items():
        cells = " / ".join(f"{c / 1e6:.2f}M ({c * 2 / 1e6:.1f} MB)" for c in counts)
        assert f"| `{name}` |" in readme and cells in readme, (name, cells)


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


def test_mlp_pooled_from_the_mean_encoder_state_round_trips_through_a_file(tmp_path):
    """``pool="input"``: the pooled vector depends on the encoder states' mean only (token order and repeats of the
    same states do not change it), and the setting is saved and read back; an unknown source is refused."""
    from babelclip.errors import InvalidModelFileError
    from babelclip.models import load_adapter, save_adapter
    from babelclip.models.encoder import EncoderInfo

    torch.manual_seed(0)
    adapter = build_adapter("mlp", 32, FAMILIES["sd1"], hidden_dim=64, pool="input").eval()
    a, b = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
    two, swapped, repeated = torch.cat([a, b], 1), torch.cat([b, a], 1), torch.cat([a, b, a, b], 1)
    pooled = [adapter(x, torch.ones(1, x.shape[1])).pooled for x in (two, swapped, repeated)]
    assert torch.allclose(pooled[0], pooled[1], atol=1e-6) and torch.allclose(pooled[0], pooled[2], atol=1e-6)
    default = build_adapter("mlp", 32, FAMILIES["sd1"], hidden_dim=64).eval()
    assert default.config.pool == "output" and default.pooled_proj.in_features == 768

    path = tmp_path / "pool-input.safetensors"
    save_adapter(adapter, path, {"encoder": EncoderInfo("e", "xlm-roberta", 32, 2, 100, "e"), "family": "sd1"})
    loaded = load_adapter(path)
    assert loaded.config.pool == "input" and torch.equal(loaded(two, torch.ones(1, 2)).pooled, pooled[0])

    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["babelclip.arch_config"] = json.dumps({**json.loads(meta["babelclip.arch_config"]), "pool": "median"})
    save_file(tensors, str(tmp_path / "bad.safetensors"), meta)
    with pytest.raises(InvalidModelFileError, match=r"bad\.safetensors.*pool must be one of"):
        load_adapter(tmp_path / "bad.safetensors")


def test_linear_pool_norm_reads_the_direction_of_the_mean_state_only(tmp_path):
    from babelclip.models import load_adapter, save_adapter
    from babelclip.models.encoder import EncoderInfo

    torch.manual_seed(0)
    adapter = build_adapter("linear", 32, FAMILIES["sd1"], pool_norm=True).eval()
    x, mask = torch.randn(2, 4, 32), torch.ones(2, 4)
    assert torch.allclose(adapter(x, mask).pooled, adapter(3.0 * x, mask).pooled, atol=1e-5)
    plain = build_adapter("linear", 32, FAMILIES["sd1"]).eval()
    assert not torch.allclose(plain(x, mask).pooled, plain(3.0 * x, mask).pooled, atol=1e-3)
    path = tmp_path / "norm.safetensors"
    save_adapter(adapter, path, {"encoder": EncoderInfo("e", "xlm-roberta", 32, 2, 100, "e"), "family": "sd1"})
    assert load_adapter(path).config.pool_norm is True
    with pytest.raises(ValueError, match="pool_norm must be true or false"):
        build_adapter("linear", 32, FAMILIES["sd1"], pool_norm="yes")
