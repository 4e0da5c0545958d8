"""``python -m babelclip.training {demo,cache,train,eval}``: distill and evaluate language adapters."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys

from ..errors import BabelClipError, IncompatibleAdapterError, InvalidDataError, InvalidModelFileError
from ..models.files import atomic_write

log = logging.getLogger("babelclip.training")

SHIPPED_PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "prompts.tsv")


DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "babelclip", "features")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default; required options and off-by-default switches have none."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _common(p: argparse.ArgumentParser, *, teacher: bool = True) -> None:
    if teacher:
        p.add_argument("--teacher", required=True, nargs="+", metavar="PATH",
                       help="the checkpoint whose text encoders are distilled: a single-file SD1.x/SD2.x/SDXL/SD3/Flux "
                            ".safetensors, a diffusers folder, or ComfyUI's text-encoder files together (Flux: "
                            "clip_l.safetensors t5xxl_fp16.safetensors; SD3: clip_l, clip_g and t5xxl)")
        p.add_argument("--clip-tokenizer", help="folder with CLIP's vocab.json + merges.txt (default: the diffusers "
                                                "folder's tokenizer/; single files need it)")
        p.add_argument("--t5-tokenizer", help="Flux / SD3: folder with T5's tokenizer.json or spiece.model (default: "
                                              "the diffusers folder's tokenizer_2/ or tokenizer_3/; ComfyUI's is "
                                              "comfy/text_encoders/t5_tokenizer)")
        p.add_argument("--clip-skip", type=int, default=None,
                       help="the teacher's CLIP layer: -1 last layer, -2 penultimate (default: the layer the "
                            "checkpoint's family is conditioned on)")
    p.add_argument("--encoder", required=True, help="Hugging Face folder of the frozen multilingual encoder")
    p.add_argument("--data", required=True, help="TSV/CSV/JSONL with columns en,text[,lang][,image], or a .txt "
                                                 "of English prompts")
    p.add_argument("--layer", default="last", help="encoder layer the adapter reads: last, penultimate or an index")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                   help="where the frozen encoder and teacher features are cached, keyed by model and text "
                        "(reused by later runs; safe to delete)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step / per frozen-model batch")


def _layer(value: str):
    """``--layer`` as the encoder takes it; anything else is refused before a model loads."""
    key = value.strip().lower()
    if key in ("last", "penultimate"):
        return key
    try:
        return int(key)
    except ValueError:
        raise InvalidDataError(f"--layer {value!r} is not valid: use last, penultimate or a layer index "
                               f"(0 = the embeddings, -1 = the last layer).") from None


def _load(args):
    from ..models import load_encoder
    from ..models.teacher import load_teacher
    from .data import dedup, read_pairs

    layer = _layer(args.layer)
    pairs = dedup(read_pairs(args.data))
    encoder = load_encoder(args.encoder)
    teacher = load_teacher(_teacher_source(args), args.clip_tokenizer, args.t5_tokenizer)
    teacher.clip_skip = args.clip_skip
    return encoder, teacher, pairs, layer


def _bar(desc: str, unit: str | None = None):
    from tqdm.auto import tqdm

    state = {}

    def update(done: int, total: int, loss: float | None = None) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit=unit or ("step" if loss is not None else "text"))
        bar = state["bar"]
        bar.update(done - bar.n)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4g}")
        if done >= total:
            bar.close()
    return update


def _features(args, pairs, encoder, teacher, layer, teacher_layout="tokens", encode_english=False):
    from .features import prepare_text_features

    bars = {}

    def progress(name, done, total):
        bars.setdefault(name, _bar(f"caching {name} features"))(done, total)

    return prepare_text_features(pairs, encoder, teacher, args.cache_dir, layer=layer, batch_size=args.batch_size,
                                 progress=progress, teacher_layout=teacher_layout, encode_english=encode_english)


def cmd_cache(args) -> int:
    encoder, teacher, pairs, layer = _load(args)
    feats = _features(args, pairs, encoder, teacher, layer, args.teacher_layout)
    print(f"cached {len(feats.encoder_store)} encoder and {len(feats.teacher_store)} teacher entries in {args.cache_dir}")
    return 0


def _image_embeds(args, pairs, text_features, teacher):
    """mclip-trikd's image side: CLIP image embeddings of each row's image, from --clip-vision."""
    from .images import ImageTextFeatures, hf_clip_vision_embedder, prepare_image_embeds

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
    from diffusers import AutoencoderKL, UNet2DConditionModel  # installed: checked by _check_unet_teacher

    from ..models.adapter_file import tensor_hash
    from .images import ImageTextFeatures, diffusers_vae_encoder, prepare_latents
    from .unet import DiffusersUNet, schedule_from_folder

    try:  # safetensors only: a folder with just diffusion_pytorch_model.bin is refused, never unpickled
        unet = UNet2DConditionModel.from_pretrained(os.path.join(_teacher_source(args), "unet"), local_files_only=True,
                                                    use_safetensors=True)
        vae = AutoencoderKL.from_pretrained(os.path.join(_teacher_source(args), "vae"), local_files_only=True,
                                            use_safetensors=True)
    except (OSError, ValueError) as e:
        raise BabelClipError(f"Cannot load the UNet/VAE of {args.teacher!r} ({str(e)[:200]}). It needs "
                             f"unet/ and vae/ with config.json and .safetensors weights.") from None
    try:
        alphas_cumprod, prediction, source = schedule_from_folder(_teacher_source(args), text_features.family.prediction)
    except (OSError, ValueError) as e:
        raise BabelClipError(f"Cannot read the noise schedule of {args.teacher!r}: {str(e)[:300]}. Use a diffusers "
                             f"folder whose scheduler/scheduler_config.json is intact.") from None
    log.info("The UNet predicts %s (%s).", "the noise" if prediction == "eps" else "v", source)
    encode, channels, factor = diffusers_vae_encoder(vae.float())
    fingerprint = tensor_hash(vae.state_dict())[:16]
    latents = prepare_latents(pairs, encode, channels, factor, args.cache_dir, fingerprint, args.resolution,
                              progress=_bar("encoding images"))
    return DiffusersUNet(unet.float(), alphas_cumprod, prediction), ImageTextFeatures(text_features, latents)


@dataclasses.dataclass
class TrainPlan:
    """What the ``train`` arguments ask for, checked before any model loads or cache file is written."""

    out: str
    recipe: object
    config: object
    pairs: list
    train_pairs: list
    val_pairs: list
    layer: object


def _check_device(device: str) -> None:
    import torch

    try:
        parsed = torch.device(device) if device != "auto" else None
    except (RuntimeError, ValueError):
        raise InvalidDataError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or auto.") from None
    if parsed is None or parsed.type == "cpu":
        return
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if parsed.type not in available:
        raise InvalidDataError(f"--device {device!r}: training runs on cpu, cuda or mps; use cpu, cuda, cuda:N or "
                               f"auto.")
    if not available[parsed.type]():
        raise InvalidDataError(f"--device {device!r} was asked for but {parsed.type.upper()} is not available on "
                               f"this machine; use --device cpu (or auto). BabelCLIP never falls back silently.")


def _teachers(args) -> list[str]:
    """``--teacher`` as a list: one checkpoint or folder, or several of ComfyUI's text-encoder files."""
    return [args.teacher] if isinstance(args.teacher, str) else list(args.teacher)


