"""Images for UNet recipes: loaded, resized, encoded once by the VAE and cached as latents."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from ..errors import InvalidDataError
from .cache import FeatureStore
from .data import Pair
from .recipes import Batch

__all__ = ["load_image", "ImageTextFeatures", "prepare_latents", "diffusers_vae_encoder"]


def load_image(path: str, size: int) -> torch.Tensor:
    """RGB image as ``[3, size, size]`` in [-1, 1]: shorter side resized to ``size``, then center-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = size / min(img.size)
            img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                             Image.BICUBIC)
            left, top = (img.width - size) // 2, (img.height - size) // 2
            img = img.crop((left, top, left + size, top + size))
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise InvalidDataError(f"Cannot read image {path!r}: {e}.") from None
    return data.view(size, size, 3).permute(2, 0, 1).float() / 127.5 - 1


def _image_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def diffusers_vae_encoder(vae) -> tuple[Callable[[torch.Tensor], torch.Tensor], int, int]:
    """(encode, latent channels, downscale factor) for a diffusers ``AutoencoderKL``."""
    vae = vae.eval().requires_grad_(False)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return vae.encode(pixels.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    return encode, vae.config.latent_channels, factor


def prepare_latents(pairs: Sequence[Pair], encode: Callable[[torch.Tensor], torch.Tensor], channels: int,
                    factor: int, cache_dir: str, vae_fingerprint: str, size: int, batch_size: int = 8,
                    progress: Callable[[int, int], None] | None = None) -> FeatureStore:
    """Encode every distinct image of ``pairs`` once; the store maps image keys to flattened latents."""
    missing = [p.where for p in pairs if not p.image]
    if missing:
        raise InvalidDataError(f"This recipe needs an image for every row; {missing[0]} has none.")
    side = size // factor
    store = FeatureStore(cache_dir, {"kind": "latents", "vae": vae_fingerprint, "size": size}, channels * side * side)

    def compute(keys: list[str]) -> list[torch.Tensor]:
        pixels = torch.stack([load_image(k.split("|")[0], size) for k in keys])
        return list(encode(pixels).float().reshape(len(keys), 1, -1))

    store.fill([_image_key(p.image) for p in pairs], compute, batch_size=batch_size, progress=progress)
    store.latent_shape = (channels, side, side)
    return store


class ImageTextFeatures:
    """Text features plus the cached image latents of each row."""

    def __init__(self, text_features, latents: FeatureStore):
        self.text, self.latents = text_features, latents
        self.pairs, self.family = text_features.pairs, text_features.family

    def __len__(self) -> int:
        return len(self.text)

    def batch(self, indices: Sequence[int]) -> Batch:
        b = self.text.batch(indices)
        b.latents = torch.stack([self.latents.get(_image_key(self.pairs[i].image)).view(self.latents.latent_shape)
                                 for i in indices])
        return b
