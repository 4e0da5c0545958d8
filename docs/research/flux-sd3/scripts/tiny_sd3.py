"""Build a random SD3 MMDiT state dict in ComfyUI key layout, save, load with
comfy.sd.load_diffusion_model and sample one step on CPU.
usage: tiny_sd3.py DEPTH [CONTEXT_IN=4096] [ADM_IN=2048] [POS_EMBED_MAX=8]   (hidden = 64*DEPTH, heads = DEPTH)"""
import sys, time, os, traceback
sys.path.insert(0, os.path.dirname(__file__))
import comfy_env  # noqa: F401
import torch, safetensors.torch
import comfy.ops, comfy.sd, comfy.sample, comfy.model_detection
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

depth = int(sys.argv[1])
ctx = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
adm = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
pmax = int(sys.argv[4]) if len(sys.argv) > 4 else 8
hidden = 64 * depth
cfg = dict(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=depth, adm_in_channels=adm,
           context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": ctx, "out_features": hidden}},
           pos_embed_max_size=pmax, num_patches=pmax * pmax, pos_embed_scaling_factor=None)
torch.manual_seed(0)
with torch.device("meta"):
    m = MMDiT(operations=comfy.ops.disable_weight_init, **cfg)
sd = {k: (torch.randn(v.shape) * 0.02).to(torch.float16) for k, v in m.state_dict().items()}
n = sum(t.numel() for t in sd.values())
path = f"/tmp/flux-research/sd3_d{depth}_c{ctx}_y{adm}.safetensors"
safetensors.torch.save_file(sd, path)
print(f"built {len(sd)} tensors, {n/1e6:.2f}M params, {os.path.getsize(path)/2**20:.1f} MiB -> {path}")
print("keys:", sorted(sd)[:60])
del m, sd
print("detected unet_config:", comfy.model_detection.detect_unet_config(safetensors.torch.load_file(path), ""))
try:
    model = comfy.sd.load_diffusion_model(path)
except Exception as e:
    print("LOAD FAILED:", type(e).__name__, str(e)[:600]); sys.exit(1)
if model is None:
    print("LOAD FAILED: returned None"); sys.exit(1)
print(f"loaded: {type(model.model).__name__}, model_config={type(model.model.model_config).__name__}, "
      f"model_type={model.model.model_type}, dtype={model.model.get_dtype()}")
L = 154  # 77 CLIP-L/G tokens + 77 T5 tokens (sd3_clip T5XXLTokenizer min_length=77)
cond = [[torch.randn(1, L, ctx), {"pooled_output": torch.randn(1, adm)}]]
neg = [[torch.zeros(1, L, ctx), {"pooled_output": torch.zeros(1, adm)}]]
latent = torch.zeros(1, 16, 16, 16)
noise = comfy.sample.prepare_noise(latent, 0)
t = time.time()
try:
    out = comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", cond, neg, latent, denoise=1.0, disable_pbar=True, seed=0)
except Exception as e:
    traceback.print_exc(); print("SAMPLE FAILED:", type(e).__name__, str(e)[:600]); sys.exit(1)
print(f"sampled 1 step in {time.time()-t:.2f}s -> {tuple(out.shape)} finite={torch.isfinite(out).all().item()}")