def _teacher_source(args):
    """What :func:`~babelclip.models.teacher.load_teacher` takes: the one path, or the list of files."""
    teachers = _teachers(args)
    return teachers[0] if len(teachers) == 1 else teachers


def _check_unet_teacher(args) -> None:
    """UNet recipes from the CLI read the UNet and VAE of a diffusers folder, with diffusers installed."""
    folder = _teacher_source(args) if len(_teachers(args)) == 1 else ""
    if not os.path.isdir(os.path.join(folder, "unet")) or not os.path.isdir(os.path.join(folder, "vae")):
        raise BabelClipError(
            f"Recipe {args.recipe!r} trains through the UNet: from the command line --teacher must be a diffusers "
            f"folder with unet/ and vae/ (a single-file checkpoint's UNet and VAE can only come from a program "
            f"that loads them, such as a host application's training node).")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise BabelClipError("UNet recipes from the command line need diffusers: pip install diffusers") from None


def _check_recipe_inputs(args, recipe, pairs) -> None:
    from .recipes import list_recipes

    if recipe.needs_unet:
        _check_unet_teacher(args)
    if args.clip_vision and not recipe.uses_image_embeddings:
        users = ", ".join(r.name for r in list_recipes() if r.uses_image_embeddings)
        raise BabelClipError(f"--clip-vision is used by {users} only, not by {recipe.name!r}.")
    if recipe.needs_images:
        missing = [p for p in pairs if p.image is None]
        if missing:
            raise InvalidDataError(f"Recipe {recipe.name!r} needs an image for every row; {missing[0].where} has "
                                   f"none ({len(missing)} rows without one). Add an image column or choose a text "
                                   f"recipe.")


