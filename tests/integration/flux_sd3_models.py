"""Build, with a current ComfyUI's own classes (``COMFYUI_PATH``), the random models the Flux / SD3 server test
loads through ComfyUI's stock loaders, into the folder given as argument (kept as a cache):

* ``flux-tiny.safetensors``: the smallest Flux ComfyUI detects and loads (docs/research/flux-sd3/REPORT.md §2):
  hidden 3072 and 24 heads (fixed by its detection), one double block, no single block, guidance embedding,
  CLIP-L pooled input (768), T5-XXL context (4096); bfloat16, about 770 MiB;
* ``sd3-tiny.safetensors``: an MMDiT of depth 1 (hidden 64) with SD3's context (4096) and pooled (2048) widths;
* ``vae_approx/taef1_*`` and ``taesd3_*``: random TAESD encoders/decoders with 16 latent channels (the VAELoader's
  "taef1" / "taesd3" entries), so that a latent becomes an image without a full VAE;
* ``clip_l_sdxl.safetensors`` / ``clip_g_sdxl.safetensors``: random CLIP-L and CLIP-bigG at full size (float16),
  which DualCLIPLoader (type sdxl) loads as an SDXL text encoder.
"""

from __future__ import annotations

import os
import sys


def main(out: str) -> None:
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    import comfy.options

    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
    import comfy.cli_args  # noqa: F401

    sys.argv = argv
    import torch
    from safetensors.torch import save_file

    import comfy.ops
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    from comfy.taesd.taesd import TAESD

    os.makedirs(os.path.join(out, "vae_approx"), exist_ok=True)
    gen = torch.Generator().manual_seed(0)

    def random(model, dtype, std=0.02, fan_in=False):
        """Norm scales 1; other tensors N(0, std), or N(0, 1/fan-in) for matrices with ``fan_in``."""
        sd = {}
        for k, v in model.state_dict().items():
            ones = k.endswith(".scale") or "norm" in k and k.endswith(".weight")
            sigma = v[0].numel() ** -0.5 if fan_in and v.ndim > 1 and "pos_embed" not in k else std
            sd[k] = torch.ones(v.shape, dtype=dtype) if ones else (torch.randn(v.shape, generator=gen) * sigma).to(dtype)
        return sd

    def save(sd, name):
        tmp = os.path.join(out, name + ".partial")
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp)
        os.replace(tmp, os.path.join(out, name))

    if not os.path.exists(os.path.join(out, "flux-tiny.safetensors")):
        with torch.device("meta"):
            flux = Flux(operations=comfy.ops.disable_weight_init, image_model="flux", in_channels=16, out_channels=16,
                        vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=1,
                        depth_single_blocks=0, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True,
                        guidance_embed=True)
        save(random(flux, torch.bfloat16), "flux-tiny.safetensors")
    if not os.path.exists(os.path.join(out, "sd3-tiny.safetensors")):
        with torch.device("meta"):
            mmdit = MMDiT(operations=comfy.ops.disable_weight_init, input_size=None, patch_size=2, in_channels=16,
                          out_channels=16, depth=1, adm_in_channels=2048, pos_embed_max_size=16, num_patches=256,
                          context_embedder_config={"target": "torch.nn.Linear",
                                                   "params": {"in_features": 4096, "out_features": 64}},
                          pos_embed_scaling_factor=None)
        # depth 1 is 64 wide: with a 0.02 spread its text attention barely moves the output; 1/fan-in does
        save(random(mmdit, torch.float16, fan_in=True), "sd3-tiny.safetensors")
    for name in ("taef1", "taesd3"):
        if not os.path.exists(os.path.join(out, "vae_approx", f"{name}_decoder.safetensors")):
            taesd = TAESD(latent_channels=16)  # ComfyUI's layers skip initialisation: He-initialise them here
            for part in ("encoder", "decoder"):
                sd = {k: (torch.randn(v.shape, generator=gen) * (2 / v[0].numel()) ** 0.5 if v.ndim > 1
                          else torch.zeros(v.shape)) for k, v in getattr(taesd, f"taesd_{part}").state_dict().items()}
                last = max((k for k in sd if k.endswith(".weight")), key=lambda k: int(k.split(".")[0]))
                sd[last] = sd[last] * 0.05  # keep the decoded pixels off the clamp, where prompts differ
                save(sd, os.path.join("vae_approx", f"{name}_{part}.safetensors"))
    if not os.path.exists(os.path.join(out, "clip_g_sdxl.safetensors")):
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        for name, cls, cfg in (
                ("clip_l_sdxl", CLIPTextModel, dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                    intermediate_size=3072, hidden_act="quick_gelu")),
                ("clip_g_sdxl", CLIPTextModelWithProjection, dict(hidden_size=1280, num_hidden_layers=32,
                                                                  num_attention_heads=20, intermediate_size=5120,
                                                                  hidden_act="gelu", projection_dim=1280))):
            with torch.device("meta"):
                model = cls(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **cfg))
            sd = random(model, torch.float16)
            sd = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
                  for k, v in sd.items() if "position_ids" not in k}
            save(sd, f"{name}.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
