"""``python -m babelclip``: a demo of the encode path, adapter inspection, the Hugging Face Hub (fetch, push), and
conversion of the peers' published adapters.

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
    from .models import read_adapter_spec

    spec = read_adapter_spec(args.adapter)
    if args.json:
        print(json.dumps({k: _parsed(v) for k, v in sorted(spec.metadata.items())}, indent=2, ensure_ascii=False))
        return 0
    print(spec.describe())
    width = max(60, shutil.get_terminal_size().columns - 1)
    for key, value in sorted(spec.metadata.items()):
        print("\n".join(_metadata_lines(key, value, width)))
    return 0


def _tqdm_progress(desc: str):
    """A (done, total) callback drawing one tqdm bar of bytes."""
    from tqdm.auto import tqdm

    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc)
        bar.total = max(bar.total or 0, total)
        bar.update(done - bar.n)

    return report


def fetch(args) -> int:
    from .models.hub import fetch as fetch_repo

    result = fetch_repo(args.repo, args.models_dir, kind=args.kind, revision=args.revision, name=args.name,
                        only=args.file, overwrite=args.overwrite, token=args.token, progress=_tqdm_progress(args.repo))
    state = "downloaded" if result.downloaded else "already there"
    commit = f"@{result.commit[:12]}" if result.commit else ""
    print(f"{state}: {result.repo_id}{commit} -> {result.path} ({', '.join(result.files)})")
    return 0


def push(args) -> int:
    from .models.hub import push as push_adapter

    url = push_adapter(args.adapter, args.repo, private=args.private or None, revision=args.revision,
                       token=args.token, license=args.license, base_model=args.base_model, message=args.message)
    print(f"uploaded {args.adapter} with its model card to {args.repo}: {url}")
    return 0


def card(args) -> int:
    from .models.card import evaluation_beside, write_card

    path = write_card(args.adapter, evaluation=evaluation_beside(args.adapter), repo_id=args.repo,
                      base_model=args.base_model, license=args.license)
    print(f"wrote {path}")
    return 0


def convert(args) -> int:
    from .models import read_adapter_spec
    from .models.convert import convert as convert_peer

    languages = [x.strip() for x in args.languages.split(",") if x.strip()] if args.languages else None
    out = convert_peer(args.kind, args.src, args.out, family=args.family, encoder=args.encoder,
                       encoder_out=args.encoder_out, encoder_config=args.encoder_config, origin=args.origin,
                       license=args.license, languages=languages, overwrite=args.overwrite)
    print(f"wrote {out}: {read_adapter_spec(out).describe()}")
    if args.encoder_out:
        print(f"its encoder: {args.encoder_out} (put it in models/text_encoders)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m babelclip", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="encode prompts in ten languages with tiny built-in models (no download)")
    p.add_argument("--workdir", help="where to write the tiny encoder and adapters (default: a temp folder)")
    p.set_defaults(func=demo)
    p = sub.add_parser("info", help="print an adapter file's metadata, whole (JSON values one key per line)")
    p.add_argument("adapter", help="path to an adapter .safetensors file")
    p.add_argument("--json", action="store_true", help="print the metadata as one JSON object instead")
    p.set_defaults(func=info)
    p = sub.add_parser("fetch", help="download an encoder or adapters from the Hugging Face Hub into a models folder")
    p.add_argument("repo", help="Hub repository id, e.g. intfloat/multilingual-e5-small")
    p.add_argument("--revision", help="branch, tag or commit (default: the main branch)")
    p.add_argument("--kind", choices=["encoder", "adapter"],
                   help="what the repository holds (default: encoder when it has a config.json, else adapter)")
    p.add_argument("--models-dir", default="models",
                   help="the host's models folder: files go to <dir>/text_encoders/<name> or <dir>/babelclip/<name> "
                        "(default: ./models, right when run from the ComfyUI or web UI folder)")
    p.add_argument("--name", help="folder name (default: the repository's name without its owner)")
    p.add_argument("--file", help="download only this adapter file of the repository (default: all of them)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder of that name holding something else")
    p.add_argument("--token", help="access token for gated or private repositories (default: HF_TOKEN or the "
                                   "saved `hf auth login`)")
    p.set_defaults(func=fetch)
    p = sub.add_parser("push", help="share an adapter on the Hugging Face Hub with its model card and evaluation")
    p.add_argument("adapter", help="the adapter .safetensors (its <stem>.eval.{json,md,png} go along when present)")
    p.add_argument("repo", help="Hub repository id to create or update, e.g. yourname/babelclip-sdxl-e5-de")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--license", help="licence id for the card (e.g. apache-2.0, mit, openrail++)")
    p.add_argument("--base-model", help="the encoder's Hub repository (default: the one the adapter records)")
    p.add_argument("--message", help="commit message")
    p.add_argument("--token", help="access token with write access (default: HF_TOKEN or the saved login)")
    p.set_defaults(func=push)
    from .models import FAMILIES
    from .models.convert import KINDS as PEERS

    p = sub.add_parser("convert", help="turn a peer's published adapter (PEA-Diffusion, MuLan, Multilingual-CLIP, "
                                       "AltCLIP) into a BabelCLIP adapter file")
    p.add_argument("--from", dest="kind", required=True, choices=list(PEERS),
                   help="; ".join(f"{k}: {v}" for k, v in PEERS.items()))
    p.add_argument("src", help="the peer's weights file (pea, mulan) or model folder (mclip, altclip); pickles are "
                               "read with torch.load(weights_only=True) only")
    p.add_argument("--out", required=True, help="the adapter file to write (.safetensors)")
    p.add_argument("--family", help="target family, " + ", ".join(FAMILIES) + " (default: from the shapes)")
    p.add_argument("--encoder", help="pea: the folder of the encoder the adapter was trained on (required)")
    p.add_argument("--encoder-out", help="mclip (required), altclip: write the peer's text tower as an encoder "
                                         "folder here")
    p.add_argument("--encoder-config", help="mclip: the base model's config.json (default: built from the shapes)")
    p.add_argument("--origin", help="the Hub repository the weights came from (recorded, shown in the model card)")
    p.add_argument("--license", help="the weights' licence id (recorded, shown in the model card)")
    p.add_argument("--languages", help="comma-separated language codes the peer adapter was trained for")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=convert)
    p = sub.add_parser("card", help="(re)write an adapter's model card, <stem>.README.md, from its metadata")
    p.add_argument("adapter", help="the adapter .safetensors")
    p.add_argument("--repo", help="the Hub repository it is shared in (for the download commands in the card)")
    p.add_argument("--base-model", help="the encoder's Hub repository (default: the one the adapter records)")
    p.add_argument("--license", help="licence id for the card")
    p.set_defaults(func=card)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from .errors import BabelClipError

    try:
        return args.func(args)
    except BabelClipError as e:  # every command: the typed message, exit status 2
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
