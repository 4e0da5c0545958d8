"""The frozen UNet seen by UNet recipes: noise schedule, forward, and feature capture.

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

__all__ = ["FrozenUNet", "DiffusersUNet", "sd_alphas_cumprod"]


def sd_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's "scaled linear" DDPM schedule (as in the SD1.x/SD2.x/SDXL configs)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class FrozenUNet(Protocol):
    alphas_cumprod: torch.Tensor

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                      pooled: torch.Tensor | None = None) -> torch.Tensor: ...

    def capture(self, kind: str) -> contextlib.AbstractContextManager[list]: ...


class DiffusersUNet:
    """A frozen diffusers ``UNet2DConditionModel`` (epsilon prediction)."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor | None = None):
        self.unet = unet.eval().requires_grad_(False)
        self.alphas_cumprod = alphas_cumprod if alphas_cumprod is not None else sd_alphas_cumprod()

    def predict_noise(self, latents, timesteps, cond, pooled=None):
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


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.to(latents.device)[timesteps].view(-1, 1, 1, 1).to(latents.dtype)
    return a.sqrt() * latents + (1 - a).sqrt() * noise
