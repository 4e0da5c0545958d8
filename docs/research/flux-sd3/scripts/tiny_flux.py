"""Build a random Flux state dict in ComfyUI key layout, save it, load it with
comfy.sd.load_diffusion_model (what UNETLoader calls) and sample one step on CPU.
usage: tiny_flux.py HIDDEN HEADS DEPTH SINGLE [CONTEXT_IN=4096] [VEC_IN=768] [GUIDANCE=1]"""
import sys, time, os, traceback
sys.path.insert(0, os.path.dirname(__file__))
import comfy_env  # noqa: F401  (forces --cpu)
import torch, safetensors.torch
import comfy.ops, comfy.sd, comfy.sample, comfy.model_detection
from comfy.ldm.flux.model import Flux

hidden, heads, depth, single = map(int, sys.argv[1:5])
ctx = int(sys.argv[5]) if len(sys.argv) > 5 else 4096
vec = int(sys.argv[6]) if len(sys.argv) > 6 else 768
guid = bool(int(sys.argv[7])) if len(sys.argv) > 7 else True
pe_dim = hidden // heads
axes = [pe_dim - 2 * (pe_dim * 7 // 16), pe_dim * 7 // 16, pe_dim * 7 // 16]  # like [16,56,56] for 128
cfg = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=vec, context_in_dim=ctx,
           hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth, depth_single_blocks=single,
           axes_dim=axes, theta=10000, patch_size=2, qkv_bias=True, guidance_embed=guid)
torch.manual_seed(0)
with torch.device("meta"):
    m = Flux(operations=comfy.ops.disable_weight_init, **cfg)
sd = {}
for k, v in m.state_dict().items():
    if k.endswith(".scale"):  # RMSNorm scales
        sd[k] = torch.ones(v.shape, dtype=torch.bfloat16)
    else:
        sd[k] = (torch.randn(v.shape) * 0.02).to(torch.bfloat16)
n = sum(t.numel() for t in sd.values())
path = f"/tmp/flux-research/flux_h{hidden}_d{depth}_s{single}_c{ctx}_v{vec}.safetensors"
safetensors.torch.save_file(sd, path)
print(f"built {len(sd)} tensors, {n/1e6:.1f}M params, {os.path.getsize(path)/2**20:.0f} MiB -> {path}")
del m, sd
print("detected unet_config:", comfy.model_detection.detect_unet_config(safetensors.torch.load_file(path), ""))

t = time.time()
try:
    model = comfy.sd.load_diffusion_model(path)
except Exception as e:
    print("LOAD FAILED:", type(e).__name__, str(e)[:600]); sys.exit(1)
if model is None:
    print("LOAD FAILED: load_diffusion_model returned None"); sys.exit(1)
print(f"loaded in {time.time()-t:.1f}s: {type(model.model).__name__}, model_config={type(model.model.model_config).__name__}, "
      f"model_type={model.model.model_type}, dtype={model.model.get_dtype()}")

L = 256
cond = [[torch.randn(1, L, 4096), {"pooled_output": torch.randn(1, 768), "guidance": 3.5}]]
neg = [[torch.zeros(1, L, 4096), {"pooled_output": torch.zeros(1, 768), "guidance": 3.5}]]
latent = torch.zeros(1, 16, 16, 16)   # 128x128 image -> 16x16 latent (Flux latent has 16 channels)
noise = comfy.sample.prepare_noise(latent, 0)
t = time.time()
try:
    out = comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", cond, neg, latent, denoise=1.0, disable_pbar=True, seed=0)
except Exception as e:
    traceback.print_exc(); print("SAMPLE FAILED:", type(e).__name__, str(e)[:600]); sys.exit(1)
print(f"sampled 1 step in {time.time()-t:.1f}s -> {tuple(out.shape)} finite={torch.isfinite(out).all().item()}")
