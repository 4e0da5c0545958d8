"""Training nodes: BabelCLIP Train Adapter, BabelCLIP Evaluate Adapter, BabelCLIP Save Adapter."""

from __future__ import annotations

import io
import os

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..errors import InvalidDataError
from ..models.adapters import trainable_architectures
from ..training.data import dedup, pairs_from_text, read_pairs
from ..training.evaluation import evaluate_adapter, report_markdown
from ..training.features import prepare_text_features, teacher_layout_for
from ..training.codeswitch import DEFAULT_COPIES
from ..training.pipeline import (CODESWITCH_HELP, RUNS_HELP, Hooks, TrainJob, check_runs, host_checkpoint_path,
                                 run_pipeline, unique_adapter_path)
from ..training.recipes import (DEFAULT_ARCH, DEFAULT_RECIPE, list_recipes, recipe_help, text_recipe_names,
                                training_recipe)
from ..training.trainer import DEFAULT_STEPS, TrainConfig
from . import comfy_runtime as runtime, loaded_models

DATA_NONE = "(use the text box)"
MAX_CODESWITCH = 64  # the Train node's most code-switched copies per English prompt
MAX_RUNS = 16  # the Train node's most runs to average (each costs the whole training time again)


class Cancel:
    """ComfyUI's cancel button as a flag the core polls between steps.

    ComfyUI's progress hook raises ``InterruptProcessingException`` (and clears its interrupt flag) when the user
    cancels. Raised inside the core's progress callback it would leave the training loop mid-way, before the
    core could write its checkpoint. So the exception is caught here and remembered; ``should_stop`` then tells
    the core to finish the step, save and return, and :meth:`raise_if_cancelled` ends the node the way ComfyUI
    expects an interrupted node to end.
    """

    def __init__(self):
        self.requested = False

    def progress_bar(self, total: int):
        """A ``(done, total, *ignored)`` callback that moves a ComfyUI progress bar and notices a cancel."""
        bar = comfy.utils.ProgressBar(total)

        def update(done: int, total: int, *_) -> None:
            if self.requested:
                return
            try:
                bar.update_absolute(done, total)
            except mm.InterruptProcessingException:
                self.requested = True
        return update

    def should_stop(self) -> bool:
        return self.requested or mm.processing_interrupted()

    def raise_if_cancelled(self) -> None:
        if self.requested:
            raise mm.InterruptProcessingException()
        mm.throw_exception_if_processing_interrupted()


def _stage_bars(cancel: Cancel):
    """A ``(stage, done, total, *ignored)`` callback with one ComfyUI progress bar per stage (encoder, teacher,
    held-out ..., training), each made on the stage's first report."""
    bars: dict = {}

    def progress(stage: str, done: int, total: int, *_) -> None:
        if stage not in bars:
            bars[stage] = cancel.progress_bar(total)
        bars[stage](done, total)
    return progress


def _data_files() -> list[str]:
    base = folder_paths.get_input_directory()
    from ..models.paths import list_files

    return [DATA_NONE, *list_files([base], (".tsv", ".csv", ".jsonl", ".txt"))]


def _pairs(data_file: str, text: str):
    if data_file and data_file != DATA_NONE:
        from ..errors import UnsafePathError
        from ..models.paths import is_inside, resolve_inside

        base = folder_paths.get_input_directory()
        pairs = read_pairs(resolve_inside([base], data_file, "data file"))
        for p in pairs:  # a data file in ComfyUI's input folder may only use images from that folder
            if p.image is not None and not is_inside(p.image, base):
                raise UnsafePathError(f"{p.where}: image {p.image!r} is outside ComfyUI's input folder {base!r}. Copy "
                                      f"the image into the input folder and give its path relative to the data file.")
        return dedup(pairs)
    return dedup(pairs_from_text(text, "the prompts box"))


def _cache_dir() -> str:
    return os.path.join(runtime.adapter_dirs()[0], ".cache")


def _unique_path(name: str) -> str:
    return unique_adapter_path(runtime.adapter_dirs()[0], name)


def _plot(values: list[float], title: str) -> torch.Tensor:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot(range(1, len(values) + 1), values)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if min(values) > 0 else "linear")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)


def _chart_image(report: dict) -> torch.Tensor:
    import tempfile

    from PIL import Image

    from ..training.evaluation import plot_recall

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "chart.png")
        plot_recall(report, path)
        img = Image.open(path).convert("RGB")
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)


