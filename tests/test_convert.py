"""Converting the peers' published adapters (models/convert.py), checked against the peers' own code.

Each peer's reference runs here on tiny random weights in its exact key layout; the converted BabelCLIP
adapter (loaded from its file) must compute the same thing to 1e-5.

* MuLan: ``mulankit`` (PyPI; ``pip install --no-deps mulankit==1.0.2``: its own dependencies include gradio,
  and only ``mulankit/models/adapter.py`` is run, loaded by path so that the package's web-UI imports are not).
* Multilingual-CLIP: ``multilingual-clip`` (PyPI; ``pip install --no-deps multilingual-clip==1.0.10``).
* AltCLIP and Chinese-CLIP: ``transformers``' own models.
* PEA-Diffusion: not on PyPI. Set ``PEA_DIFFUSION_PATH`` to a checkout of OPPO-Mente-Lab/PEA-Diffusion; its
  ``MLP`` classes are read from its training and test scripts (whose imports need GPUs and datasets, so only
  the class definitions are executed).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil

import pytest
import torch
from torch import nn

from babelclip.errors import InvalidDataError, InvalidModelFileError, UnsupportedModelError
from babelclip.models import FAMILIES, load_adapter, load_encoder, read_adapter_spec
from babelclip.models.convert import convert, infer_family, read_state_dict
from babelclip.models.tiny import SAMPLE_PROMPTS

TOL = dict(atol=1e-5, rtol=0)
TEXTS = list(SAMPLE_PROMPTS[:3]) + ["一只红色的猫"]


def _jitter(module: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    """Perturb every parameter (LayerNorm weights are ones and zeros at init) so that no mapping error hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def _source(path) -> dict:
    return json.loads(read_adapter_spec(path).metadata["babelclip.source"])


# --------------------------------------------------------------------------------------------- PEA-Diffusion
def _pea_class(script: str):
    """The ``MLP`` class of one of PEA-Diffusion's scripts, executed alone (its module imports need the
    authors' environment)."""
    root = os.environ.get("PEA_DIFFUSION_PATH")
    if not root:
        pytest.skip("set PEA_DIFFUSION_PATH to a checkout of github.com/OPPO-Mente-Lab/PEA-Diffusion to run "
                    "PEA-Diffusion's reference code")
    path = os.path.join(root, script)
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MLP")
    namespace = {"torch": torch, "nn": nn}
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), namespace)  # noqa: S102 - test only
    return namespace["MLP"]


@pytest.fixture(scope="module")
def xlmr_dir(encoder_dirs):
    return encoder_dirs["xlm-roberta"]  # tiny XLM-R, hidden 32


@pytest.mark.parametrize("script,kwargs,family,layers", [
    ("train_sdxl_zh.py", dict(in_dim=32, out_dim=1280, hidden_dim=48, out_dim1=2048, use_residual=False), "sdxl", 3),
    ("tests/test_sdxl_zh.py", dict(in_dim=32, out_dim=1280, hidden_dim=48, out_dim1=2048, use_residual=False),
     "sdxl", 3),
    ("train_sd_zh.py", dict(in_dim=32, out_dim=768, hidden_dim=48), "sd1", 3),
    ("tests/test_sd_zh.py", dict(in_dim=32, out_dim=768, hidden_dim=48), "sd1", 5),
])
def test_pea_matches_reference(tmp_path, xlmr_dir, script, kwargs, family, layers):
    MLP = _pea_class(script)
    torch.manual_seed(1)
    ref = _jitter(MLP(**kwargs), 2)
    src = tmp_path / "pytorch_model.bin"  # PEA saves torch.save(proj.state_dict(), ".../pytorch_model.bin")
    torch.save(ref.state_dict(), src)
    assert infer_family("pea", src) == family
    out = convert("pea", src, tmp_path / "pea.safetensors", encoder=xlmr_dir, origin="OPPOer/PEA-Diffusion",
                  license="mit")
    encoder = load_encoder(xlmr_dir)
    ad = load_adapter(out, encoder=encoder.info, family=FAMILIES[family])
    assert ad.config.layers == layers
    batch = encoder.encode(TEXTS)
    for h, mask in ((batch.hidden, torch.ones_like(batch.mask)), (torch.randn(3, 9, 32) * 3, torch.ones(3, 9))):
        got = ad(h, mask)
        with torch.no_grad():
            want = ref(h)
        if family == "sdxl":
            pooled, cond = want
            torch.testing.assert_close(got.pooled, pooled, **TOL)
            torch.testing.assert_close(got.cond, cond, **TOL)
        else:
            torch.testing.assert_close(got.cond, want, **TOL)
            torch.testing.assert_close(got.pooled, want.mean(1), **TOL)
    src_meta = _source(out)
    assert src_meta["kind"] == "pea" and src_meta["repo"] == "OPPOer/PEA-Diffusion" and src_meta["license"] == "mit"
    assert len(src_meta["sha256"]) == 64