def check_train_args(args) -> TrainPlan:
    """Every check that needs no model: output, recipe, architecture, device, paths, data file, settings."""
    from ..models.adapters import trainable_architectures
    from .data import dedup, read_pairs
    from .pipeline import check_job, check_runs
    from .recipes import training_recipe
    from .trainer import TrainConfig

    out = os.path.abspath(args.out)
    if not out.endswith(".safetensors"):
        raise BabelClipError(f"--out {args.out!r} must end in .safetensors")
    if os.path.exists(out) and not args.overwrite:
        raise BabelClipError(f"{out!r} exists; choose another --out or pass --overwrite")
    recipe = training_recipe(args.recipe)
    if args.arch not in trainable_architectures():
        raise IncompatibleAdapterError(f"--arch {args.arch!r} is not an adapter architecture BabelCLIP trains; "
                                       f"choose one of {', '.join(sorted(trainable_architectures()))}.")
    _check_device(args.device)
    if args.codeswitch < 0:
        raise BabelClipError(f"--codeswitch {args.codeswitch} is negative: give the number of code-switched copies "
                             f"per English prompt, 0 or more (0: none).")
    if not 0.0 <= args.codeswitch_rate <= 1.0:
        raise BabelClipError(f"--codeswitch-rate {args.codeswitch_rate} is not between 0 and 1: give the share of "
                             f"a copy's replaceable words to replace, from 0 to 1.")
    try:  # the pipeline's rule, the one the Train node and the web UI apply; the message names the flag
        check_runs(args.runs, args.arch)
    except InvalidDataError as e:
        raise BabelClipError(f"--runs {args.runs}: {e}") from None
    for option, path in (*(("--teacher", t) for t in _teachers(args)), ("--encoder", args.encoder),
                         ("--clip-tokenizer", args.clip_tokenizer), ("--t5-tokenizer", args.t5_tokenizer),
                         ("--clip-vision", args.clip_vision)):
        if path is not None and not os.path.exists(path):
            raise InvalidModelFileError(f"{option} {path!r} does not exist. Check the path (relative paths start in "
                                        f"the current folder).")
    layer = _layer(args.layer)
    pairs = dedup(read_pairs(args.data))
    _check_recipe_inputs(args, recipe, pairs)
    config = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         device=args.device, checkpoint_every=args.checkpoint_every)
    train_pairs, val_pairs = check_job(pairs, recipe, config, args.val_fraction,
                                       images=recipe.needs_unet or bool(args.clip_vision))
    return TrainPlan(out, recipe, config, pairs, train_pairs, val_pairs, layer)


def _images_hook(args, recipe, teacher):
    """What the recipe reads besides text, prepared from the files the arguments name (None: text only)."""
    if recipe.needs_unet:
        return lambda pairs, features: _unet_and_latents(args, pairs, features)
    if args.clip_vision:
        return lambda pairs, features: (None, _image_embeds(args, pairs, features, teacher))
    return None


def _progress_bars():
    from .pipeline import CODESWITCH_STAGE

    bars = {}

    def progress(stage: str, done: int, total: int, loss: float | None = None) -> None:
        if stage not in bars:
            bars[stage] = (_bar("training") if stage == "training" else
                           _bar("code-switching: words' neighbours", "word") if stage == CODESWITCH_STAGE else
                           _bar(f"caching {stage} features"))
        bars[stage](done, total, loss)
    return progress