class TrainAdapter:
    DESCRIPTION = ("Distills a language adapter against the CLIP of the loaded checkpoint (text recipes), or "
                   "through its UNet (pea, mulan, iap: connect MODEL, VAE and images). Cancel keeps a checkpoint; "
                   "queueing the same settings again resumes it.")
    CATEGORY = "BabelCLIP/training"
    FUNCTION = "train"
    RETURN_TYPES = ("BABELCLIP_ADAPTER", "IMAGE")
    RETURN_NAMES = ("adapter", "loss_curve")
    OUTPUT_TOOLTIPS = ("The trained adapter (also saved in models/babelclip).", "The training loss per step.")
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The checkpoint's CLIP: the frozen teacher (CLIPSetLastLayer and LoRAs "
                                             "are honoured)."}),
                "encoder": ("BABELCLIP_ENCODER", {"tooltip": "The frozen multilingual encoder."}),
                "recipe": ([r.name for r in list_recipes()], {"default": DEFAULT_RECIPE, "tooltip":
                           "What the adapter is trained with, and what it needs — " + recipe_help() + ". "
                           "The denoiser recipes train through the UNet: connect model, vae and images."}),
                "arch": (sorted(trainable_architectures()), {"default": DEFAULT_ARCH, "tooltip": "Adapter architecture "
                         f"(default {DEFAULT_ARCH}: it keeps the most of the encoder's cross-lingual retrieval)."}),
                "data_file": (_data_files(), {"tooltip": "A TSV/CSV/JSONL (en, text[, lang][, image]) or .txt file in "
                                                         "ComfyUI's input folder, or use the text box."}),
                "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                                       "One 'english<TAB>translation[<TAB>lang]' or one English prompt per line "
                                       "(used when data_file is the text box)."}),
                "steps": ("INT", {"default": DEFAULT_STEPS, "min": 1, "max": 1_000_000, "tooltip": "Optimizer steps."}),
                "learning_rate": ("FLOAT", {"default": TrainConfig.lr, "min": 1e-7, "max": 1.0, "step": 1e-5,
                                            "tooltip": "Peak AdamW learning rate (warmup, then cosine)."}),
                "batch_size": ("INT", {"default": TrainConfig.batch_size, "min": 1, "max": 4096,
                                       "tooltip": "Examples per step."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1, "tooltip": "Seed of init and order."}),
                "adapter_name": ("STRING", {"default": "my-adapter", "tooltip":
                                            "File name in models/babelclip (a number is added, never overwritten)."}),
            },
            "optional": {
                "model": ("MODEL", {"tooltip": "The frozen UNet, for pea, mulan and iap."}),
                "vae": ("VAE", {"tooltip": "Encodes the images for pea, mulan and iap."}),
                "images": ("IMAGE", {"tooltip": "One image per data row (same order), for pea, mulan and iap, "
                                                "and for mclip-trikd's image<->text loss."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "mclip-trikd: the vision tower of the same CLIP; with "
                                                           "images it adds the image<->text loss."}),
                # last, so that workflows saved before it keep their positional widget values (it takes its default)
                "codeswitch": ("INT", {"default": DEFAULT_COPIES, "min": 0, "max": MAX_CODESWITCH,
                                       "tooltip": CODESWITCH_HELP}),
                # after codeswitch, for the same reason: workflows saved before it take its default (0: the
                # architecture's, training.pipeline.default_runs)
                "runs": ("INT", {"default": 0, "min": 0, "max": MAX_RUNS, "tooltip": RUNS_HELP}),
            },
        }

    def train(self, clip, encoder, recipe, arch, data_file, prompts, steps, learning_rate, batch_size, seed,
              adapter_name, model=None, vae=None, images=None, clip_vision=None, codeswitch=DEFAULT_COPIES, runs=0):
        check_runs(int(runs), arch)  # the pipeline's own check, before any data is read or model loaded
        pairs = _pairs(data_file, prompts)
        recipe_obj = training_recipe(recipe)
        if recipe_obj.needs_unet and (model is None or vae is None or images is None):
            text_only = " / ".join(text_recipe_names())
            raise InvalidDataError(f"Recipe {recipe!r} trains through the UNet: connect model, vae and images "
                                   f"(one image per row), or choose {text_only}.")
        teacher = loaded_models.ComfyClipTeacher(clip)
        device = mm.get_torch_device()
        config = TrainConfig(steps=steps, lr=learning_rate, batch_size=batch_size, seed=seed,
                             device="cpu" if device.type == "cpu" else str(device))
        runtime.load_encoder_for_features(encoder)
        path = _unique_path(adapter_name)
        cancel = Cancel()
        job = TrainJob(pairs, encoder.encoder, teacher, "ComfyUI CLIP", recipe_obj, arch, config, path, _cache_dir(),
                       images=_images_hook(recipe_obj, pairs, teacher, model, vae, images, clip_vision),
                       codeswitch=int(codeswitch), runs=int(runs))
        job.checkpoint = host_checkpoint_path(job)  # named by the job's own settings
        out = run_pipeline(job, Hooks(progress=_stage_bars(cancel), should_stop=cancel.should_stop))
        if out.stopped:  # cached features and the last finished step's checkpoint are kept for a rerun
            cancel.raise_if_cancelled()
            raise mm.InterruptProcessingException()
        name = os.path.relpath(path, runtime.adapter_dirs()[0]).replace(os.sep, "/")
        curve = _plot(out.train.losses, f"{recipe} / {arch}: {os.path.basename(path)}")
        return {"ui": {"text": [f"saved {name}"]}, "result": (runtime.AdapterHandle(name), curve)}