def test_pea_with_chinese_clip_encoder_end_to_end(tmp_path, chinese_clip_dir):
    """PEA's Chinese SDXL adapter reads Chinese-CLIP's text states: through BabelCLIP's encoder, same result."""
    MLP = _pea_class("train_sdxl_zh.py")
    folder, ref_model, tokenizer = chinese_clip_dir
    torch.manual_seed(3)
    ref = _jitter(MLP(32, 1280, 48, 2048, use_residual=False), 4)
    src = tmp_path / "proj.pt"
    torch.save(ref.state_dict(), src)
    out = convert("pea", src, tmp_path / "pea-zh.safetensors", encoder=folder)
    encoder = load_encoder(folder)
    ad = load_adapter(out, encoder=encoder.info, family=FAMILIES["sdxl"])
    texts = ["一只红色的猫", "夕阳下的木屋顶"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = ref_model.text_model(**enc).last_hidden_state
        pooled, cond = ref(states[:1, : int(enc["attention_mask"][0].sum())])
    batch = encoder.encode(texts[:1])
    got = ad(batch.hidden, batch.mask)
    torch.testing.assert_close(got.cond, cond, **TOL)
    torch.testing.assert_close(got.pooled, pooled, **TOL)


def _pea_state(in_dim=32, hidden=48, out=1280, head=2048, layers=3):
    sd = {"layernorm.weight": torch.ones(in_dim), "layernorm.bias": torch.zeros(in_dim)}
    widths = [in_dim] + [hidden] * (layers - 1) + [out]
    for i in range(layers):
        sd[f"projector.{2 * i}.weight"] = torch.randn(widths[i + 1], widths[i]) * 0.1
    if head:
        sd.update({"fc.weight": torch.randn(head, out) * 0.1, "fc.bias": torch.zeros(head)})
    return sd


@pytest.mark.parametrize("out,head", [(2048, 4096), (768, 4096), (4096, 0)])
def test_pea_sd3_and_flux_adapters_are_refused(tmp_path, xlmr_dir, out, head):
    src = tmp_path / "pea_sd3.bin"
    torch.save(_pea_state(out=out, head=head), src)
    dst = tmp_path / "x.safetensors"
    with pytest.raises(UnsupportedModelError, match="Flux/SD3 adapters is not supported"):
        convert("pea", src, dst, encoder=xlmr_dir)
    assert not dst.exists()
    with pytest.raises(UnsupportedModelError, match="Flux/SD3"):
        convert("pea", tmp_path / "pea_sd3.bin", dst, family="flux", encoder=xlmr_dir)


def test_pea_needs_its_encoder_of_the_right_width(tmp_path, xlmr_dir, encoder_dirs):
    src = tmp_path / "pea.bin"
    torch.save(_pea_state(), src)
    with pytest.raises(InvalidDataError, match="needs --encoder.*Chinese-CLIP|needs --encoder"):
        convert("pea", src, tmp_path / "a.safetensors")
    torch.save(_pea_state(in_dim=64), src)
    with pytest.raises(InvalidDataError, match="64-wide"):
        convert("pea", src, tmp_path / "a.safetensors", encoder=xlmr_dir)
    with pytest.raises(InvalidDataError, match="--family sd1"):
        torch.save(_pea_state(), src)
        convert("pea", src, tmp_path / "a.safetensors", encoder=xlmr_dir, family="sd1")
    assert not (tmp_path / "a.safetensors").exists()


# --------------------------------------------------------------------------------------------------- errors
class NotATensor:
    def __init__(self):
        self.x = 1


def test_pickle_with_an_object_is_refused_and_nothing_is_written(tmp_path, xlmr_dir):
    src = tmp_path / "evil.bin"
    torch.save({"layernorm.weight": torch.ones(32), "payload": NotATensor()}, src)
    dst = tmp_path / "out.safetensors"
    with pytest.raises(InvalidModelFileError, match=r"evil\.bin.*cannot be opened safely.*weights_only"):
        convert("pea", src, dst, encoder=xlmr_dir)
    assert not dst.exists() and os.listdir(tmp_path) == ["evil.bin"]
    torch.save({"layernorm.weight": torch.ones(32), "step": [1, 2]}, src)  # loads with weights_only, still refused
    with pytest.raises(InvalidModelFileError, match=r"evil\.bin.*list at 'step'"):
        read_state_dict(src)
    torch.save(torch.ones(3), src)
    with pytest.raises(InvalidModelFileError, match="Tensor, not a state dict"):
        convert("mulan", src, dst)
    assert not dst.exists()


def test_unknown_missing_and_misshapen_keys_are_named(tmp_path, xlmr_dir):
    dst = tmp_path / "out.safetensors"
    sd = _pea_state()
    sd["extra.weight"] = torch.ones(2)
    torch.save(sd, tmp_path / "a.bin")
    with pytest.raises(InvalidModelFileError, match=r"a\.bin.*unknown 'extra\.weight'"):
        convert("pea", tmp_path / "a.bin", dst, encoder=xlmr_dir)
    sd = _pea_state()
    del sd["layernorm.bias"]
    torch.save(sd, tmp_path / "b.bin")
    with pytest.raises(InvalidModelFileError, match=r"b\.bin.*lacks 'layernorm\.bias'"):
        convert("pea", tmp_path / "b.bin", dst, encoder=xlmr_dir)
    sd = _pea_state()
    sd["fc.bias"] = torch.zeros(7)
    torch.save(sd, tmp_path / "c.bin")
    with pytest.raises(InvalidModelFileError, match=r"c\.bin.*'head\.bias' has shape \(7,\)"):
        convert("pea", tmp_path / "c.bin", dst, encoder=xlmr_dir)
    torch.save({"something.else": torch.ones(3)}, tmp_path / "d.bin")
    with pytest.raises(InvalidModelFileError, match=r"d\.bin.*not a MuLan language adapter.*proj\.0\.weight"):
        convert("mulan", tmp_path / "d.bin", dst)
    with pytest.raises(InvalidModelFileError, match=r"d\.bin.*not a PEA-Diffusion adapter"):
        convert("pea", tmp_path / "d.bin", dst, encoder=xlmr_dir)
    assert not dst.exists()
    with pytest.raises(InvalidDataError, match="Unknown peer kind 'gluegen'"):
        convert("gluegen", tmp_path / "d.bin", dst)
    with pytest.raises(InvalidModelFileError, match="does not exist"):
        convert("pea", tmp_path / "missing.bin", dst, encoder=xlmr_dir)
    dst.write_bytes(b"x")
    with pytest.raises(InvalidModelFileError, match="already exists"):
        convert("pea", tmp_path / "a.bin", dst, encoder=xlmr_dir)


# ---------------------------------------------------------------------------------------------------- MuLan
@pytest.fixture(scope="module")
def mulan():
    """``mulankit/models/adapter.py``, loaded by path (``import mulankit`` pulls in its web UI's dependencies)."""
    spec = importlib.util.find_spec("mulankit")
    if spec is None:
        pytest.fail("MuLan's reference code is missing: pip install --no-deps mulankit==1.0.2")
    path = os.path.join(os.path.dirname(spec.origin), "models", "adapter.py")
    mod_spec = importlib.util.spec_from_file_location("mulankit_adapter_reference", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family,width", [("sd1", 768), ("sd2", 1024)])
def test_mulan_sd_matches_reference(tmp_path, mulan, family, width):
    torch.manual_seed(5)
    ref = _jitter(mulan.LanguageAdapter(input_dim=40, output_dim=width, num_queries=6), 6)
    src = tmp_path / f"{'sd15' if family == 'sd1' else 'sd21'}_aesthetic.pth"
    torch.save(ref.state_dict(), src)
    out = convert("mulan", src, tmp_path / "mulan.safetensors", origin="mulanai/mulan-lang-adapter")
    ad = load_adapter(out, family=FAMILIES[family])
    assert ad.arch == "mulan" and ad.spec.encoder["model_type"] == "internvl_qllama"
    h = torch.randn(2, 11, 40)
    got = ad(h, torch.tensor([[1] * 11, [1] * 5 + [0] * 6]))  # MuLan attends to every position it is given
    with torch.no_grad():
        want = ref(h)
    torch.testing.assert_close(got.cond, want, **TOL)
    torch.testing.assert_close(got.pooled, want.mean(1), **TOL)
    assert got.cond.shape == (2, 6, width)


def test_mulan_sdxl_matches_reference(tmp_path, mulan):
    torch.manual_seed(7)
    ref = _jitter(mulan.LanguageAdapterXL(input_dim=24, num_queries=5, require_text_embedding=True), 8)
    src = tmp_path / "sdxl_aesthetic.pth"
    torch.save(ref.state_dict(), src)
    out = convert("mulan", src, tmp_path / "mulan-xl.safetensors")
    ad = load_adapter(out, family=FAMILIES["sdxl"])
    h = torch.randn(2, 9, 24)
    got = ad(h, torch.ones(2, 9))
    with torch.no_grad():
        cond, _pooled = ref(h, torch.randn(2, 768))
    torch.testing.assert_close(got.cond, cond, **TOL)
    assert torch.equal(got.pooled, torch.zeros(2, 1280))  # MuLan's default: force_sdxl_zero_pool_prompt
    assert _source(out)["dropped"] == ["add_embedding", "pool_caption_projection"]


def test_mulan_pixart_is_refused(tmp_path, mulan):
    torch.save(mulan.TextProjection(24, 1152).state_dict(), tmp_path / "pixart.pth")
    with pytest.raises(UnsupportedModelError, match="PixArt"):
        convert("mulan", tmp_path / "pixart.pth", tmp_path / "p.safetensors")


# ------------------------------------------------------------------------------------------ Multilingual-CLIP
def _tokenizer_files(folder, dest):
    for n in os.listdir(folder):
        if n != "config.json" and not n.endswith(".safetensors"):
            shutil.copyfile(os.path.join(folder, n), os.path.join(dest, n))


@pytest.mark.parametrize("dims", [768, 512])
def test_mclip_matches_reference(tmp_path, xlmr_dir, dims):
    import transformers
    from multilingual_clip import Config_MCLIP, pt_multilingual_clip

    tokenizer = transformers.AutoTokenizer.from_pretrained(xlmr_dir)
    base = tmp_path / "xlm-roberta-base-tiny"  # M-CLIP's modelBase: heads 64 wide, as every real base
    torch.manual_seed(9)
    cfg = transformers.XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=256, max_position_embeddings=66,
                                        pad_token_id=tokenizer.pad_token_id, layer_norm_eps=1e-5)  # as xlm-roberta-*
    transformers.XLMRobertaModel(cfg).save_pretrained(base)
    ref = pt_multilingual_clip.MultilingualCLIP(
        Config_MCLIP.MCLIPConfig(modelBase=str(base), transformerDimSize=128, imageDimSize=dims))
    _jitter(ref, 10, scale=0.02)
    src = tmp_path / "XLM-Roberta-Large-Vit-L-14"
    src.mkdir()
    ref.config.to_json_file(src / "config.json")
    torch.save(ref.state_dict(), src / "pytorch_model.bin")  # the published repos hold pytorch_model.bin
    _tokenizer_files(xlmr_dir, src)
    dst, enc_dir = tmp_path / "mclip.safetensors", tmp_path / "encoders" / "mclip-xlmr"
    if dims != 768:
        with pytest.raises(UnsupportedModelError, match="512-wide CLIP space"):
            convert("mclip", src, dst, encoder_out=enc_dir)
        assert not dst.exists() and not enc_dir.exists()
        return
    with pytest.raises(InvalidDataError, match="--encoder-out"):
        convert("mclip", src, dst)
    out = convert("mclip", src, dst, encoder_out=enc_dir, origin="M-CLIP/XLM-Roberta-Large-Vit-L-14")
    encoder = load_encoder(enc_dir)
    assert encoder.info.model_type == "xlm-roberta"
    ad = load_adapter(out, encoder=encoder.info, family=FAMILIES["sd1"])
    with torch.no_grad():
        want = ref.forward(TEXTS, tokenizer)
    batch = encoder.encode(TEXTS)
    got = ad(batch.hidden, batch.mask)
    torch.testing.assert_close(got.pooled, want, **TOL)
    torch.testing.assert_close((got.cond * batch.mask[..., None]).sum(1) / batch.mask.sum(1, keepdim=True), want,
                               **TOL)
    assert ad.spec.encoder["repo_id"] == "M-CLIP/XLM-Roberta-Large-Vit-L-14"


# ------------------------------------------------------------------------------------------------- AltCLIP
def _altclip(tmp_path, xlmr_dir, *, pickle_only=False):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(xlmr_dir)
    torch.manual_seed(11)
    text = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id,
                project_dim=768)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    config = transformers.AltCLIPConfig(text_config=text, vision_config=vision, projection_dim=768)
    model = _jitter(transformers.AltCLIPModel(config), 12, scale=0.02)
    folder = tmp_path / "AltCLIP"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if pickle_only:
        from safetensors.torch import load_file

        sd = load_file(folder / "model.safetensors")
        os.remove(folder / "model.safetensors")
        torch.save(sd, folder / "pytorch_model.bin")
    return folder, model, tokenizer


