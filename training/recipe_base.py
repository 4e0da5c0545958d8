"""What every training recipe is: the batch it reads and the interface it implements.

Every recipe trains only the adapter; the multilingual encoder, the CLIP teacher and (for denoiser recipes) the
UNet stay frozen. A recipe turns a :class:`Batch` into a scalar loss that is backpropagated into the adapter.
The recipes themselves are in :mod:`.text_recipes` and :mod:`.unet_recipes`; :mod:`.recipes` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import InvalidDataError
from ..models.adapters import Adapter

__all__ = ["Batch", "Recipe", "need"]


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
    """Base class. The class attributes state what a recipe needs, so callers never compare recipe names:

    ``needs_images`` — every row needs an image; ``needs_unet`` — it trains through the frozen denoiser (UNet);
    ``uses_image_embeddings`` — it can add an image<->text loss when CLIP image embeddings of the rows are given.
    """

    name: ClassVar[str]
    approach: ClassVar[str]
    loss_formula: ClassVar[str]
    needs_images: ClassVar[bool] = False
    needs_unet: ClassVar[bool] = False
    uses_image_embeddings: ClassVar[bool] = False

    @classmethod
    def needs(cls) -> str:
        """What the recipe needs, in words: ``"text only"``, ``"images + denoiser"``, ..."""
        parts = [n for n, on in (("images", cls.needs_images), ("denoiser", cls.needs_unet)) if on]
        text = " + ".join(parts) or "text only"
        return text + (" (images optional)" if cls.uses_image_embeddings else "")

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
        return (f"{self.name}: {self.approach}; loss {self.loss_formula}; needs {self.needs()}; "
                f"{self.trainable_parameters(adapter):,} trainable parameters")


def need(batch: Batch, *names: str, recipe: str) -> None:
    missing = [n for n in names if getattr(batch, n) is None]
    if missing:
        raise InvalidDataError(f"Recipe {recipe!r} needs {', '.join(missing)} in every batch.")