def _images_hook(recipe, pairs, teacher, model, vae, images, clip_vision):
    """The rows' images as the recipe reads them: VAE latents and the loaded UNet, or CLIP image embeddings."""
    use_vision = recipe.uses_image_embeddings and clip_vision is not None and images is not None
    if not (recipe.needs_unet or use_vision):
        return None
    if images.shape[0] != len(pairs):
        raise InvalidDataError(f"{images.shape[0]} images for {len(pairs)} data rows: give one per row.")
    index = {id(p): i for i, p in enumerate(pairs)}

    def prepare(train_pairs, data):
        rows = [index[id(p)] for p in train_pairs]
        if not use_vision:
            latents = loaded_models.encode_images(vae, model, images)[rows]
            return loaded_models.ComfyUNet(model, teacher.family), _WithImages(data, latents=latents)
        embeds = clip_vision.encode_image(images).image_embeds.float().cpu().clone()
        if embeds.shape[-1] != teacher.family.pooled_dim:
            raise InvalidDataError(
                f"The CLIP vision model embeds images in {embeds.shape[-1]} dimensions, the checkpoint's pooled "
                f"text in {teacher.family.pooled_dim}: load the vision tower of the same CLIP.")
        return None, _WithImages(data, embeds=embeds[rows])
    return prepare


class _WithImages:
    """Training rows plus per-row image latents (UNet recipes) or CLIP image embeddings (mclip-trikd)."""

    def __init__(self, data, latents=None, embeds=None):
        self.data, self.latents, self.embeds, self.family, self.pairs = data, latents, embeds, data.family, data.pairs

    def __len__(self):
        return len(self.data)

    def batch(self, indices):
        b = self.data.batch(indices)
        if self.latents is not None:
            b.latents = self.latents[list(indices)]
        if self.embeds is not None:
            b.image_embeds = self.embeds[list(indices)]
        return b


class EvaluateAdapter:
    DESCRIPTION = ("Evaluates an adapter on parallel pairs: per-language R@1/5/10 in both directions, mean recall, "
                   "cosine to the teacher's English encoding, and beside them the encoder's own R@1 on the same "
                   "pairs (the ceiling) and the transfer (R@1 / ceiling): how much of it the adapter keeps.")
    CATEGORY = "BabelCLIP/training"
    FUNCTION = "evaluate"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "chart")
    OUTPUT_TOOLTIPS = ("Markdown table of the metrics, with the encoder's ceiling and the transfer.",
                       "Bar chart of recall per language, the encoder's R@1 (ceiling) marked.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The checkpoint's CLIP (the teacher the adapter is compared with)."}),
            "encoder": ("BABELCLIP_ENCODER", {"tooltip": "The encoder the adapter was trained on."}),
            "adapter": ("BABELCLIP_ADAPTER", {"tooltip": "The adapter to evaluate."}),
            "data_file": (_data_files(), {"tooltip": "Held-out parallel pairs (en, text, lang) in the input folder."}),
            "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                                   "Or held-out pairs typed here: 'english<TAB>translation<TAB>lang' per line."}),
        }}

    def evaluate(self, clip, encoder, adapter, data_file, prompts):
        pairs = _pairs(data_file, prompts)
        teacher = loaded_models.ComfyClipTeacher(clip)
        model = runtime.ready_to_encode(encoder, adapter, teacher.family)
        cancel = Cancel()
        feats = prepare_text_features(pairs, encoder.encoder, teacher, _cache_dir(), layer=adapter.spec.layer,
                                      teacher_layout=teacher_layout_for(model), progress=_stage_bars(cancel),
                                      should_stop=cancel.should_stop, encode_english=True)
        cancel.raise_if_cancelled()  # what was cached so far stays cached
        report = evaluate_adapter(model, feats)  # with the encoder's own retrieval (the ceiling) and the transfer
        return (report_markdown(report), _chart_image(report))


class SaveAdapter:
    DESCRIPTION = "Saves a copy of an adapter under a new name in models/babelclip (never overwriting)."
    CATEGORY = "BabelCLIP/training"
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter": ("BABELCLIP_ADAPTER", {"tooltip": "The adapter to save."}),
            "filename": ("STRING", {"default": "babelclip-adapter", "tooltip":
                                    "Name in models/babelclip; a number is added if it exists."}),
        }}

    def save(self, adapter, filename):
        import shutil

        from ..models.files import atomic_write

        from ..models.card import evaluation_beside, write_card

        path = _unique_path(filename)
        atomic_write(path, lambda tmp: shutil.copyfile(adapter.path, tmp), "adapter")
        write_card(path, evaluation=evaluation_beside(adapter.path))  # the copy's own card, the original's table
        return {"ui": {"text": [f"saved {os.path.basename(path)}"]}}
