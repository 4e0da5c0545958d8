"""``python -m babelclip``: a demo of the encode path, and adapter inspection.

``demo`` needs no download: it builds a tiny random multilingual encoder and
random adapters, then encodes prompts in ten languages into SD1.5 and SDXL
conditioning and prints what a ComfyUI KSampler would receive.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time


def demo(args) -> int:
    import torch

    from .models import FAMILIES, build_adapter, encode_prompts, load_adapter, load_encoder, save_adapter
    from .models.tiny import SAMPLE_PROMPTS, build_tiny_encoder

    work = args.workdir or tempfile.mkdtemp(prefix="babelclip-demo-")
    enc_dir = os.path.join(work, "text_encoders", "tiny-xlm-roberta")
    if not os.path.exists(os.path.join(enc_dir, "config.json")):
        build_tiny_encoder(enc_dir, "xlm-roberta")
    encoder = load_encoder(enc_dir)
    print(f"encoder: {encoder.info.name} ({encoder.info.model_type}, {encoder.info.num_layers} layers, "
          f"hidden {encoder.info.hidden_size}, max {encoder.max_length} tokens) in {enc_dir}")
    torch.manual_seed(0)
    prompts = [p for p in SAMPLE_PROMPTS[:10]] + ["a (red:1.3) cat, ((masterpiece))"]
    for family, arch in (("sd1", "mlp"), ("sdxl", "resampler")):
        path = os.path.join(work, "babelclip", f"tiny-{family}-{arch}.safetensors")
        if not os.path.exists(path):
            adapter = build_adapter(arch, encoder.info.hidden_size, FAMILIES[family])
            save_adapter(adapter, path, {"encoder": encoder.info, "family": family, "languages": ["*"],
                                         "description": "random weights: demo only"})
        adapter = load_adapter(path, encoder=encoder.info, family=FAMILIES[family])
        print(f"\nadapter: {adapter.spec.describe()} ({adapter.num_parameters():,} parameters)")
        for prompt in prompts:
            start = time.perf_counter()
            out = encode_prompts(encoder, adapter, [prompt])
            ms = (time.perf_counter() - start) * 1000
            print(f"  {ms:6.1f} ms  cond {tuple(out.cond.shape)}  pooled {tuple(out.pooled.shape)}  {prompt[:48]}")
    print(f"\nfiles are in {work}: copy text_encoders/ and babelclip/ into ComfyUI/models/ to try the nodes "
          f"(the weights are random, so the images will be noise).")
    return 0


def info(args) -> int:
    from .errors import BabelClipError
    from .models import read_adapter_spec

    try:
        spec = read_adapter_spec(args.adapter)
    except BabelClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(spec.describe())
    for key, value in sorted(spec.metadata.items()):
        print(f"  {key}: {value[:200]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m babelclip", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="encode prompts in ten languages with tiny built-in models (no download)")
    p.add_argument("--workdir", help="where to write the tiny encoder and adapters (default: a temp folder)")
    p.set_defaults(func=demo)
    p = sub.add_parser("info", help="print an adapter file's metadata")
    p.add_argument("adapter", help="path to an adapter .safetensors file")
    p.set_defaults(func=info)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