@contextlib.contextmanager
def _ctrl_c_stops():
    """Ctrl-C as a stop request: the run finishes its step or cache batch, keeps a checkpoint and returns."""
    stop = {"now": False}

    def on_sigint(signum, frame):
        stop["now"] = True
        print("\nstopping after this step; run the same command again to resume", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: stop["now"]
    finally:
        signal.signal(signal.SIGINT, previous)


def train_job(args, plan: TrainPlan):
    """Load the frozen models the arguments name and describe the run for :func:`~.pipeline.run_pipeline`."""
    from ..models import load_encoder
    from ..models.teacher import load_teacher
    from .pipeline import TrainJob

    encoder = load_encoder(args.encoder)
    teacher = load_teacher(_teacher_source(args), args.clip_tokenizer, args.t5_tokenizer)
    teacher.clip_skip = args.clip_skip
    name = " + ".join(os.path.basename(p) for p in _teachers(args))
    return TrainJob(plan.pairs, encoder, teacher, name, plan.recipe, args.arch,
                    plan.config, plan.out, args.cache_dir, layer=plan.layer, val_fraction=args.val_fraction,
                    resume=not args.restart, overwrite=args.overwrite, report_files=True,
                    images=_images_hook(args, plan.recipe, teacher), steady_heap=True,
                    codeswitch=args.codeswitch, codeswitch_rate=args.codeswitch_rate, runs=args.runs)


def run_train(args, plan: TrainPlan, prepared=None):
    """The whole run through the pipeline, with progress bars and Ctrl-C; returns its PipelineResult."""
    from .pipeline import Hooks, run_pipeline

    job = train_job(args, plan)
    print(f"training data: {args.data}")
    with _ctrl_c_stops() as stop:
        return run_pipeline(job, Hooks(progress=_progress_bars(), should_stop=stop, log=print, prepared=prepared))


def stopped_message(result, plan: TrainPlan) -> str:
    from .pipeline import STOPPED_IN

    if result.stage in STOPPED_IN:
        return f"stopped {STOPPED_IN[result.stage]}; run the same command again to go on"
    return f"stopped at step {result.train.step}/{plan.config.steps}; checkpoint {plan.out}.ckpt"


def cmd_train(args) -> int:
    plan = check_train_args(args)  # before any model loads or cache file is written
    result = run_train(args, plan)
    if result.stopped:
        print(stopped_message(result, plan))
        return 130
    return 0


def cmd_eval(args) -> int:
    from ..models import load_adapter
    from .evaluation import evaluate_adapter, report_markdown, write_report
    from .features import teacher_layout_for

    encoder, teacher, pairs, layer = _load(args)
    adapter = load_adapter(args.adapter, encoder=encoder.info, family=teacher.family)
    feats = _features(args, pairs, encoder, teacher, adapter.spec.layer if args.layer == "last" else layer,
                      teacher_layout_for(adapter), encode_english=True)
    report = evaluate_adapter(adapter, feats)
    keys = [k for k in ("r@1", "r@5", "r@10", "mean_recall", "cosine", "encoder_r@1", "transfer")
            if k in report["average"]]
    flat = {lang: {k: m[k] for k in keys} for lang, m in report["languages"].items()}
    flat["average"] = {k: report["average"][k] for k in keys}
    summary = {"languages": flat, "average": flat.pop("average"), "pairs": report["pairs"],
               "adapter": os.path.basename(args.adapter)}
    atomic_write(args.json, lambda tmp: _write_json(tmp, summary), "evaluation summary")
    details = write_report(report, os.path.splitext(args.json)[0] + "-details")
    print(report_markdown(report))
    print(f"wrote {args.json} (all metrics: {details['json']}; table: {details['markdown']}; chart: {details['chart']})")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _recipe_and_arch(p: argparse.ArgumentParser, *, recipe: str, arch: str, text_only: bool = False) -> None:
    """--recipe and --arch, their choices read from the registries (``text_only``: recipes without images)."""
    from ..models.adapters import ARCHITECTURES, trainable_architectures
    from .recipes import list_recipes

    recipes = [r for r in list_recipes() if not (text_only and (r.needs_images or r.needs_unet))]
    p.add_argument("--recipe", default=recipe, choices=[r.name for r in recipes],
                   help="what is trained with which loss (" + "; ".join(f"{r.name}: {r.needs}" for r in recipes) + ")")
    p.add_argument("--arch", default=arch, choices=trainable_architectures(),
                   help="adapter architecture (" + "; ".join(
                       f"{name}: {ARCHITECTURES[name].approach.split(':')[0]}" for name in trainable_architectures())
                   + ")")


def _config_help(name: str) -> str:
    """The help of a TrainConfig field, so the CLI and the trainer describe a setting the same way."""
    from .trainer import TrainConfig

    return next(f.metadata["help"] for f in dataclasses.fields(TrainConfig) if f.name == name)


def _add_demo(sub) -> None:
    from .demo import DEMO_DEFAULTS, DESCRIPTION
    from .pipeline import RUNS_HELP

    p = sub.add_parser("demo", help="train and evaluate an adapter with tiny built-in models (no download, a "
                                    "few minutes)", description=DESCRIPTION, formatter_class=_HelpFormatter)
    p.add_argument("--workdir", help="where to write models, cache and adapter; a second run in the same folder "
                                     "reuses the models and cache (default: a new temporary folder)")
    p.add_argument("--steps", type=int, default=DEMO_DEFAULTS["steps"], help=_config_help("steps"))
    p.add_argument("--lr", type=float, default=DEMO_DEFAULTS["lr"], help=_config_help("lr"))
    p.add_argument("--batch-size", type=int, default=DEMO_DEFAULTS["batch_size"], help=_config_help("batch_size"))
    _recipe_and_arch(p, recipe=DEMO_DEFAULTS["recipe"], arch=DEMO_DEFAULTS["arch"], text_only=True)
    p.add_argument("--runs", type=int, default=DEMO_DEFAULTS["runs"], help=_shared_help(RUNS_HELP))
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch: the tiny models run fastest on one, and several threads slow down "
                        "badly on a busy machine")
    p.set_defaults(func=cmd_demo)


