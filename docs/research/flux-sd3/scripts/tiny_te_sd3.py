"""SD3 text-encoder path (comfy/text_encoders/sd3_clip.py) with tiny random CLIP-L / CLIP-G / T5 on CPU.
Constructs comfy.sd.CLIP directly with width overrides (the stock loaders cannot override widths)."""
import sys, os, types
sys.path.insert(0, os.path.dirname(__file__))
import comfy_env  # noqa
import torch, transformers
import comfy.sd
from comfy.text_encoders import sd3_clip
torch.manual_seed(0)
def hf_clip(layers, hidden):
    c = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                    num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden, hidden_act="gelu",
                                    eos_token_id=49407)
    return transformers.CLIPTextModelWithProjection(c).eval()
L = hf_clip(3, 64); G = hf_clip(32, 64)       # CLIP-L >=3 layers (sd1_clip.py:144 asserts abs(layer_idx=-2) < num_layers); CLIP-G >=31 layers (load_sd routes on layers.30)
def t5_sd(d_model):
    t = transformers.T5EncoderModel(transformers.T5Config(vocab_size=32128, d_model=d_model, d_kv=64, num_heads=1, d_ff=64, num_layers=1,
                                                          feed_forward_proj="gated-gelu")).eval()
    sd = dict(t.state_dict()); sd.pop("encoder.embed_tokens.weight", None); return t, sd
mo_base = {"dtype": torch.float32,
           "clip_l_model_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2, "projection_dim": 64, "hidden_act": "gelu"},
           "clip_g_model_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 32, "num_attention_heads": 2, "projection_dim": 64, "hidden_act": "gelu"}}
def make(l=True, g=True, t5=None, mask=False):
    mo = dict(mo_base)
    if t5 is not None:
        mo["t5xxl_model_config"] = {"d_model": t5[0], "d_kv": 64, "num_heads": 1, "d_ff": 64, "num_layers": 1}
    target = types.SimpleNamespace(params={}, clip=sd3_clip.sd3_clip(clip_l=l, clip_g=g, t5=t5 is not None, t5_attention_mask=mask),
                                   tokenizer=sd3_clip.SD3Tokenizer)
    clip = comfy.sd.CLIP(target, model_options=mo)
    for on, sd in [(l, L.state_dict()), (g, G.state_dict()), (t5 is not None, t5[1] if t5 else None)]:
        if on:
            m, u = clip.load_sd(sd)
    return clip
def CLIPTextEncode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))
def show(name, c):
    cond, d = c[0]
    print(f"{name}: cond={tuple(cond.shape)} extra={ {k: (tuple(v.shape) if torch.is_tensor(v) else v) for k, v in d.items()} }")
    return cond, d

t5_4096 = t5_sd(4096)
clip = make(t5=(4096, t5_4096[1]))
cond, d = show("L+G+T5(d_model 4096)", CLIPTextEncode(clip, "a red cat"))
# verify layout against HF
tok = clip.tokenize("a red cat")
ids_l = torch.tensor([[x[0] for x in tok["l"][0]]]); ids_g = torch.tensor([[x[0] for x in tok["g"][0]]]); ids_t5 = torch.tensor([[x[0] for x in tok["t5xxl"][0]]])
print("token lens l/g/t5:", ids_l.shape[1], ids_g.shape[1], ids_t5.shape[1], "| g pad id:", ids_g[0, -1].item(), "l pad id:", ids_l[0, -1].item())
with torch.no_grad():
    hl = L(input_ids=ids_l, output_hidden_states=True); hg = G(input_ids=ids_g, output_hidden_states=True)
    ht = t5_4096[0](input_ids=ids_t5).last_hidden_state
print("cond[:, :77, :64]  vs HF CLIP-L hidden_states[-2] (penultimate, no final LN):", (cond[:, :77, :64] - hl.hidden_states[-2]).abs().max().item())
print("  same vs final_layer_norm(penultimate):", (cond[:, :77, :64] - L.text_model.final_layer_norm(hl.hidden_states[-2])).abs().max().item())
print("cond[:, :77, 64:128] vs HF CLIP-G hidden_states[-2]:", (cond[:, :77, 64:128] - hg.hidden_states[-2]).abs().max().item())
print("cond[:, :77, 128:] all zero:", bool((cond[:, :77, 128:] == 0).all()), "| cond[:, 77:] vs HF T5:", (cond[:, 77:] - ht).abs().max().item())
eos_l = (ids_l[0] == 49407).nonzero()[0, 0]; eos_g = (ids_g[0] == 49407).nonzero()[0, 0]
p = d["pooled_output"]
print("pooled[:, :64] vs CLIP-L unprojected pooled:", (p[:, :64] - hl.last_hidden_state[:, eos_l]).abs().max().item(),
      "| pooled[:, 64:] vs CLIP-G projected text_embeds:", (p[:, 64:] - hg.text_embeds).abs().max().item())

show("L+G+T5 with t5_attention_mask=True", CLIPTextEncode(make(t5=(4096, t5_4096[1]), mask=True), "a red cat"))
show("L+G only (no T5; DualCLIPLoader sd3 with clip-l+clip-g)", CLIPTextEncode(make(), "a red cat"))
show("T5 only (CLIPLoader sd3 with t5)", CLIPTextEncode(make(l=False, g=False, t5=(4096, t5_4096[1])), "a red cat"))
show("G + T5 (no CLIP-L)", CLIPTextEncode(make(l=False, t5=(4096, t5_4096[1])), "a red cat"))
try:
    show("L+G+T5(d_model 64)", CLIPTextEncode(make(t5=(64, t5_sd(64)[1])), "a red cat"))
except Exception as e:
    print("L+G+T5(d_model 64) FAILED:", type(e).__name__, str(e)[:200])
