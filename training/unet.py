"""The frozen UNet seen by UNet recipes: noise schedule, what it predicts, forward, and feature capture.

:class:`FrozenUNet` is the interface; :class:`DiffusersUNet` implements it for a
diffusers ``UNet2DConditionModel`` (the CLI path, from a diffusers folder). The
ComfyUI MODEL wrapper lives in ``nodes/``. Features are captured with forward
hooks: the outputs of the down, mid and up blocks (PEA-Diffusion's feature
distillation) and of every cross-attention layer (image-as-pivot alignment).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol

import torch
from torch import nn

from ..models.families import size_conditioning_ids

__all__ = ["FrozenUNet", "DiffusersUNet", "sd_alphas_cumprod", "schedule_from_folder", "add_noise", "denoiser_target",
           "training_noise", "PREDICTIONS"]

#: What a denoiser may be trained to output: the noise (``eps``), the velocity ``v`` (SD2.x 768-v models), or
#: ``flow``: a rectified-flow model (SD3, Flux) fed ``x_s = (1 - s) x_0 + s eps`` predicts ``eps - x_0``.
PREDICTIONS = ("eps", "v", "flow")
#: The predictions of discrete-schedule UNets (``alphas_cumprod``), which diffusers folders from the CLI give.
DISCRETE_PREDICTIONS = ("eps", "v")


def sd_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's "scaled linear" DDPM schedule (as in the SD1.x/SD2.x/SDXL configs)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class FrozenUNet(Protocol):
    alphas_cumprod: torch.Tensor | None  # the discrete schedule; None for flow models
    prediction: str  # one of PREDICTIONS

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's output for noised ``latents``: noise, v or the flow, as :attr:`prediction` says;
        ``timesteps`` are integer steps of the discrete schedule, or the noise levels ``s`` in (0, 1] of a flow
        model."""

    def capture(self, kind: str) -> contextlib.AbstractContextManager[list]: ...


class DiffusersUNet:
    """A frozen diffusers ``UNet2DConditionModel``; ``prediction`` and the schedule come from the pipeline folder's
    ``scheduler/`` configuration where it has one (:func:`schedule_from_folder`)."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor | None = None, prediction: str = "eps"):
        if prediction not in DISCRETE_PREDICTIONS:
            raise ValueError(f"prediction must be one of {DISCRETE_PREDICTIONS}, not {prediction!r}")
        self.unet = unet.eval().requires_grad_(False)
        self.alphas_cumprod = alphas_cumprod if alphas_cumprod is not None else sd_alphas_cumprod()
        self.prediction = prediction

    def predict(self, latents, timesteps, cond, pooled=None):
        kwargs = {}
        if getattr(self.unet.config, "addition_embed_type", None) == "text_time":  # size-conditioned (SDXL)
            ids = size_conditioning_ids(latents.shape[-2] * 8, latents.shape[-1] * 8)
            time_ids = torch.tensor(ids, dtype=cond.dtype, device=cond.device)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.expand(latents.shape[0], -1)}
        return self.unet(latents, timesteps, encoder_hidden_states=cond, **kwargs).sample

    def _modules(self, kind: str) -> list[nn.Module]:
        if kind == "blocks":
            return [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]
        if kind == "cross_attention":
            return [m for name, m in self.unet.named_modules() if name.endswith("attn2")]
        raise ValueError(f"unknown feature kind {kind!r}")

    @contextlib.contextmanager
    def capture(self, kind: str) -> Iterator[list]:
        """Collect the outputs of the ``kind`` modules during the forward passes inside the block."""
        found: list = []

        def hook(module, args, output):
            found.append(output[0] if isinstance(output, tuple) else output)

        handles = [m.register_forward_hook(hook) for m in self._modules(kind)]
        try:
            yield found
        finally:
            for h in handles:
                h.remove()


def schedule_from_folder(folder: str, default_prediction: str) -> tuple[torch.Tensor, str, str]:
    """``(alphas_cumprod, prediction, source)`` of a diffusers pipeline folder, read from its
    ``scheduler/scheduler_config.json`` (beta schedule and ``prediction_type``) by diffusers itself; without one,
    Stable Diffusion's schedule and ``default_prediction`` (the family's). ``source`` says which, for the log."""
    import json
    import os

    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    if not os.path.isfile(path):
        return sd_alphas_cumprod(), default_prediction, "no scheduler/ folder: the family's default"
    from diffusers import DDPMScheduler

    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    scheduler = DDPMScheduler.from_config(config)
    kind = {"epsilon": "eps", "v_prediction": "v"}.get(scheduler.config.prediction_type)
    if kind is None:
        raise ValueError(f"{path}: prediction_type {scheduler.config.prediction_type!r} is not supported "
                         f"(epsilon or v_prediction)")
    return scheduler.alphas_cumprod.float(), kind, path


def _alpha(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod.to(like.device)[timesteps].view(-1, 1, 1, 1).to(like.dtype)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` (DDPM forward process)."""
    a = _alpha(alphas_cumprod, timesteps, latents)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def denoiser_target(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    alphas_cumprod: torch.Tensor, prediction: str) -> torch.Tensor:
    """What a denoiser that predicts ``prediction`` should output for ``add_noise(latents, noise, t)``:
    the noise itself, or ``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0`` (Salimans & Ho, 2022)."""
    if prediction == "eps":
        return noise
    if prediction == "v":
        a = _alpha(alphas_cumprod, timesteps, latents)
        return a.sqrt() * noise - (1 - a).sqrt() * latents
    raise ValueError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")


def training_noise(latents: torch.Tensor, unet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(noised latents, target, timesteps)`` for one training step of ``unet``: a random step of its discrete
    schedule (DDPM noising, target noise or v), or for a flow model a uniform noise level ``s`` in [0.001, 1]
    (``x_s = (1 - s) x_0 + s eps``, target ``eps - x_0``)."""
    noise = torch.randn_like(latents)
    if unet.prediction == "flow":
        s = torch.rand(latents.shape[0], device=latents.device).clamp_(1e-3, 1.0)
        s4 = s.view(-1, 1, 1, 1).to(latents.dtype)
        return (1 - s4) * latents + s4 * noise, noise - latents, s
    t = torch.randint(0, len(unet.alphas_cumprod), (latents.shape[0],), device=latents.device)
    target = denoiser_target(latents, noise, t, unet.alphas_cumprod, unet.prediction)  # noise, or v
    return add_noise(latents, noise, t, unet.alphas_cumprod), target, t
