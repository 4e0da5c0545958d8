"""An earlier encoder layer is read without running the blocks after it, and equals the full model's states."""

from __future__ import annotations

import pytest
import torch

from babelclip.models.tiny import TINY_ENCODER_TYPES


@pytest.mark.parametrize("model_type", TINY_ENCODER_TYPES)
def test_each_layer_equals_the_full_models_and_later_blocks_do_not_run(encoders, model_type):
    enc = encoders[model_type]
    seqs = [enc.with_special_tokens(enc.tokenize(t)[0]) for t in ("красная кошка на крыше", "cat")]
    ids = torch.full((2, len(seqs[0])), enc.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        full = enc.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=True).hidden_states
    blocks = enc._blocks()
    assert blocks is not None and len(blocks) == enc.info.num_layers
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    try:
        for layer in range(enc.info.num_layers + 1):
            ran.clear()
            assert torch.equal(enc.encode_ids(seqs, layer).hidden, full[layer]), layer
            if layer:  # layer i is the output of block i - 1: blocks i.. are not run
                assert ran == list(range(layer)), (layer, ran)
    finally:
        for h in handles:
            h.remove()
    enc.encode_ids(seqs, 1)
    hooks = [len(b._forward_hooks) for b in blocks]
    enc.encode_ids(seqs, 1)
    assert [len(b._forward_hooks) for b in blocks] == hooks  # the early-exit hook is always removed


def test_encode_prompts_builds_no_autograd_graph(xlmr):
    from babelclip.models import FAMILIES, build_adapter, encode_prompts

    adapter = build_adapter("mlp", xlmr.info.hidden_size, FAMILIES["sd1"])
    out = encode_prompts(xlmr, adapter, ["a (red:1.3) cat"])  # called without torch.no_grad()
    assert not out.cond.requires_grad and not out.pooled.requires_grad
