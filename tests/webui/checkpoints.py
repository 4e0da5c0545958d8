"""Random-weight SD2.x and SDXL single-file checkpoints at their real sizes, for the web UI tests.

The web UIs recognise a checkpoint by its key layout and exact shapes, so these have the real UNet and text-encoder
configurations (SDXL: about 2.6B UNet parameters, a 6.5 GB fp16 file; SD2.x about 2.6 GB) with random weights
(normal, scaled by fan-in so that one sampling step stays finite; norms at one, biases at zero). Tensors are
made one at a time from the shapes of models built on the meta device: nothing is initialised in float32.
The VAE is the random SD1.5 one (same architecture). Built once into the test cache, like the SD1.5 file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .harness import CACHE, _unet_key, vae_state_dict

SD2_UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
_CLIP = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
CLIP_L = dict(_CLIP, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H = dict(_CLIP, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  hidden_act="gelu", projection_dim=1024)
OPENCLIP_G = dict(_CLIP, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                  hidden_act="gelu", projection_dim=1280)


def _random(shapes: dict, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = math.prod(shape[1:]) if len(shape) > 2 or "embedding" not in name else shape[1]
            t = torch.randn(shape, generator=gen) * (0.5 / math.sqrt(fan_in))
        elif name.endswith("weight") and "norm" in name.lower() or name.endswith(("ln_1.weight", "ln_2.weight")):
            t = torch.ones(shape)
        else:
            t = torch.zeros(shape)
        out[name] = t.to(torch.float16)
    return out


def _shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _unet_shapes(config: dict) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return _shapes(UNet2DConditionModel(**config))


def _clip_shapes(config: dict, projection: bool) -> dict:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**config))
    shapes = _shapes(model)
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in shapes.items() if not k.endswith("position_ids")}


def hf_clip_to_openclip(sd: dict) -> dict:
    """transformers CLIP text keys -> OpenCLIP's (``transformer.resblocks.*``; q/k/v merged; projection
    transposed): how SD2.x and SDXL's CLIP-G are stored in single files."""
    import torch

    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"]}
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    n = len({k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layers.")})
    names = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))
    for i in range(n):
        hf, oc = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{oc}attn.in_proj_{kind}"] = torch.cat([sd[f"{hf}self_attn.{p}.{kind}"]
                                                         for p in ("q_proj", "k_proj", "v_proj")])
            for a, b in names:
                out[f"{oc}{b}.{kind}"] = sd[f"{hf}{a}.{kind}"]
    return out


def _unet(config: dict, seed: int) -> dict:
    up_attn = frozenset(i for i, t in enumerate(config["up_block_types"]) if t.startswith("CrossAttn"))
    sd = _random(_unet_shapes(config), seed)
    return {"model.diffusion_model." + _unet_key(k, up_attn): v for k, v in sd.items()}


def random_checkpoint(kind: str) -> Path:
    """``sd2`` or ``sdxl``: the random single file, built once into the test cache."""
    from safetensors.torch import save_file

    from ..integration.sd15 import build_sd15

    target = CACHE / f"{kind}-random-v1.safetensors"
    if target.exists():
        return target
    sd15 = Path(build_sd15(str(CACHE / "sd15-random-v2")))
    if kind == "sd2":
        text = {"cond_stage_model.model." + k: v
                for k, v in hf_clip_to_openclip(_random(_clip_shapes(OPENCLIP_H, True), 1)).items()}
        sd = {**_unet(SD2_UNET, 0), **text}
    elif kind == "sdxl":
        clip_l = {"conditioner.embedders.0.transformer." + k: v
                  for k, v in _random(_clip_shapes(CLIP_L, False), 1).items()}
        clip_g = {"conditioner.embedders.1.model." + k: v
                  for k, v in hf_clip_to_openclip(_random(_clip_shapes(OPENCLIP_G, True), 2)).items()}
        sd = {**_unet(SDXL_UNET, 0), **clip_l, **clip_g}
    else:
        raise ValueError(kind)
    sd.update(vae_state_dict(sd15))
    tmp = target.with_name(target.name + ".partial")
    save_file(sd, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target)
    return target
