"""``python -m babelclip.training {demo,cache,train,eval}``: distill and evaluate language adapters."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import time

from ..errors import BabelClipError
from ..models.files import atomic_write

log = logging.getLogger("babelclip.training")

SHIPPED_PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "prompts.tsv")


def _common(p: argparse.ArgumentParser, *, teacher: bool = True) -> None:
    if teacher:
        p.add_argument("--teacher", required=True,
                       help="the checkpoint whose CLIP is distilled: a single-file SD1.x/SD2.x/SDXL .safetensors "
                            "or a diffusers folder")
        p.add_argument("--clip-tokenizer", help="folder with CLIP's vocab.json + merges.txt (default: the diffusers "
                                                "folder's tokenizer/; single-file checkpoints need it)")
        p.add_argument("--clip-skip", type=int, default=None, help="like CLIPSetLastLayer: -1 last, -2 penultimate")
    p.add_argument("--encoder", required=True, help="Hugging Face folder of the frozen multilingual encoder")
    p.add_argument("--data", required=True, help="TSV/CSV/JSONL with columns en,text[,lang][,image], or a .txt "
                                                 "of English prompts")
    p.add_argument("--layer", default="last", help="encoder layer: last, penultimate or an index")
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "babelclip", "features"),
                   help="where frozen features are cached")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step / per frozen-model batch")


def _load(args):
    from ..models import load_encoder
    from ..models.teacher import load_teacher
    from .data import dedup, read_pairs

    encoder = load_encoder(args.encoder)
    teacher = load_teacher(args.teacher, args.clip_tokenizer)
    teacher.clip_skip = args.clip_skip
    pairs = dedup(read_pairs(args.data))
    layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    return encoder, teacher, pairs, layer


def _bar(desc: str):
    from tqdm.auto import tqdm

    state = {}

    def update(done: int, total: int, loss: float | None = None) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="step" if loss is not None else "text")
        bar = state["bar"]
        bar.update(done - bar.n)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4g}")
        if done >= total:
            bar.close()
    return update


def _features(args, pairs, encoder, teacher, layer, teacher_layout="tokens"):
    from .features import prepare_text_features

    bars = {}

    def progress(name, done, total):
        bars.setdefault(name, _bar(f"caching {name} features"))(done, total)

    return prepare_text_features(pairs, encoder, teacher, args.cache_dir, layer=layer, batch_size=args.batch_size,
                                 progress=progress, teacher_layout=teacher_layout)


class _SingleProcess:
    is_main_process = True

    def main_process_first(self):
        import contextlib

        return contextlib.nullcontext()


def _process_state(device: str):
    """accelerate's PartialState when started by `accelerate launch` with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    return _SingleProcess()


def cmd_cache(args) -> int:
    encoder, teacher, pairs, layer = _load(args)
    feats = _features(args, pairs, encoder, teacher, layer, args.teacher_layout)
    print(f"cached {len(feats.encoder_store)} encoder and {len(feats.teacher_store)} teacher entries in {args.cache_dir}")
    return 0


def _image_embeds(args, recipe, pairs, text_features, teacher):
    """mclip-trikd's image side: CLIP image embeddings of each row's image, from --clip-vision."""
    from .images import ImageTextFeatures, hf_clip_vision_embedder, prepare_image_embeds

    if recipe.name != "mclip-trikd":
        raise BabelClipError(f"--clip-vision is used by mclip-trikd only, not by {recipe.name!r}.")
    embed, dim, fingerprint = hf_clip_vision_embedder(args.clip_vision)
    if dim != teacher.family.pooled_dim:
        raise BabelClipError(
            f"The CLIP vision model {args.clip_vision!r} embeds images in {dim} dimensions but the teacher's pooled "
            f"text embeddings ({teacher.family.label}) have {teacher.family.pooled_dim}: use the vision tower of the "
            f"same CLIP (ViT-L/14 for SD1.x, ViT-H/14 for SD2.x, ViT-bigG/14 for SDXL).")
    embeds = prepare_image_embeds(pairs, embed, dim, args.cache_dir, fingerprint)
    return ImageTextFeatures(text_features, embeds=embeds)


