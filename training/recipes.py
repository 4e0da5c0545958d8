"""Training recipes: what is trained, with which loss, from which data (DESIGN.md §1).

Every recipe trains only the adapter; the multilingual encoder, the CLIP teacher
and (for UNet recipes) the UNet stay frozen. A recipe turns a :class:`Batch` into
a scalar loss that is backpropagated into the adapter.

Text recipes (no images, no UNet) work on cached features:

* ``altclip-kd`` — AltDiffusion/AltCLIP teacher learning: MSE between the
  adapter's output for the target text and the teacher's for the English text,
  on the pooled vector and on the tokens.
* ``mclip-trikd`` — mCLIP triangle distillation: symmetric InfoNCE between the
  adapter's pooled vector and the teacher's (L_TTC), plus image<->text InfoNCE
  (L_ITC) when image embeddings are given: ``L_ITC + 0.1 * L_TTC``.

UNet recipes (``pea``, ``mulan``, ``iap``) are in :mod:`babelclip.training.unet_recipes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import InvalidDataError
from ..models.adapters import Adapter, masked_mean

__all__ = ["Batch", "Recipe", "RECIPES", "register_recipe", "get_recipe", "AltClipKD", "MClipTriKD"]


@dataclass
class Batch:
    """One training batch. Text recipes use the first four fields; others are optional."""

    hidden: torch.Tensor  # [B, T, H] frozen encoder states of the target-language text
    mask: torch.Tensor  # [B, T]
    teacher_cond: torch.Tensor | None = None  # [B, 77, D] teacher tokens of the English text
    teacher_pooled: torch.Tensor | None = None  # [B, P]
    image_embeds: torch.Tensor | None = None  # [B, P] CLIP image embeddings (mclip-trikd with images)
    latents: torch.Tensor | None = None  # [B, 4, h, w] VAE latents of the images (UNet recipes)
    extra: dict = field(default_factory=dict)
    teacher_mean: torch.Tensor | None = None  # [B, D] mean of the teacher's 77 tokens (cached without them)

    def to(self, device, dtype=None) -> "Batch":
        def move(x):
            if not isinstance(x, torch.Tensor):
                return x
            return x.to(device, dtype) if (dtype is not None and x.is_floating_point()) else x.to(device)
        return Batch(*(move(getattr(self, f)) for f in ("hidden", "mask", "teacher_cond", "teacher_pooled",
                                                          "image_embeds", "latents")), extra=self.extra,
                     teacher_mean=move(self.teacher_mean))

    def teacher_token_mean(self) -> torch.Tensor:
        """``[B, D]`` the mean of the teacher's tokens, cached or computed from ``teacher_cond``."""
        if self.teacher_mean is not None:
            return self.teacher_mean
        return self.teacher_cond.float().mean(1)


class Recipe:
    """Base class. ``needs_images`` / ``needs_unet`` state the data a recipe requires."""

    name: ClassVar[str]
    approach: ClassVar[str]
    loss_formula: ClassVar[str]
    needs_images: ClassVar[bool] = False
    needs_unet: ClassVar[bool] = False

    def loss(self, adapter: Adapter, batch: Batch, unet=None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def teacher_layout(self, adapter: Adapter) -> str:
        """What of the teacher's output the loss reads for ``adapter``: ``"tokens"`` (its 77 tokens) or
        ``"mean"`` (only their mean and the pooled vector), which decides what the feature cache keeps."""
        return "tokens"

    @staticmethod
    def trainable_parameters(adapter: Adapter) -> int:
        return sum(p.numel() for p in adapter.parameters() if p.requires_grad)

    def describe(self, adapter: Adapter) -> str:
        needs = ", ".join(n for n, on in (("images", self.needs_images), ("UNet", self.needs_unet)) if on) or "text only"
        return (f"{self.name}: {self.approach}; loss {self.loss_formula}; needs {needs}; "
                f"{self.trainable_parameters(adapter):,} trainable parameters")


RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    if cls.name in RECIPES:
        raise ValueError(f"recipe {cls.name!r} is registered twice")
    RECIPES[cls.name] = cls
    return cls


def get_recipe(name: str, **options) -> Recipe:
    if name not in RECIPES:
        from . import unet_recipes  # noqa: F401  (registers the UNet recipes)
    try:
        return RECIPES[name](**options)
    except KeyError:
        raise InvalidDataError(f"Unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}.") from None


def _need(batch: Batch, *names: str, recipe: str) -> None:
    missing = [n for n in names if getattr(batch, n) is None]
    if missing:
        raise InvalidDataError(f"Recipe {recipe!r} needs {', '.join(missing)} in every batch.")


@register_recipe
class AltClipKD(Recipe):
    name = "altclip-kd"
    approach = "AltDiffusion/AltCLIP teacher learning"
    loss_formula = "MSE(pooled) + MSE(tokens) to the teacher's English encoding"

    def __init__(self, token_weight: float = 1.0):
        self.token_weight = token_weight

    def teacher_layout(self, adapter):
        # token-aligned adapters are matched on the mean token only
        return "mean" if adapter.token_aligned else "tokens"

    def loss(self, adapter, batch, unet=None):
        _need(batch, "teacher_pooled", recipe=self.name)
        token_aligned = getattr(adapter, "module", adapter).token_aligned  # (DistributedDataParallel wraps it)
        if token_aligned:
            if batch.teacher_cond is None and batch.teacher_mean is None:
                _need(batch, "teacher_cond", recipe=self.name)
        else:
            _need(batch, "teacher_cond", recipe=self.name)  # the resampler's tokens are matched one by one
        out = adapter(batch.hidden, batch.mask)
        pooled_loss = F.mse_loss(out.pooled.float(), batch.teacher_pooled.float())
        if not token_aligned and out.cond.shape[1] == batch.teacher_cond.shape[1]:
            # fixed-length adapters (resampler, 77 queries): token by token
            token_loss = F.mse_loss(out.cond.float(), batch.teacher_cond.float())
        else:
            # token-aligned adapters follow the encoder's tokenization, which has no 1:1 map to CLIP's
            # tokens: match the mean token, the part of the sequence cross-attention averages over
            token_loss = F.mse_loss(masked_mean(out.cond.float(), out.mask), batch.teacher_token_mean().float())
        loss = pooled_loss + self.token_weight * token_loss
        return loss, {"pooled_mse": pooled_loss.item(), "token_mse": token_loss.item()}


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned batches ``a`` and ``b``."""
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@register_recipe
class MClipTriKD(Recipe):
    name = "mclip-trikd"
    approach = "mCLIP triangle cross-modal knowledge distillation"
    loss_formula = "L_ITC + 0.1 * L_TTC (symmetric InfoNCE; L_TTC alone without images)"

    def __init__(self, temperature: float = 0.05, ttc_weight: float = 0.1):
        self.temperature, self.ttc_weight = temperature, ttc_weight

    def teacher_layout(self, adapter):
        return "mean"  # only the pooled vector is read

    def loss(self, adapter, batch, unet=None):
        _need(batch, "teacher_pooled", recipe=self.name)
        if batch.hidden.shape[0] < 2:
            raise InvalidDataError("mclip-trikd contrasts examples within a batch: use a batch size of 2 or more.")
        out = adapter(batch.hidden, batch.mask)
        ttc = info_nce(out.pooled, batch.teacher_pooled, self.temperature)
        if batch.image_embeds is None:
            return ttc, {"ttc": ttc.item()}
        itc = info_nce(out.pooled, batch.image_embeds, self.temperature)
        return itc + self.ttc_weight * ttc, {"itc": itc.item(), "ttc": ttc.item()}
