"""Images for UNet recipes: loaded, resized, encoded once by the VAE and cached as latents."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from ..errors import InvalidDataError
from .cache import FeatureStore
from .data import Pair
from .recipes import Batch

__all__ = ["load_image", "ImageTextFeatures", "prepare_latents", "prepare_image_embeds", "diffusers_vae_encoder",
           "hf_clip_vision_embedder"]


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
    except Image.DecompressionBombError as e:  # PIL's pixel limit: a tiny file that decodes to gigabytes
        raise InvalidDataError(f"Image {path!r} is too large to decode safely ({e}). Resize it below "
                               f"{Image.MAX_IMAGE_PIXELS:,} pixels.") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise InvalidDataError(f"Cannot read image {path!r}: {e}. Replace it with a PNG, JPEG or WebP image, or "
                               f"remove its row.") from None
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
    _require_images(pairs)
    side = size // factor
    store = FeatureStore(cache_dir, {"kind": "latents", "vae": vae_fingerprint, "size": size}, channels * side * side)

    def compute(keys: list[str]) -> list[torch.Tensor]:
        pixels = torch.stack([load_image(k.split("|")[0], size) for k in keys])
        return list(encode(pixels).float().reshape(len(keys), 1, -1))

    store.fill([_image_key(p.image) for p in pairs], compute, batch_size=batch_size, progress=progress)
    store.latent_shape = (channels, side, side)
    return store


def _require_images(pairs: Sequence[Pair]) -> None:
    missing = [p.where for p in pairs if not p.image]
    if missing:
        raise InvalidDataError(f"This recipe needs an image for every row; {missing[0]} has none.")


def hf_clip_vision_embedder(folder: str) -> tuple[Callable[[list[str]], torch.Tensor], int, str]:
    """(embed image paths, embedding width, fingerprint) for a local transformers CLIP vision model folder."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from ..models.adapter_file import tensor_hash

    try:
        model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise InvalidDataError(f"Cannot load the CLIP vision model in {folder!r}: {e}") from None
    model.eval().requires_grad_(False)

    @torch.no_grad()
    def embed(paths: list[str]) -> torch.Tensor:
        from PIL import Image

        images = []
        for path in paths:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        return model(**processor(images=images, return_tensors="pt")).image_embeds.float()
    return embed, model.config.projection_dim, tensor_hash(model.state_dict())[:16]


def prepare_image_embeds(pairs: Sequence[Pair], embed: Callable[[list[str]], torch.Tensor], dim: int, cache_dir: str,
                         fingerprint: str, batch_size: int = 16) -> FeatureStore:
    """CLIP image embeddings of every distinct image of ``pairs`` (mclip-trikd's image side), cached."""
    _require_images(pairs)
    store = FeatureStore(cache_dir, {"kind": "image_embeds", "model": fingerprint}, dim)
    store.fill([_image_key(p.image) for p in pairs],
               lambda keys: list(embed([k.split("|")[0] for k in keys]).reshape(len(keys), 1, dim)),
               batch_size=batch_size)
    return store


class ImageTextFeatures:
    """Text features plus, per row, the cached image latents and/or CLIP image embeddings."""

    def __init__(self, text_features, latents: FeatureStore | None = None, embeds: FeatureStore | None = None):
        self.text, self.latents, self.embeds = text_features, latents, embeds
        self.pairs, self.family = text_features.pairs, text_features.family

    def __len__(self) -> int:
        return len(self.text)

    def batch(self, indices: Sequence[int]) -> Batch:
        b = self.text.batch(indices)
        keys = [_image_key(self.pairs[i].image) for i in indices]
        if self.latents is not None:
            b.latents = torch.stack([self.latents.get(k).view(self.latents.latent_shape) for k in keys])
        if self.embeds is not None:
            b.image_embeds = torch.cat([self.embeds.get(k) for k in keys])
        return b