def _unet_and_latents(args, pairs, text_features):
    """UNet recipes from the CLI: the UNet and VAE of a diffusers folder; images encoded once."""
    from ..models.adapter_file import tensor_hash
    from .images import ImageTextFeatures, diffusers_vae_encoder, prepare_latents
    from .unet import DiffusersUNet

    if not os.path.isdir(os.path.join(args.teacher, "unet")) or not os.path.isdir(os.path.join(args.teacher, "vae")):
        raise BabelClipError(
            f"Recipe {args.recipe!r} trains through the UNet: from the command line --teacher must be a diffusers "
            f"folder with unet/ and vae/ (single-file checkpoints: use the 'BabelCLIP Train Adapter' node in "
            f"ComfyUI, which takes the loaded MODEL and VAE).")
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
    except ImportError:
        raise BabelClipError("UNet recipes from the command line need diffusers: pip install diffusers") from None
    try:  # safetensors only: a folder with just diffusion_pytorch_model.bin is refused, never unpickled
        unet = UNet2DConditionModel.from_pretrained(os.path.join(args.teacher, "unet"), local_files_only=True,
                                                    use_safetensors=True)
        vae = AutoencoderKL.from_pretrained(os.path.join(args.teacher, "vae"), local_files_only=True,
                                            use_safetensors=True)
    except (OSError, ValueError) as e:
        raise BabelClipError(f"Cannot load the UNet/VAE of {args.teacher!r} ({str(e)[:200]}). It needs "
                             f"unet/ and vae/ with config.json and .safetensors weights.") from None
    encode, channels, factor = diffusers_vae_encoder(vae.float())
    fingerprint = tensor_hash(vae.state_dict())[:16]
    latents = prepare_latents(pairs, encode, channels, factor, args.cache_dir, fingerprint, args.resolution,
                              progress=_bar("encoding images"))
    return DiffusersUNet(unet.float()), ImageTextFeatures(text_features, latents)


