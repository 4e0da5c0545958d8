"""UNet recipes (pea, mulan, iap): real optimisation steps through a tiny frozen diffusers UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from babelclip.errors import InvalidDataError
from babelclip.models import build_adapter
from babelclip.training.recipes import get_recipe
from babelclip.training.trainer import TrainConfig, train
from babelclip.training.unet import DiffusersUNet

from .test_training import task, synth_encoder  # noqa: F401  (fixtures)


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return DiffusersUNet(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=8))


class WithLatents:
    """Text features plus one fixed 'image latent' per example (what the VAE gives for real images)."""

    def __init__(self, features, seed=0):
        self.features = features
        self.latents = torch.randn(len(features), 4, 8, 8, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.features)

    def batch(self, indices):
        b = self.features.batch(indices)
        b.latents = self.latents[list(indices)]
        return b


def fixed_loss(recipe, adapter, batch, unet):
    """The recipe's loss on a fixed probe (same noise and timesteps before and after training)."""
    torch.manual_seed(123)
    with torch.no_grad():
        return recipe.loss(adapter, batch, unet)[0].item()


@pytest.mark.parametrize("name", ["pea", "mulan", "iap"])
def test_unet_recipe_lowers_its_loss(task, name):  # noqa: F811
    _, tr, _ = task
    unet = tiny_unet()
    data = WithLatents(tr)
    # pea's optional noise term has a high floor on a random UNet; its distillation terms are what is tested
    recipe = get_recipe(name, **({"noise_weight": 0.0} if name == "pea" else {}))
    assert recipe.needs_unet and recipe.needs_images
    torch.manual_seed(0)
    adapter = build_adapter("mlp", 32, tr.family, hidden_dim=128)
    frozen = [p.clone() for p in unet.unet.parameters()]
    probe = data.batch(range(16))
    before = fixed_loss(recipe, adapter, probe, unet)
    result = train(adapter, recipe, data, TrainConfig(steps=40, lr=3e-3, batch_size=8, warmup=0.0), unet=unet)
    after = fixed_loss(recipe, adapter, probe, unet)
    assert len(result.losses) == 40 and all(map(torch.isfinite, map(torch.tensor, result.losses)))
    assert after < before * 0.97, (before, after)
    assert min(result.losses[-10:]) < max(result.losses[:5]), name
    assert all(torch.equal(a, b) for a, b in zip(frozen, unet.unet.parameters()))  # the UNet stays frozen


def test_unet_recipes_need_a_unet_and_images(task):  # noqa: F811
    _, tr, _ = task
    adapter = build_adapter("linear", 32, tr.family)
    with pytest.raises(InvalidDataError, match="trains through the frozen denoiser"):
        train(adapter, get_recipe("pea"), tr, TrainConfig(steps=1, batch_size=4))
    with pytest.raises(InvalidDataError, match="needs images"):
        get_recipe("iap").loss(adapter, tr.batch(range(4)), tiny_unet())


def test_recipes_are_distinct():
    from babelclip.training.recipes import RECIPES

    get_recipe("pea")
    names = {"altclip-kd", "mclip-trikd", "pea", "mulan", "iap"}
    assert names <= set(RECIPES)
    assert len({RECIPES[n].loss for n in names}) == len(names)  # no renamed copies
    assert len({RECIPES[n].loss_formula for n in names}) == len(names)
