"""UNet recipes: the adapter is trained through the frozen UNet of the checkpoint.

* ``pea`` — PEA-Diffusion: the same UNet fed the teacher's conditioning of the
  English caption and the adapter's conditioning of the target text, on the same
  noised latents: ``MSE(eps_s, eps_t) + 0.1 * sum MSE(f_s, f_t)`` over the
  down/mid/up block outputs, plus ``noise_weight * MSE(eps_s, eps)``.
* ``mulan`` — MuLan: plain denoising loss ``MSE(eps_s, eps)`` through the frozen
  UNet, trained on English captions and their images only (zero-shot to other
  languages through the multilingual encoder).

  ``eps`` stands for what the denoiser predicts: the noise, ``v`` for v-prediction
  models (SD2.x 768-v), or the flow ``eps - x_0`` of rectified-flow transformers (SD3,
  Flux: "UNet" and "blocks" then mean their transformer and its image-stream blocks)
  (``unet.prediction``).
* ``iap`` — image as pivot: the image latents are the pivot; the cross-attention
  outputs of the UNet attending to the adapter's conditioning of the target text
  are pulled to those attending to the teacher's conditioning of the English text.
  SD3's and Flux's transformers attend jointly over text and image tokens and have no
  cross-attention layers, so ``iap`` is refused for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidDataError
from .recipe_base import Batch, Recipe
from .unet import training_noise

__all__ = ["Pea", "MuLan", "ImageAsPivot"]


class _UNetRecipe(Recipe):
    needs_images = True
    needs_unet = True

    def _noised(self, batch: Batch, unet):
        if batch.latents is None:
            raise InvalidDataError(f"Recipe {self.name!r} needs images: give the data file an 'image' column "
                                   f"(the images are encoded once with the VAE).")
        return training_noise(batch.latents, unet)  # noised latents, target (noise, v or flow), timesteps

    def _paired(self, adapter, batch: Batch, unet, kind: str):
        """The same noised latents through the UNet twice: with the teacher's conditioning of the English text
        (frozen, no grad) and with the adapter's of the target text; ``kind`` features captured from both."""
        if batch.teacher_cond is None:
            raise InvalidDataError(f"Recipe {self.name!r} needs the teacher's conditioning of the English text.")
        x, target, t = self._noised(batch, unet)
        with torch.no_grad(), unet.capture(kind) as teacher_feats:
            eps_t = unet.predict(x, t, batch.teacher_cond.to(x.dtype), batch.teacher_pooled)
        out = adapter(batch.hidden, batch.mask)
        with unet.capture(kind) as student_feats:
            eps_s = unet.predict(x, t, out.cond.to(x.dtype), out.pooled)
        if not teacher_feats or len(teacher_feats) != len(student_feats):
            raise InvalidDataError(f"The UNet's {kind.replace('_', ' ')} features could not be captured.")
        return target, eps_t, eps_s, teacher_feats, student_feats


class Pea(_UNetRecipe):
    name = "pea"
    approach = "PEA-Diffusion (plug-and-play language adapter, KD through the frozen UNet)"
    loss_formula = "MSE(eps_s, eps_t) + 0.1 * sum block-feature MSE + noise_weight * MSE(eps_s, eps)"

    def __init__(self, feature_weight: float = 0.1, noise_weight: float = 1.0):
        self.feature_weight, self.noise_weight = feature_weight, noise_weight

    def loss(self, adapter, batch, unet=None):
        target, eps_t, eps_s, teacher_feats, student_feats = self._paired(adapter, batch, unet, "blocks")
        kd = F.mse_loss(eps_s.float(), eps_t.float())
        feats = sum(F.mse_loss(s.float(), t_.float()) for s, t_ in zip(student_feats, teacher_feats))
        denoise = F.mse_loss(eps_s.float(), target.float())
        loss = kd + self.feature_weight * feats + self.noise_weight * denoise
        return loss, {"eps_kd": kd.item(), "features": float(feats.detach()), "noise": denoise.item()}


class MuLan(_UNetRecipe):
    name = "mulan"
    approach = "MuLan language adapter (denoising loss, English image-text only)"
    loss_formula = "MSE(eps_s, eps)"

    def teacher_layout(self, adapter):
        return "mean"  # the teacher's tokens are not read

    def loss(self, adapter, batch, unet=None):
        x, target, t = self._noised(batch, unet)
        out = adapter(batch.hidden, batch.mask)
        loss = F.mse_loss(unet.predict(x, t, out.cond.to(x.dtype), out.pooled).float(), target.float())
        return loss, {"noise": loss.item()}


class ImageAsPivot(_UNetRecipe):
    name = "iap"
    approach = "Image-as-Pivot: align cross-attention outputs, image latents as pivots"
    loss_formula = "sum over cross-attention layers MSE(attn(x_t, adapter(target)), attn(x_t, CLIP(English)))"

    def loss(self, adapter, batch, unet=None):
        _, _, _, teacher_attn, student_attn = self._paired(adapter, batch, unet, "cross_attention")
        loss = sum(F.mse_loss(s.float(), t_.float()) for s, t_ in zip(student_attn, teacher_attn)) / len(teacher_attn)
        return loss, {"cross_attention": loss.item()}