def _altclip_reference(model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model.text_model(**enc).last_hidden_state
        pooled = model.get_text_features(**enc)
    pooled = getattr(pooled, "pooler_output", pooled)
    return enc, tokens, pooled


@pytest.mark.parametrize("pickle_only", [False, True])
def test_altclip_matches_reference(tmp_path, xlmr_dir, pickle_only):
    folder, model, tokenizer = _altclip(tmp_path, xlmr_dir, pickle_only=pickle_only)
    dst = tmp_path / "altclip.safetensors"
    enc_dir = tmp_path / "AltCLIP-text"
    if pickle_only:
        with pytest.raises(InvalidDataError, match="only pickle weights.*--encoder-out"):
            convert("altclip", folder, dst)
        assert not dst.exists()
        out = convert("altclip", folder, dst, encoder_out=enc_dir, origin="BAAI/AltCLIP")
        encoder = load_encoder(enc_dir)
        assert encoder.info.model_type == "altclip_text_model"
    else:
        out = convert("altclip", folder, dst, origin="BAAI/AltCLIP")
        encoder = load_encoder(folder)  # the full AltCLIP folder: its text model only
        assert encoder.info.model_type == "altclip"
    assert encoder.info.hidden_size == 768
    ad = load_adapter(out, encoder=encoder.info, family=FAMILIES["sd1"])
    enc, tokens, pooled = _altclip_reference(model, tokenizer, TEXTS)
    batch = encoder.encode(TEXTS)
    assert torch.equal(batch.input_ids, enc["input_ids"])
    got = ad(batch.hidden, batch.mask)
    m = enc["attention_mask"].bool()
    torch.testing.assert_close(got.cond[m], tokens[m], **TOL)  # AltDiffusion's conditioning: the projected tokens
    torch.testing.assert_close(got.pooled, pooled, **TOL)  # AltCLIP's text embedding
    with pytest.raises(InvalidDataError, match="Use layer 'last'"):
        encoder.encode(TEXTS, layer="penultimate")


# ------------------------------------------------------------------------------------------- Chinese-CLIP
@pytest.fixture(scope="module")
def chinese_clip_dir(tmp_path_factory, encoder_dirs):
    """A tiny random Chinese-CLIP (full model) folder with a BERT word-piece tokenizer."""
    import transformers

    folder = tmp_path_factory.mktemp("chinese-clip")
    tokenizer = transformers.AutoTokenizer.from_pretrained(encoder_dirs["bert"])
    torch.manual_seed(13)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    config = transformers.ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    model = _jitter(transformers.ChineseCLIPModel(config), 14, scale=0.02)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), model, tokenizer