def _shared_help(text: str) -> str:
    """An option's help text shared with the Train node and the web UI (training.pipeline's ``*_HELP``), escaped
    for argparse (which formats help with %); the formatter appends the default."""
    return text.replace("%", "%%")


def _add_train(sub) -> None:
    from .codeswitch import DEFAULT_COPIES, DEFAULT_RATE
    from .pipeline import CODESWITCH_HELP, RUNS_HELP
    from .recipes import DEFAULT_ARCH, DEFAULT_RECIPE
    from .trainer import DEFAULT_STEPS, TrainConfig

    p = sub.add_parser("train", help="distill an adapter against a checkpoint's CLIP",
                       description="Distill an adapter: cache the frozen features, train, evaluate on held-out "
                                   "pairs and save the adapter with its metadata and evaluation.",
                       formatter_class=_HelpFormatter)
    _common(p)
    _recipe_and_arch(p, recipe=DEFAULT_RECIPE, arch=DEFAULT_ARCH)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=_config_help("steps"))
    p.add_argument("--lr", type=float, default=TrainConfig.lr,
                   help=_config_help("lr") + "; linear warmup, then cosine decay")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the adapter's initialisation, the batch order and the held-out split")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of English prompts held out for the evaluation, with all their translations")
    p.add_argument("--codeswitch", type=int, default=DEFAULT_COPIES, help=_shared_help(CODESWITCH_HELP))
    p.add_argument("--codeswitch-rate", type=float, default=DEFAULT_RATE,
                   help="share of a code-switched copy's replaceable words that are replaced")
    p.add_argument("--runs", type=int, default=0, help=_shared_help(RUNS_HELP))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help=_config_help("checkpoint_every") + " (<out>.ckpt, removed when the run ends)")
    p.add_argument("--resolution", type=int, default=512, help="image size for UNet recipes")
    p.add_argument("--clip-vision", help="mclip-trikd: a transformers CLIP vision model folder; adds the image<->text "
                                          "loss for rows with an image")
    p.add_argument("--out", required=True, help="adapter file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint left by an interrupted run")
    p.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m babelclip.training",
                                     description="Distill and evaluate BabelCLIP language adapters.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)

    p = sub.add_parser("cache", help="compute and cache the frozen teacher and encoder features",
                       formatter_class=_HelpFormatter)
    _common(p)
    p.add_argument("--teacher-layout", choices=["tokens", "mean"], default="tokens",
                   help="tokens: also the teacher's 77 tokens (every recipe and adapter); mean: only their mean and the "
                        "pooled vector, 40x smaller (altclip-kd with linear/mlp/bottleneck, mclip-trikd, mulan)")
    p.set_defaults(func=cmd_cache)

    _add_train(sub)

    p = sub.add_parser("eval", help="evaluate an adapter on parallel pairs (XTD10/Multi30K style)",
                       description="Evaluate an adapter on parallel pairs: per language, R@1/5/10 (each the mean of "
                                   "both retrieval directions), mean recall, cosine to the teacher.",
                       formatter_class=_HelpFormatter)
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