def cmd_train(args) -> int:
    import torch

    from ..models import build_adapter, save_adapter
    from .data import split_pairs
    from .evaluation import evaluate_adapter, report_markdown, write_report
    from .features import teacher_layout_for
    from .recipes import get_recipe
    from .trainer import TrainConfig, train

    out = os.path.abspath(args.out)
    if not out.endswith(".safetensors"):
        raise BabelClipError(f"--out {args.out!r} must end in .safetensors")
    if os.path.exists(out) and not args.overwrite:
        raise BabelClipError(f"{out!r} exists; choose another --out or pass --overwrite")
    encoder, teacher, pairs, layer = _load(args)
    train_pairs, val_pairs = split_pairs(pairs, args.val_fraction, seed=args.seed)
    recipe = get_recipe(args.recipe)
    config = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         device=args.device, checkpoint_every=args.checkpoint_every)
    config.validate(len(train_pairs))
    torch.manual_seed(args.seed)
    adapter = build_adapter(args.arch, encoder.info.hidden_size, teacher.family)
    print(recipe.describe(adapter))
    print(f"{len(train_pairs)} training and {len(val_pairs)} held-out pairs from {args.data}")
    state = _process_state(args.device)
    if not isinstance(state, _SingleProcess) and state.is_main_process:
        print(f"data parallel over {state.num_processes} processes (accelerate)")
    with state.main_process_first():  # under `accelerate launch`, the main process fills the caches first
        # the teacher's 77 tokens are cached only when the recipe and adapter read them (features.py)
        train_feats = _features(args, train_pairs, encoder, teacher, layer, teacher_layout_for(adapter, recipe))
        val_feats = (_features(args, val_pairs, encoder, teacher, layer, teacher_layout_for(adapter))
                     if val_pairs else None)
        unet = None
        if recipe.needs_unet:
            unet, train_feats = _unet_and_latents(args, train_pairs, train_feats)
        elif args.clip_vision:
            train_feats = _image_embeds(args, recipe, train_pairs, train_feats, teacher)

    stop = {"now": False}

    def on_sigint(signum, frame):  # finish the step, write the checkpoint, exit resumable
        stop["now"] = True
        print("\nstopping after this step; run the same command again to resume", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    checkpoint = out + ".ckpt"
    started = time.perf_counter()
    try:
        result = train(adapter, recipe, train_feats, config, checkpoint=checkpoint, resume=not args.restart,
                       unet=unet, progress=_bar("training"), should_stop=lambda: stop["now"])
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.stopped:
        print(f"stopped at step {result.step}/{config.steps}; checkpoint {checkpoint}")
        return 130
    if not state.is_main_process:
        return 0
    report = evaluate_adapter(adapter, val_feats) if val_feats else None
    metrics = report["average"] if report else {}
    save_adapter(adapter.cpu(), out, {
        "encoder": encoder.info, "family": teacher.family.name, "layer": layer,
        "teacher": {"family": teacher.family.name, "fingerprint": teacher.fingerprint,
                    "source": os.path.basename(teacher.source), "clip_skip": teacher.clip_skip},
        "languages": sorted({p.lang for p in pairs}),
        "recipe": {"name": recipe.name, **dataclasses.asdict(config), "final_loss": result.losses[-1],
                   "final_terms": result.terms, "train_pairs": len(train_pairs),
                   "seconds": round(time.perf_counter() - started, 1)},
        "metrics": metrics,
    }, overwrite=args.overwrite)
    os.unlink(checkpoint)
    print(f"saved {out} (final loss {result.losses[-1]:.4g})")
    if report:
        paths = write_report(report, out[: -len(".safetensors")] + ".eval")
        print(report_markdown(report))
        print(f"evaluation: {paths['json']}, {paths['markdown']}, {paths['chart']}")
    return 0


def cmd_eval(args) -> int:
    from ..models import load_adapter
    from .evaluation import evaluate_adapter, report_markdown, write_report
    from .features import teacher_layout_for

    encoder, teacher, pairs, layer = _load(args)
    adapter = load_adapter(args.adapter, encoder=encoder.info, family=teacher.family)
    feats = _features(args, pairs, encoder, teacher, adapter.spec.layer if args.layer == "last" else layer,
                      teacher_layout_for(adapter))
    report = evaluate_adapter(adapter, feats)
    flat = {lang: {k: m[k] for k in ("r@1", "r@5", "r@10", "mean_recall", "cosine")}
            for lang, m in report["languages"].items()}
    flat["average"] = {k: report["average"][k] for k in ("r@1", "r@5", "r@10", "mean_recall", "cosine")}
    summary = {"languages": flat, "average": flat.pop("average"), "pairs": report["pairs"],
               "adapter": os.path.basename(args.adapter)}
    atomic_write(args.json, lambda tmp: _write_json(tmp, summary), "evaluation summary")
    details = write_report(report, os.path.splitext(args.json)[0] + "-details")
    print(report_markdown(report))
    print(f"wrote {args.json} (all metrics: {details['json']}; table: {details['markdown']}; chart: {details['chart']})")
    return 0


def cmd_demo(args) -> int:
    """Everything end to end with tiny built-in models and the shipped prompt set; no download."""
    from ..models.tiny import build_tiny_clip_checkpoint, build_tiny_encoder
    from .data import read_pairs

    work = args.workdir or tempfile.mkdtemp(prefix="babelclip-train-demo-")
    pairs = read_pairs(SHIPPED_PROMPTS)
    texts = [p.text for p in pairs]
    enc = os.path.join(work, "text_encoders", "tiny-xlm-roberta")
    if not os.path.exists(os.path.join(enc, "config.json")):
        build_tiny_encoder(enc, "xlm-roberta", hidden_size=64, max_positions=128, extra_text=texts)
    ckpt_dir = os.path.join(work, "checkpoints")
    ckpt, tok = os.path.join(ckpt_dir, "tiny-sd15-text-encoder.safetensors"), os.path.join(ckpt_dir, "clip_tokenizer")
    if not os.path.exists(ckpt):
        ckpt, tok = build_tiny_clip_checkpoint(ckpt_dir, extra_text=sorted({p.en for p in pairs}))
    out = os.path.join(work, "babelclip", f"demo-{args.arch}-{args.recipe}.safetensors")
    argv = ["train", "--teacher", ckpt, "--clip-tokenizer", tok, "--encoder", enc, "--data", SHIPPED_PROMPTS,
            "--recipe", args.recipe, "--arch", args.arch, "--steps", str(args.steps), "--out", out,
            "--cache-dir", os.path.join(work, "cache"), "--overwrite"]
    print("running: python -m babelclip.training " + " ".join(argv))
    code = main(argv)
    if code == 0:
        print(f"\ndemo files in {work}. The models are tiny and random, so the recall above only shows the "
              f"pipeline runs; train with a real encoder and checkpoint for real adapters.")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m babelclip.training",
                                     description="Distill and evaluate BabelCLIP language adapters.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train and evaluate an adapter with tiny built-in models (no download)")
    p.add_argument("--workdir", help="where to write models, cache and adapter (default: a temp folder)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--recipe", default="altclip-kd")
    p.add_argument("--arch", default="mlp")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("cache", help="compute and cache the frozen teacher and encoder features")
    _common(p)
    p.add_argument("--teacher-layout", choices=["tokens", "mean"], default="tokens",
                   help="tokens: also the teacher's 77 tokens (every recipe and adapter); mean: only their mean and the "
                        "pooled vector, 40x smaller (altclip-kd with linear/mlp/bottleneck, mclip-trikd, mulan)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("train", help="distill an adapter against a checkpoint's CLIP")
    _common(p)
    p.add_argument("--recipe", default="altclip-kd", help="altclip-kd, mclip-trikd (text); pea, mulan, iap (UNet)")
    p.add_argument("--arch", default="mlp", help="linear, mlp, bottleneck, resampler")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out for the evaluation (by English text)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--resolution", type=int, default=512, help="image size for UNet recipes")
    p.add_argument("--clip-vision", help="mclip-trikd: a transformers CLIP vision model folder; adds the image<->text "
                                          "loss for rows with an image")
    p.add_argument("--out", required=True, help="adapter file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint left by an interrupted run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate an adapter on parallel pairs (XTD10/Multi30K style)")
    _common(p)
    p.add_argument("--adapter", required=True, help="adapter .safetensors")
    p.add_argument("--json", required=True, help="where to write the metrics JSON (details, .md and .png beside it)")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BabelClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
