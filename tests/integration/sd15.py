"""Build a random-weight Stable Diffusion 1.5 model in the diffusers layout (for ComfyUI tests).

ComfyUI recognises SD1.5 by its UNet shapes, so the UNet, VAE and CLIP-L text
encoder have the real SD1.5 configurations; only the weights are random (scaled
down so that one sampling step stays finite). Saved in fp16, about 2 GB.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)


def build_sd15(folder: str, seed: int = 0) -> str:
    """Write the model to ``folder`` (atomically: a temporary folder renamed at the end)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    if os.path.exists(os.path.join(folder, "model_index.json")):
        return folder
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        unet = UNet2DConditionModel(**SD15_UNET)
        for p in unet.parameters():
            p.mul_(0.1)
        unet.to(torch.float16).save_pretrained(os.path.join(tmp, "unet"), safe_serialization=True)
        del unet
        vae = AutoencoderKL(**SD15_VAE)
        vae.to(torch.float16).save_pretrained(os.path.join(tmp, "vae"), safe_serialization=True)
        del vae
        config = CLIPTextConfig(**CLIP_L)
        clip = CLIPTextModel(config).to(torch.float16)
        # The layout of real SD1.5 text encoders (and of transformers 4.x): every key under "text_model.".
        # transformers 5 saves this model without that prefix, so the file is written here.
        state = {(k if k.startswith("text_model.") else "text_model." + k): v.contiguous()
                 for k, v in clip.state_dict().items()}
        os.makedirs(os.path.join(tmp, "text_encoder"))
        save_file(state, os.path.join(tmp, "text_encoder", "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(os.path.join(tmp, "text_encoder"))
    with open(os.path.join(tmp, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"],
                   "text_encoder": ["transformers", "CLIPTextModel"]}, f)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


if __name__ == "__main__":
    print(build_sd15(sys.argv[1]))
