"""(a) tiny T5 with only the CLIP width overridden -> does the T5 part load? (b) T5 tokenizer on non-English text."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import comfy_env  # noqa
import comfy.sd, comfy.utils
from comfy.text_encoders.flux import T5XXLTokenizer
D = "/tmp/flux-research"
mo = {"model_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": 64}}
try:
    comfy.sd.load_text_encoder_state_dicts([comfy.utils.load_torch_file(f"{D}/tiny_clip_l.safetensors"), comfy.utils.load_torch_file(f"{D}/tiny_t5.safetensors")],
                                           clip_type=comfy.sd.CLIPType.FLUX, model_options=mo)
    print("loaded?!")
except Exception as e:
    print("T5 LOAD FAILED:", type(e).__name__, str(e).splitlines()[0], "|", str(e).splitlines()[1][:200])
tok = T5XXLTokenizer()
for s in ["a red cat", "eine rote Katze", "un chat rouge", "красная кошка", "一只红猫", "赤い猫", "قطة حمراء", "빨간 고양이"]:
    ids = [x[0] for x in tok.tokenize_with_weights(s)[0]]
    n = ids.index(1)
    print(f"{s!r:22} -> {ids[:n+1]}  unk(2) count={ids[:n].count(2)}")
