"""Training from the web UI: the BabelCLIP tab and ``POST /babelclip/v1/train`` run the shared training pipeline
(:mod:`babelclip.training.pipeline`) against the loaded checkpoint's own text encoder.

The teacher is the core's :class:`~babelclip.models.teacher.CheckpointTeacher` built from the loaded checkpoint's
file (its text-encoder tensors only, memory-mapped) with the web UI's own CLIP tokenizer and its clip-skip setting,
so an adapter trained here is the one the command line or ComfyUI would train against the same file. Before
training, that teacher and the web UI's own ``get_learned_conditioning`` encode one probe prompt and must agree
(:func:`teacher_agreement`): a loaded model that differs from its file is refused rather than distilled wrongly.

A run holds the web UI's queue lock (generations wait, as they do for the web UI's own training) and reports
through ``shared.state``: ``/sdapi/v1/progress`` shows it, and the web UI's Interrupt (button or
``/sdapi/v1/interrupt``) stops it at the next step with a checkpoint; the same settings started again resume
there. The adapter lands in ``models/babelclip`` under a new name (never overwriting) with its card and
``<name>.eval.{json,md,png}``, and is in the BabelCLIP section's list at once (Refresh) and usable by name in the API.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import torch

from ..errors import BabelClipError, InvalidDataError, UnsupportedModelError
from ..models import load_encoder
from ..models.adapters import trainable_architectures
from ..models.paths import resolve_inside
from ..models.teacher import load_teacher
from ..training.codeswitch import DEFAULT_COPIES
from ..training.data import dedup, pairs_from_text, read_pairs
from ..training.evaluation import report_markdown
from ..training.pipeline import (CODESWITCH_HELP, RUNS_HELP, STOPPED_IN, Hooks, TrainJob, check_runs,
                                 host_checkpoint_path, run_pipeline, unique_adapter_path)
from ..training.recipes import DEFAULT_ARCH, DEFAULT_RECIPE, text_recipe_names, training_recipe
from ..training.trainer import DEFAULT_STEPS, TrainConfig
from . import runtime

log = logging.getLogger("babelclip.webui")

#: the recipes the web UI trains: those that read text only (the denoiser recipes need images and the UNet loop)
TEXT_RECIPES = tuple(text_recipe_names())
PROBE = "a photograph of an astronaut riding a horse on the moon"
#: the least per-token cosine between the teacher and the web UI's own conditioning of :data:`PROBE`
MIN_AGREEMENT = 0.99


@dataclasses.dataclass
class TrainRequest:
    """One training run as the tab and the API give it (field names are the API's JSON keys)."""

    encoder: str = ""  # a folder in models/text_encoders
    prompts: str = ""  # 'english<TAB>translation[<TAB>lang]' or one English prompt per line
    data_file: str | None = None  # a TSV/CSV/JSONL/.txt file (the tab's upload); the API sends prompts instead
    recipe: str = DEFAULT_RECIPE
    arch: str = DEFAULT_ARCH
    steps: int = DEFAULT_STEPS
    learning_rate: float = TrainConfig.lr  # the trainer's defaults (dataclass class attributes)
    batch_size: int = TrainConfig.batch_size
    seed: int = 0
    adapter_name: str = "my-adapter"
    codeswitch: int = DEFAULT_COPIES  # code-switched copies per English prompt (training.codeswitch); 0: none
    runs: int = 0  # runs (seeds seed .. seed+runs-1) whose weights are averaged; above 1 for AVERAGEABLE_ARCHS only;
    #               0: the architecture's default (training.pipeline.default_runs)

    def pairs(self):
        if self.data_file:
            return dedup(read_pairs(self.data_file))
        if not self.prompts.strip():
            raise InvalidDataError("No training prompts: type 'english<TAB>translation<TAB>lang' (or English) lines "
                                   "into the prompts box, or upload a data file.")
        return dedup(pairs_from_text(self.prompts, "the prompts box"))

    def check(self) -> None:
        if self.recipe not in TEXT_RECIPES:
            raise InvalidDataError(f"Recipe {self.recipe!r} is not one the web UI trains: choose one of "
                                   f"{', '.join(TEXT_RECIPES)} (the denoiser recipes train from ComfyUI's node or "
                                   f"the command line).")
        if self.arch not in trainable_architectures():
            raise InvalidDataError(f"Architecture {self.arch!r} is unknown: choose one of "
                                   f"{', '.join(sorted(trainable_architectures()))}.")
        if not self.encoder:
            raise InvalidDataError("No encoder chosen: pick a folder of models/text_encoders.")
        if self.codeswitch < 0:
            raise InvalidDataError(f"codeswitch {self.codeswitch} is negative: give the number of code-switched "
                                   f"copies per English prompt, 0 or more (0: none).")
        check_runs(self.runs, self.arch)  # the pipeline's rule and words ('runs ...', the API's field name)


# ------------------------------------------------------------------------------------------------ the teacher


def clip_tokenizer(model):
    """The web UI's own CLIP tokenizer (transformers) of the loaded checkpoint, where each web UI keeps it."""
    from transformers import PreTrainedTokenizerBase

    paths = (("forge_objects", "clip", "tokenizer", "clip_l"),  # Forge: SD1.x, SDXL
             ("forge_objects", "clip", "tokenizer", "clip_h"),  # Forge: SD2.x
             ("cond_stage_model", "wrapped", "tokenizer"),  # Automatic1111, SD1.x
             ("conditioner", "embedders", 0, "tokenizer"))  # Automatic1111, SDXL (CLIP-L's)
    for path in paths:
        obj = model
        for part in path:
            try:
                obj = obj[part] if isinstance(part, int) else getattr(obj, part)
            except (AttributeError, IndexError, KeyError, TypeError):
                obj = None
                break
        if isinstance(obj, PreTrainedTokenizerBase):
            return obj
    try:  # Automatic1111's SD2.x tokenizes with open_clip: CLIP-L's BPE (the same vocabulary) from its HF cache
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14", local_files_only=True)
    except OSError:
        raise UnsupportedModelError(
            f"No CLIP tokenizer found in the loaded {type(model).__name__}: BabelCLIP's web UI training needs "
            f"Forge, or Automatic1111 with openai/clip-vit-large-patch14's tokenizer in the Hugging Face cache "
            f"(it downloads it on first start).") from None


def checkpoint_teacher(model):
    """The loaded checkpoint's text encoder(s), read from its file, as the core's teacher."""
    family = runtime.model_family(model)
    info = getattr(model, "sd_checkpoint_info", None)
    filename = getattr(info, "filename", None)
    if not filename or not os.path.isfile(filename):
        raise UnsupportedModelError("The loaded checkpoint has no file the web UI names (sd_checkpoint_info); "
                                    "load a .safetensors checkpoint from models/Stable-diffusion.")
    teacher = load_teacher(filename, clip_tokenizer(model))
    if teacher.family is not family:
        raise UnsupportedModelError(f"{os.path.basename(filename)} reads as {teacher.family.label} but the web UI "
                                    f"runs it as {family.label}; BabelCLIP cannot tell which to distill.")
    from modules import shared

    skip = int((getattr(shared.opts, "data", {}) or {}).get("CLIP_stop_at_last_layers", 1) or 1)
    if skip > 1 and family.name == "sd1":  # the web UI's "Clip skip" applies to SD1.x text encoding
        teacher.clip_skip = -skip
    if hasattr(model, "set_clip_skip"):  # Forge applies the setting when a generation starts: apply it now
        model.set_clip_skip(skip)
    return teacher


@torch.no_grad()
def teacher_agreement(model, teacher) -> float:
    """The least cosine between ``teacher`` and the web UI's own conditioning of :data:`PROBE`, per token and per
    tower (so that a wide tower cannot hide a narrow one), and of the pooled vector where the web UI returns it."""
    family = teacher.family
    ours = teacher.encode([PROBE])
    theirs = type(model).get_learned_conditioning(model, [PROBE])  # the class's method: never BabelCLIP's hook
    cond = theirs["crossattn"] if isinstance(theirs, dict) else theirs
    cond = cond[:, : family.context_tokens].float().cpu()
    cosines = [torch.nn.functional.cosine_similarity(a, b, dim=-1).flatten()
               for a, b in zip(ours.cond.split(family.parts, -1), cond.split(family.parts, -1))]
    if isinstance(theirs, dict):  # SDXL: the pooled part of the vector
        pooled = theirs["vector"][:, : family.pooled_dim].float().cpu()
        cosines.append(torch.nn.functional.cosine_similarity(ours.pooled, pooled, dim=-1))
    return float(torch.cat(cosines).min())


# ------------------------------------------------------------------------------------------------- a run


def _loaded_model():
    """The checkpoint the web UI generates with, loaded now if it is not yet (Forge loads on the first generation;
    Automatic1111's ``shared.sd_model`` loads on access)."""
    from modules import sd_models, shared

    reload = getattr(sd_models, "forge_model_reload", None)
    if reload is not None:
        model, _ = reload()
        return model
    return shared.sd_model


class Progress:
    """The pipeline's stages as ``shared.state`` (the web UI's progress API) and as one line for the tab."""

    def __init__(self, state):
        self.state, self.line, self.first_step = state, "starting", None

    def __call__(self, stage: str, done: int, total: int, loss=None) -> None:
        if stage == "training":
            self.first_step = done if self.first_step is None else self.first_step
            self.state.sampling_step, self.state.sampling_steps = done, total
        self.line = f"{stage} {done}/{total}" + (f", loss {loss:.4g}" if loss is not None else "")
        self.state.textinfo = f"BabelCLIP: {self.line}"


def train(request: TrainRequest, on_log=None) -> dict:
    """Run ``request`` against the loaded checkpoint under the web UI's queue lock; returns what the API answers."""
    from modules import call_queue, devices, shared

    request.check()
    pairs = request.pairs()
    recipe = training_recipe(request.recipe)
    enc_path = resolve_inside([runtime.encoder_dir()], request.encoder, "encoder folder")
    with call_queue.queue_lock:
        shared.state.begin(job="babelclip-train")
        progress = Progress(shared.state)
        try:
            shared.state.job_count = 1
            model = _loaded_model()
            teacher = checkpoint_teacher(model)
            agreement = teacher_agreement(model, teacher)
            (on_log or log.info)(f"teacher: the text encoder of {os.path.basename(teacher.source)} "
                                 f"({teacher.family.label}, clip skip {teacher.clip_skip or 'off'}); least token "
                                 f"cosine to the web UI's own conditioning {agreement:.5f}")
            if agreement < MIN_AGREEMENT:
                raise UnsupportedModelError(
                    f"The text encoder in {os.path.basename(teacher.source)} gives different conditioning from the "
                    f"web UI's loaded model (least token cosine {agreement:.3f} < {MIN_AGREEMENT}): an adapter "
                    f"distilled from the file would not imitate what the web UI generates with. A LoRA left applied "
                    f"by the last generation or an in-memory merge does that: generate once without LoRAs (or "
                    f"reload the checkpoint) and train again; for SD2.x / SDXL also set Clip skip to 1.")
            encoder = runtime._kept("encoder", (enc_path, False), lambda: load_encoder(enc_path))
            out = unique_adapter_path(runtime.adapter_dir(), request.adapter_name)
            cache = os.path.join(runtime.adapter_dir(), ".cache")
            device = devices.device if isinstance(devices.device, torch.device) else torch.device(devices.device)
            config = TrainConfig(steps=request.steps, lr=request.learning_rate, batch_size=request.batch_size,
                                 seed=request.seed, device="cpu" if device.type == "cpu" else str(device))
            job = TrainJob(pairs, encoder, teacher, os.path.basename(teacher.source), recipe, request.arch, config,
                           out, cache, report_files=True, codeswitch=request.codeswitch, runs=request.runs)
            job.checkpoint = host_checkpoint_path(job)  # named by the job's own settings
            result = run_pipeline(job, Hooks(progress=progress, should_stop=lambda: bool(shared.state.interrupted),
                                             log=on_log or log.info))
        finally:
            shared.state.end()
            # as the web UI's own calls leave it: no interrupt pending, no stale progress
            shared.state.interrupted, shared.state.textinfo = False, None
            shared.state.sampling_step = shared.state.sampling_steps = 0
    name = os.path.relpath(out, runtime.adapter_dir()).replace(os.sep, "/")
    answer = {"adapter": None if result.stopped else name, "stopped": result.stopped, "stage": result.stage,
              "step": result.train.step if result.train else 0, "steps": request.steps,
              "resumed_from": (progress.first_step - 1) if progress.first_step else 0,
              "teacher": {"source": os.path.basename(teacher.source), "family": teacher.family.name,
                          "fingerprint": teacher.fingerprint, "agreement": round(agreement, 5),
                          "clip_skip": teacher.clip_skip}}
    if result.report:
        answer["report"] = report_markdown(result.report)
        answer["metrics"] = result.report["average"]
        answer["chart"] = name[: -len(".safetensors")] + ".eval.png"  # in models/babelclip
    if result.stopped:
        answer["message"] = stopped_message(result.stage, answer["step"], request.steps)
    return answer


def stopped_message(stage: str, step: int, steps: int) -> str:
    """What the API and the tab say about a run interrupted in ``stage`` (a PipelineResult's)."""
    if stage == "training":
        return f"interrupted at step {step} of {steps}; start the same settings again to resume there"
    return f"interrupted {STOPPED_IN.get(stage, STOPPED_IN['features'])}; start the same settings again to go on"


# ------------------------------------------------------------------------------------------------ the tab


def _train_in_background(request: TrainRequest):
    """Run :func:`train` in a thread; yield ``(line, answer or None, error or None)`` twice a second (gradio streams it)."""
    from modules import shared

    box: dict = {}
    lines: list[str] = []

    def work():
        try:
            box["answer"] = train(request, on_log=lambda line: (lines.append(line), log.info(line)))
        except BabelClipError as e:
            box["error"] = e
        except Exception as e:  # shown in the tab; the web UI's console has the traceback
            log.exception("BabelCLIP training failed")
            box["error"] = e

    thread = threading.Thread(target=work, name="babelclip-train", daemon=True)
    thread.start()
    while thread.is_alive():
        time.sleep(0.5)
        yield (shared.state.textinfo or "waiting for the queue") + "\n" + "\n".join(lines[-6:]), None, None
    yield "\n".join(lines[-6:]), box.get("answer"), box.get("error")


def _number_or(value, default: int) -> int:
    """A number box's value as an int; an empty box (None or "") takes ``default`` (0 stays 0)."""
    return default if value is None or value == "" else int(value)


def tab_request(encoder, data_file, prompts, recipe, arch, steps, lr, batch, seed, name, codeswitch=None,
                runs=None):
    """The tab's values as a :class:`TrainRequest`: an empty box takes the default (0 copies stays 0: none; 0 runs
    is the architecture's default)."""
    defaults = TrainRequest()
    return TrainRequest(encoder or "", prompts or "", getattr(data_file, "name", data_file) or None, recipe,
                        arch, int(steps or defaults.steps), float(lr or defaults.learning_rate),
                        int(batch or defaults.batch_size), int(seed or 0), name or defaults.adapter_name,
                        _number_or(codeswitch, defaults.codeswitch), _number_or(runs, defaults.runs))


def ui_tab():
    """The BabelCLIP tab (``script_callbacks.on_ui_tabs``)."""
    import gradio as gr

    from modules import shared

    def run(encoder, data_file, prompts, recipe, arch, steps, lr, batch, seed, name, codeswitch, runs):
        request = tab_request(encoder, data_file, prompts, recipe, arch, steps, lr, batch, seed, name, codeswitch,
                              runs)
        for text, answer, error in _train_in_background(request):
            if error is not None:
                raise gr.Error(f"{type(error).__name__}: {error}")
            if answer is None:
                yield text, gr.update(), gr.update()
            else:
                done = answer.get("message") or f"saved models/babelclip/{answer['adapter']}: pick it in the BabelCLIP " \
                                                f"section of txt2img / img2img (Refresh)."
                chart = answer.get("chart")
                yield f"{text}\n{done}", answer.get("report", ""), chart and os.path.join(runtime.adapter_dir(), chart)

    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    encoder = gr.Dropdown(runtime.list_encoders(), label="Encoder (models/text_encoders)", value=None,
                                          info="The frozen multilingual encoder the adapter reads.")
                    refresh = gr.Button("Refresh", size="sm")
                data_file = gr.File(label="Data file: TSV / CSV / JSONL (en, text[, lang]) or .txt (English)",
                                    file_types=[".tsv", ".csv", ".jsonl", ".txt"],
                                    type="filepath" if int(gr.__version__.split(".")[0]) >= 4 else "file")
                prompts = gr.Textbox(lines=6, label="Or prompts, one per line",
                                     placeholder="a cat on a windowsill<TAB>一只猫坐在窗台上<TAB>zh")
                with gr.Row():
                    recipe = gr.Dropdown(list(TEXT_RECIPES), value=DEFAULT_RECIPE, label="Recipe",
                                         info="Text recipes; the denoiser recipes train in ComfyUI or the CLI.")
                    arch = gr.Dropdown(sorted(trainable_architectures()), value=DEFAULT_ARCH, label="Architecture")
                defaults = TrainRequest()  # the API's defaults are the tab's
                with gr.Row():
                    steps = gr.Number(defaults.steps, label="Steps", precision=0, minimum=1)
                    lr = gr.Number(defaults.learning_rate, label="Learning rate", minimum=1e-7)
                    batch = gr.Number(defaults.batch_size, label="Batch size", precision=0, minimum=1)
                    seed = gr.Number(defaults.seed, label="Seed", precision=0, minimum=0)
                with gr.Row():
                    codeswitch = gr.Number(defaults.codeswitch, label="Code-switched copies", precision=0, minimum=0,
                                           info=CODESWITCH_HELP)
                    runs = gr.Number(defaults.runs, label="Runs to average", precision=0, minimum=0, info=RUNS_HELP)
                name = gr.Textbox(defaults.adapter_name, label="Adapter name (models/babelclip; never overwritten)")
                with gr.Row():
                    start = gr.Button("Train", variant="primary")
                    stop = gr.Button("Interrupt (resumable)")
            with gr.Column():
                status = gr.Textbox(label="Progress", lines=8, interactive=False)
                report = gr.Markdown()
                chart = gr.Image(label="Held-out evaluation", type="filepath", interactive=False)
        refresh.click(lambda: gr.update(choices=runtime.list_encoders()), outputs=[encoder])
        start.click(run, inputs=[encoder, data_file, prompts, recipe, arch, steps, lr, batch, seed, name, codeswitch,
                                 runs], outputs=[status, report, chart], api_name="babelclip_train")
        stop.click(lambda: shared.state.interrupt(), queue=False)
    return [(tab, "BabelCLIP", "babelclip")]


# ------------------------------------------------------------------------------------------------ the API


def add_api_routes(_demo, app) -> None:
    """``POST /babelclip/v1/train`` (a :class:`TrainRequest` as JSON) and ``GET /babelclip/v1/models``
    (``script_callbacks.on_app_started``), when the web UI serves its API (``--api``), behind its ``--api-auth``
    when set. Typed BabelCLIP errors answer 400 with the message."""
    from fastapi import HTTPException
    from pydantic import create_model

    import typing

    hints = typing.get_type_hints(TrainRequest)
    body_model = create_model("BabelCLIPTrainRequest", **{f.name: (hints[f.name], f.default)
                                                          for f in dataclasses.fields(TrainRequest)
                                                          if f.name != "data_file"})  # no server paths from the API

    def train_route(body: body_model):  # type: ignore[valid-type]
        try:
            return train(TrainRequest(**(body.model_dump() if hasattr(body, "model_dump") else body.dict())))
        except BabelClipError as e:
            raise HTTPException(status_code=400, detail=f"{type(e).__name__}: {e}") from None

    train_route.__annotations__ = {"body": body_model}  # the model itself: FastAPI cannot resolve a local's name

    def models_route():
        return {"encoders": runtime.list_encoders(), "adapters": runtime.list_adapters(),
                "recipes": list(TEXT_RECIPES), "architectures": sorted(trainable_architectures())}

    from modules import shared

    opts = shared.cmd_opts
    if not (getattr(opts, "api", False) or getattr(opts, "nowebui", False)):
        return  # like the web UI's own API: only with --api
    dependencies = [_api_auth(opts.api_auth)] if getattr(opts, "api_auth", None) else []
    app.add_api_route("/babelclip/v1/train", train_route, methods=["POST"], dependencies=dependencies)
    app.add_api_route("/babelclip/v1/models", models_route, methods=["GET"], dependencies=dependencies)


def _api_auth(api_auth: str):
    """HTTP basic auth against the web UI's ``--api-auth user:password[,user2:password2]``, as its own API checks."""
    import secrets

    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    users = dict(entry.split(":", 1) for entry in api_auth.split(",") if ":" in entry)

    def check(credentials: HTTPBasicCredentials = Depends(HTTPBasic())):  # noqa: B008  (FastAPI's idiom)
        expected = users.get(credentials.username)
        if expected is None or not secrets.compare_digest(credentials.password, expected):
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})
        return True

    return Depends(check)
