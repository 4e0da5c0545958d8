"""Flux text-encoder path with tiny random CLIP-L + T5 (HF key layout) on CPU.
1) tokenizer settings, 2) default DualCLIPLoader path (comfy.sd.load_clip type=FLUX),
3) same with model_options width overrides, 4) CLIPTextEncode / CLIPTextEncodeFlux outputs,
5) cross-check against HF transformers modules with the same weights."""
import sys, os, resource
sys.path.insert(0, os.path.dirname(__file__))
import comfy_env  # noqa
import torch, safetensors.torch, transformers
import comfy.sd
from comfy.text_encoders.flux import FluxTokenizer

D = "/tmp/flux-research"
torch.manual_seed(0)
clip_cfg = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=2, max_position_embeddings=77, projection_dim=64,
                                       hidden_act="quick_gelu", eos_token_id=49407, bos_token_id=49406, pad_token_id=1)
hf_clip = transformers.CLIPTextModelWithProjection(clip_cfg).eval()
t5_cfg = transformers.T5Config(vocab_size=32128, d_model=64, d_kv=32, num_heads=2, d_ff=128, num_layers=2,
                               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
hf_t5 = transformers.T5EncoderModel(t5_cfg).eval()
lp, tp = f"{D}/tiny_clip_l.safetensors", f"{D}/tiny_t5.safetensors"
safetensors.torch.save_file({k: v.contiguous() for k, v in hf_clip.state_dict().items()}, lp)
sd_t5 = {k: v.contiguous() for k, v in hf_t5.state_dict().items()}
sd_t5.pop("encoder.embed_tokens.weight", None)   # tied to shared.weight
safetensors.torch.save_file(sd_t5, tp)
print("tiny CLIP-L keys e.g.", sorted(hf_clip.state_dict())[:3], "| tiny T5 keys e.g.", sorted(sd_t5)[:3])

# 1) tokenizer
tok = FluxTokenizer()
t = tok.tokenize_with_weights("a red cat, 一只红猫")
l, t5 = t["l"][0], t["t5xxl"][0]
print(f"CLIP-L tokens: len={len(l)} first={l[:3]} last={l[-1]} (start={tok.clip_l.start_token} end={tok.clip_l.end_token} pad={tok.clip_l.pad_token})")
print(f"T5 tokens: len={len(t5)} first={t5[:12]}  ... last={t5[-1]} (start={tok.t5xxl.start_token} end={tok.t5xxl.end_token} pad={tok.t5xxl.pad_token} min_length={tok.t5xxl.min_length} max_length={tok.t5xxl.max_length} pad_to_max={tok.t5xxl.pad_to_max_length})")
long = tok.tokenize_with_weights("word " * 400)
print("long prompt (400 words): T5 batches:", [len(b) for b in long["t5xxl"]], "CLIP-L batches:", [len(b) for b in long["l"]])

# 2) default loader path
print("\n== comfy.sd.load_clip([clip_l, t5], clip_type=FLUX) (what DualCLIPLoader type=flux calls) ==")
try:
    clip = comfy.sd.load_clip([lp, tp], clip_type=comfy.sd.CLIPType.FLUX)
    print("loaded?!", type(clip.cond_stage_model))
except Exception as e:
    print("LOAD FAILED:", type(e).__name__, str(e).splitlines()[0], "|", str(e).splitlines()[1][:200])
print(f"max RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MiB")

# 3) with width overrides through model_options (not reachable from the stock loader nodes)
print("\n== load_text_encoder_state_dicts(..., model_options={'model_config': tiny clip cfg, 't5xxl_model_config': tiny t5 cfg}) ==")
mo = {"model_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": 64},
      "t5xxl_model_config": {"d_model": 64, "d_kv": 32, "num_heads": 2, "d_ff": 128, "num_layers": 2},
      "dtype": torch.float32}
sds = [comfy.utils.load_torch_file(lp), comfy.utils.load_torch_file(tp)]
clip = comfy.sd.load_text_encoder_state_dicts(sds, clip_type=comfy.sd.CLIPType.FLUX, model_options=mo)
print("cond_stage_model:", type(clip.cond_stage_model).__mro__[1].__name__, "dtypes", clip.cond_stage_model.dtypes)

# 4) the two encode nodes, reproduced exactly (nodes.py CLIPTextEncode.encode / nodes_flux.CLIPTextEncodeFlux.execute)
def CLIPTextEncode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))
def CLIPTextEncodeFlux(clip, clip_l, t5xxl, guidance):
    tokens = clip.tokenize(clip_l); tokens["t5xxl"] = clip.tokenize(t5xxl)["t5xxl"]
    return clip.encode_from_tokens_scheduled(tokens, add_dict={"guidance": guidance})
for name, c in [("CLIPTextEncode", CLIPTextEncode(clip, "a red cat")),
                ("CLIPTextEncodeFlux", CLIPTextEncodeFlux(clip, "a red cat", "a red cat", 3.5)),
                ("CLIPTextEncode long(400 words)", CLIPTextEncode(clip, "word " * 400))]:
    cond, d = c[0]
    print(f"{name}: len(list)={len(c)} cond={tuple(cond.shape)} {cond.dtype} extra={ {k: (tuple(v.shape) if torch.is_tensor(v) else v) for k, v in d.items()} }")

# 5) cross-check vs HF modules
t = clip.tokenize("a red cat")
ids_t5 = torch.tensor([[x[0] for x in t["t5xxl"][0]]])
ids_l = torch.tensor([[x[0] for x in t["l"][0]]])
cond, pooled = clip.encode_from_tokens(t, return_pooled=True)
with torch.no_grad():
    ref_t5 = hf_t5(input_ids=ids_t5).last_hidden_state          # no attention mask: pads are attended
    ref_t5_masked = hf_t5(input_ids=ids_t5, attention_mask=(torch.arange(ids_t5.shape[1]) <= (ids_t5[0] == 1).nonzero()[0, 0]).long()[None]).last_hidden_state
    hl = hf_clip(input_ids=ids_l)
print("T5 cond vs HF T5EncoderModel(no mask) max|diff|:", (cond - ref_t5).abs().max().item(),
      "| vs HF with mask:", (cond - ref_t5_masked).abs().max().item())
print("pooled vs HF CLIP pooler_output (unprojected) max|diff|:", (pooled - hl.last_hidden_state[0:1, (ids_l[0] == 49407).nonzero()[0, 0]]).abs().max().item(),
      "| vs text_embeds (projected):", (pooled - hl.text_embeds).abs().max().item())