def test_chinese_clip_text_model_loads_as_an_encoder(tmp_path, chinese_clip_dir):
    import transformers

    folder, model, tokenizer = chinese_clip_dir
    encoder = load_encoder(folder)
    assert (encoder.info.model_type, encoder.info.hidden_size, encoder.info.num_layers) == ("chinese_clip", 32, 2)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    batch = encoder.encode(TEXTS)
    assert torch.equal(batch.input_ids, enc["input_ids"])
    with torch.no_grad():
        want = model.text_model(**enc).last_hidden_state
    m = enc["attention_mask"].bool()
    torch.testing.assert_close(batch.hidden[m], want[m], **TOL)
    # a text-model-only folder loads too, and its hidden layers can be read
    text_dir = tmp_path / "chinese-clip-text"
    text_model = transformers.ChineseCLIPTextModel(model.config.text_config, add_pooling_layer=False)
    text_model.load_state_dict(model.text_model.state_dict())
    text_model.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    alone = load_encoder(text_dir)
    assert alone.info.model_type == "chinese_clip_text_model"
    torch.testing.assert_close(alone.encode(TEXTS).hidden[m], want[m], **TOL)
    with torch.no_grad():
        mid = model.text_model(**enc, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(alone.encode(TEXTS, layer=1).hidden[m], mid[m], **TOL)


def test_cli_convert_writes_the_adapter_and_its_card_and_refuses_bad_input(tmp_path, mulan, capsys):
    """``python -m babelclip convert``: the converted file, its model card naming where it came from, exit 2 with
    the typed message (and nothing written) for a pickle holding an object."""
    from huggingface_hub import ModelCard

    from babelclip.__main__ import main

    torch.manual_seed(7)
    src = tmp_path / "sd15_base.pth"
    torch.save(_jitter(mulan.LanguageAdapter(input_dim=40, output_dim=768, num_queries=6), 8).state_dict(), src)
    out = tmp_path / "models" / "babelclip" / "mulan-sd15.safetensors"
    assert main(["convert", "--from", "mulan", str(src), "--out", str(out), "--origin", "mulanai/mulan-lang-adapter",
                 "--license", "mit", "--languages", "zh,ja"]) == 0
    assert "mulan adapter for SD1" in capsys.readouterr().out
    card = ModelCard.load(tmp_path / "models" / "babelclip" / "mulan-sd15.README.md")
    assert card.data.license == "mit" and card.data.language == ["ja", "zh"]
    assert card.data.to_dict()["babelclip"]["converted_from"]["repo"] == "mulanai/mulan-lang-adapter"
    assert "Converted with `python -m babelclip convert`" in card.text
    import pickle

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"w": {}, "f": print}))  # a pickle that would hand out a function
    assert main(["convert", "--from", "mulan", str(bad), "--out", str(tmp_path / "evil.safetensors")]) == 2
    assert "evil.pth" in capsys.readouterr().err and not (tmp_path / "evil.safetensors").exists()
