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


def test_the_v_target_is_diffusers_velocity_on_stable_diffusions_schedule():
    from diffusers import DDPMScheduler

    from babelclip.training.unet import add_noise, denoiser_target, sd_alphas_cumprod

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert torch.allclose(scheduler.alphas_cumprod.float(), sd_alphas_cumprod(), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 900, 999])
    a = sd_alphas_cumprod()
    assert torch.allclose(denoiser_target(x0, noise, t, a, "v"), scheduler.get_velocity(x0, noise, t), atol=1e-5)
    assert torch.allclose(add_noise(x0, noise, t, a), scheduler.add_noise(x0, noise, t), atol=1e-5)
    assert denoiser_target(x0, noise, t, a, "eps") is noise
    with pytest.raises(ValueError, match="prediction"):
        denoiser_target(x0, noise, t, a, "flow")


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_denoising_terms_train_towards_what_the_unet_predicts(task, prediction):  # noqa: F811
    """MuLan's loss (and PEA's noise term) is the MSE to the noise for an eps model and to v for a v model."""
    from diffusers import DDPMScheduler

    _, tr, _ = task
    unet = tiny_unet()
    unet.prediction = prediction
    batch = WithLatents(tr).batch(range(4))
    adapter = build_adapter("linear", 32, tr.family)
    torch.manual_seed(7)  # the recipe's draws, in its order: noise, then timesteps
    noise = torch.randn_like(batch.latents)
    t = torch.randint(0, 1000, (4,))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    target = noise if prediction == "eps" else scheduler.get_velocity(batch.latents, noise, t)
    with torch.no_grad():
        out = adapter(batch.hidden, batch.mask)
        expected = torch.nn.functional.mse_loss(
            unet.predict(scheduler.add_noise(batch.latents, noise, t), t, out.cond, out.pooled), target).item()
        torch.manual_seed(7)
        mulan = get_recipe("mulan").loss(adapter, batch, unet)[0].item()
        torch.manual_seed(7)
        pea_noise = get_recipe("pea").loss(adapter, batch, unet)[1]["noise"]
    assert mulan == pytest.approx(expected, rel=1e-4) and pea_noise == pytest.approx(expected, rel=1e-4)


def test_the_schedule_and_prediction_come_from_the_pipelines_scheduler_config(tmp_path):
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    from babelclip.training.unet import schedule_from_folder, sd_alphas_cumprod

    alphas, prediction, source = schedule_from_folder(str(tmp_path), "v")
    assert prediction == "v" and torch.equal(alphas, sd_alphas_cumprod()) and "default" in source
    EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           prediction_type="v_prediction").save_pretrained(tmp_path / "scheduler")
    alphas, prediction, source = schedule_from_folder(str(tmp_path), "eps")
    assert prediction == "v" and torch.allclose(alphas, sd_alphas_cumprod()) and source.endswith("scheduler_config.json")
    DDPMScheduler(beta_schedule="linear", prediction_type="epsilon").save_pretrained(tmp_path / "scheduler")
    alphas, prediction, _ = schedule_from_folder(str(tmp_path), "v")
    assert prediction == "eps" and not torch.allclose(alphas, sd_alphas_cumprod())
    DDPMScheduler(prediction_type="sample").save_pretrained(tmp_path / "scheduler")
    with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
        schedule_from_folder(str(tmp_path), "eps")


def test_flow_models_get_the_rectified_flow_noising_and_target():
    """SD3 / Flux (prediction "flow"): x_s = (1 - s) x_0 + s eps with s in [0.001, 1], target eps - x_0; the
    discrete path is unchanged (timesteps index the schedule)."""
    from types import SimpleNamespace

    from babelclip.training.unet import sd_alphas_cumprod, training_noise

    latents = torch.randn(64, 4, 2, 2)
    torch.manual_seed(0)
    x, target, s = training_noise(latents, SimpleNamespace(prediction="flow", alphas_cumprod=None))
    torch.manual_seed(0)
    eps = torch.randn_like(latents)
    assert s.shape == (64,) and float(s.min()) >= 1e-3 and float(s.max()) <= 1 and s.std() > 0.1
    s4 = s.view(-1, 1, 1, 1)
    torch.testing.assert_close(x, (1 - s4) * latents + s4 * eps)
    torch.testing.assert_close(target, eps - latents)
    torch.manual_seed(1)
    x, target, t = training_noise(latents, SimpleNamespace(prediction="eps", alphas_cumprod=sd_alphas_cumprod()))
    torch.manual_seed(1)
    eps = torch.randn_like(latents)
    a = sd_alphas_cumprod()[t].view(-1, 1, 1, 1)
    assert t.dtype == torch.int64 and int(t.max()) < 1000
    torch.testing.assert_close(target, eps)  # eps-prediction: the noise drawn
    torch.testing.assert_close(x, a.sqrt() * latents + (1 - a).sqrt() * eps)
