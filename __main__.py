"""``python -m babelclip``: a demo of the encode path, and adapter inspection.

``demo`` needs no download: it builds a tiny random multilingual encoder and
random adapters, then encodes prompts in ten languages into SD1.5 and SDXL
conditioning and prints what a ComfyUI KSampler would receive.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import textwrap
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


def _printable(text: str) -> str:
    """``text`` with control and other non-printing characters escaped, so metadata cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _parsed(value: str):
    """A metadata value as JSON when it is JSON (most babelclip.* keys), else the string itself."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _metadata_lines(key: str, value: str, width: int) -> list[str]:
    """One metadata entry, whole: a JSON object one key per line; anything else wrapped to ``width``."""
    data = _parsed(value)
    if isinstance(data, dict) and data:
        lines = [f"  {_printable(key)}:"]
        for sub, item in data.items():
            text = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
            wrapped = textwrap.wrap(_printable(f"{sub}: {text}"), width, initial_indent="      ",
                                    subsequent_indent="        ", break_on_hyphens=False)
            lines += wrapped or [f"      {_printable(sub)}:"]
        return lines
    return textwrap.wrap(_printable(f"{key}: {value}"), width, initial_indent="  ", subsequent_indent="      ",
                         break_on_hyphens=False) or [f"  {_printable(key)}:"]


def info(args) -> int:
    from .errors import BabelClipError
    from .models import read_adapter_spec

    try:
        spec = read_adapter_spec(args.adapter)
    except BabelClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: _parsed(v) for k, v in sorted(spec.metadata.items())}, indent=2, ensure_ascii=False))
        return 0
    print(spec.describe())
    width = max(60, shutil.get_terminal_size().columns - 1)
    for key, value in sorted(spec.metadata.items()):
        print("\n".join(_metadata_lines(key, value, width)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m babelclip", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="encode prompts in ten languages with tiny built-in models (no download)")
    p.add_argument("--workdir", help="where to write the tiny encoder and adapters (default: a temp folder)")
    p.set_defaults(func=demo)
    p = sub.add_parser("info", help="print an adapter file's metadata, whole (JSON values one key per line)")
    p.add_argument("adapter", help="path to an adapter .safetensors file")
    p.add_argument("--json", action="store_true", help="print the metadata as one JSON object instead")
    p.set_defaults(func=info)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
