"""The one training pipeline: pairs, frozen models, recipe and settings in; a saved adapter and its evaluation out.

The command line (``training/cli.py``), the training demo and each host's training entry point only translate their
inputs into a :class:`TrainJob` and their progress bars, cancel button or Ctrl-C into :class:`Hooks`; the steps are here:
split the pairs, build the adapter, cache the frozen features, add the caller's images, train, evaluate on the
held-out pairs and save the adapter with its metadata. So the same inputs give the same adapter file, whichever
program ran them.

What only a caller can prepare comes in ready: the loaded encoder and teacher, and for recipes that read images
the ``images`` hook, which turns the training rows and their text features into ``(denoiser, rows with
latents or image embeddings)`` (the command line loads a diffusers UNet, a host hands over its own).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
from typing import Callable, Sequence

import torch

from ..errors import InvalidDataError
from ..models.files import atomic_write
from .codeswitch import CODESWITCH_LANG, COPIES_VERSION, DEFAULT_COPIES, DEFAULT_RATE, codeswitch_pairs
from .data import Pair, split_pairs
from .recipe_base import Recipe
from .trainer import TrainConfig, TrainResult

__all__ = ["TrainJob", "Hooks", "PipelineResult", "split_for_training", "check_job", "run_pipeline",
           "MIN_PAIRS_TO_HOLD_OUT", "CODESWITCH_STAGE", "unique_adapter_path", "host_checkpoint_path",
           "check_runs", "default_runs", "average_into", "AVERAGEABLE_ARCHS", "DEFAULT_RUNS", "STOPPED_IN",
           "CODESWITCH_HELP", "RUNS_HELP"]

log = logging.getLogger("babelclip.training")

#: fewer pairs than this: none are held out (an evaluation on one or two sentences says nothing)
MIN_PAIRS_TO_HOLD_OUT = 20

#: the progress stage of the code-switched copies' dictionary (done / total: words), before the features
CODESWITCH_STAGE = "code-switching"

#: ``images(train_pairs, text_features) -> (denoiser or None, rows with latents / image embeddings)``
ImagesHook = Callable[[list, object], tuple]


@dataclasses.dataclass
class TrainJob:
    """Everything one training run reads, in the form every caller can give."""

    pairs: Sequence[Pair]  # deduplicated; the held-out split is taken from them
    encoder: object  # a loaded MultilingualEncoder
    teacher: object  # a Teacher: ``family``, ``fingerprint``, ``clip_skip``, ``encode``
    teacher_source: str  # what the metadata names as the teacher's source (a file name, or the host's words)
    recipe: Recipe
    arch: str
    config: TrainConfig
    out: str  # the adapter file to write (.safetensors)
    cache_dir: str
    layer: object = "last"
    val_fraction: float = 0.1
    arch_options: dict = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None  # resumable checkpoint; default ``<out>.ckpt``
    resume: bool = True
    overwrite: bool = False
    report_files: bool = False  # also write ``<out stem>.eval.{json,md,png}``
    images: ImagesHook | None = None
    steady_heap: bool = False  # process-wide glibc allocator tuning (see trainer.train); for dedicated processes
    # code-switched copies of each English training prompt (training.codeswitch); text recipes only, 0: none
    codeswitch: int = DEFAULT_COPIES
    codeswitch_rate: float = DEFAULT_RATE
    # independent runs (seeds seed .. seed+runs-1: initialisation, batch order, copies) whose weights are averaged;
    # the linear adapter only (other architectures' runs share no basis to average in); 0: :func:`default_runs`
    runs: int = 0

    @property
    def run_count(self) -> int:
        """The runs this job trains: ``runs``, or for 0 the default of its architecture and recipe
        (:func:`default_runs`)."""
        return self.runs or default_runs(self.arch, self.recipe)

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoint or self.out + ".ckpt"


@dataclasses.dataclass
class Hooks:
    """How the caller follows and stops a run.

    progress: ``(stage, done, total, loss)``; stage is :data:`CODESWITCH_STAGE` (words of the code-switched
        copies' dictionary, text recipes only), ``"encoder"`` / ``"teacher"`` (training features),
        ``"held-out encoder"`` / ``"held-out teacher"``, ``"training"`` (loss set) — one bar per stage.
    should_stop: polled between batches (and between the dictionary's chunks of words); True ends the run at the
        next safe point (cached features and the checkpoint of the last finished step are kept) and
        :func:`run_pipeline` returns ``stopped``.
    log: one line of news for the user (the adapter, the split, the processes).
    prepared: called with the fresh adapter and the held-out features before the first step (the demo
        evaluates the untrained adapter there).
    """

    progress: Callable[[str, int, int, float | None], None] | None = None
    should_stop: Callable[[], bool] | None = None
    log: Callable[[str], None] = log.info
    prepared: Callable[[object, object], None] | None = None

    def stopping(self) -> bool:
        return self.should_stop is not None and self.should_stop()


@dataclasses.dataclass
class PipelineResult:
    stopped: bool
    stage: str  # where it ended: CODESWITCH_STAGE (stopped making the copies), "features", "training", "saved"
    path: str | None = None
    adapter: object = None
    train: TrainResult | None = None
    report: dict | None = None
    seconds: float = 0.0  # of the training loop
    metadata: dict = dataclasses.field(default_factory=dict)


def unique_adapter_path(folder: str, name: str) -> str:
    """``<folder>/<name>.safetensors`` for a name a user typed (characters a file name cannot hold become ``_``),
    numbered ``_00001``, ``_00002``... when it exists: a host's training never overwrites an adapter."""
    stem = re.sub(r"[^\w\-. ]", "_", name).strip(" .")
    stem = (stem[: -len(".safetensors")] if stem.lower().endswith(".safetensors") else stem) or "babelclip-adapter"
    path, n = os.path.join(folder, stem + ".safetensors"), 1
    while os.path.exists(path):
        path, n = os.path.join(folder, f"{stem}_{n:05d}.safetensors"), n + 1
    return path


def host_checkpoint_path(job: TrainJob) -> str:
    """Where a host keeps the resumable checkpoint of ``job`` (set it as ``job.checkpoint``): in ``job.cache_dir``,
    named by the adapter ``job.out`` and the settings that shape the run (recipe, arch, seed), and by a digest of
    what it learns from (the encoder's fingerprint and weights digest, the teacher's fingerprint, the data rows
    and the code-switched copies' settings and version when it trains on copies, and the recipe's settings where
    they differ from the paper's loss), so that starting the same run
    again after a cancel resumes it and a run with other data or models under the same name (a fine-tune of the
    encoder too, or copies made another way) starts afresh. Everything is read from the job, so the name cannot
    disagree with what the job trains. A run without copies is named by nothing of theirs (their settings shape
    nothing it learns), so a change of their defaults leaves its name alone."""
    rows = [[p.en, p.text, p.lang, p.image] for p in job.pairs]
    # (fingerprint, weights): the order in which the names were digested before EncoderInfo.identity
    parts = [*job.encoder.info.identity.values(), job.teacher.fingerprint, rows]
    if job.codeswitch > 0 and job.codeswitch_rate > 0 and _uses_codeswitch(job):  # a run without copies: no part
        parts.append(["codeswitch", job.codeswitch, job.codeswitch_rate, COPIES_VERSION])
    if job.run_count != 1:
        parts.append(["runs", job.run_count])
    if changed := _changed_recipe_options(job.recipe):  # another loss is another run (the paper's: no part)
        parts.append(["recipe", changed])
    identity = json.dumps(parts, ensure_ascii=False)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    stem = os.path.basename(job.out)[: -len(".safetensors")]
    return os.path.join(job.cache_dir, f"{stem}-{job.recipe.name}-{job.arch}-{job.config.seed}-{digest}.ckpt")


def split_for_training(pairs: Sequence[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Training and held-out pairs; under :data:`MIN_PAIRS_TO_HOLD_OUT` pairs all of them train."""
    return split_pairs(pairs, val_fraction if len(pairs) >= MIN_PAIRS_TO_HOLD_OUT else 0.0, seed=seed)


#: the architectures whose runs can be averaged (``TrainJob.runs``)
AVERAGEABLE_ARCHS = ("linear",)
#: runs averaged when none are asked for (``runs`` 0), for an architecture of AVERAGEABLE_ARCHS trained by a text
#: recipe (BENCHMARKS.md, *Cross-lingual fidelity*: 8 runs of 64 copies at contrastive weight 2 met both transfer
#: targets on both splits; 4 runs the average target only, 1 run neither)
DEFAULT_RUNS = 8


def default_runs(arch: str, recipe=None) -> int:
    """The runs a job of ``arch`` and ``recipe`` trains when none are asked for: :data:`DEFAULT_RUNS` where they
    can be averaged and the recipe is a text recipe (where it was measured), else 1: a denoiser recipe's every
    step runs the denoiser, so its runs are asked for, not given."""
    return DEFAULT_RUNS if arch in AVERAGEABLE_ARCHS and not getattr(recipe, "needs_images", False) else 1

#: The one help text of ``TrainJob.codeswitch`` (default :data:`~.codeswitch.DEFAULT_COPIES`), read by the Train
#: node's tooltip, the web UI tab's info and the CLI's ``--codeswitch`` help; the front ends show the default.
CODESWITCH_HELP = ("Code-switched copies of each English prompt (words swapped for their neighbours of other scripts "
                   "in the encoder's own vocabulary), trained beside the data: they keep more of the encoder's "
                   "cross-lingual meaning in English-only training; 0 turns them off. Text recipes only. They cost "
                   "an encoder pass over the copies and, once per process and encoder, a pass over its vocabulary "
                   "for the lookup by meaning (about two minutes on 2 CPU cores, seconds on a GPU).")
#: The one help text of ``TrainJob.runs`` (default 0, checked by :func:`check_runs`), read by the same three.
RUNS_HELP = ("Train this many independent runs (seeds seed .. seed+runs-1: initialisation, batch order, copies) and "
             "save the average of their weights: a steadier adapter that keeps more of the encoder's cross-lingual "
             "meaning (BENCHMARKS.md, soup=K: 4 runs gave about +0.02 transfer, +0.025 to +0.035 for the worst "
             "language, 8 runs up to +0.02 more for it) for runs x the training time and copies. Only the "
             f"{' / '.join(AVERAGEABLE_ARCHS)} architecture; 1 trains one adapter; 0 (the default) trains "
             f"{DEFAULT_RUNS} for {' / '.join(AVERAGEABLE_ARCHS)} with a text recipe, 1 otherwise.")


def check_runs(runs, arch: str) -> None:
    """``runs`` must be a whole number from 0 (the architecture's default), and above 1 only for an
    architecture in AVERAGEABLE_ARCHS."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise InvalidDataError(f"runs must be a whole number from 0 (got {runs!r}); 1 trains one adapter, 0 the "
                               f"architecture's default.")
    if runs > 1 and arch not in AVERAGEABLE_ARCHS:
        raise InvalidDataError(f"runs {runs} averages the weights of independent runs, which only the "
                               f"{', '.join(AVERAGEABLE_ARCHS)} adapter allows (not {arch!r}): use runs 1, or that "
                               f"architecture.")


def check_job(pairs: Sequence[Pair], recipe: Recipe, config: TrainConfig, val_fraction: float,
              images: bool) -> tuple[list[Pair], list[Pair]]:
    """The checks that need no model; returns the split. ``images``: the caller gives the recipe its images."""
    if recipe.needs_images and not images:
        raise InvalidDataError(f"Recipe {recipe.name!r} needs one image per data row (and, for the denoiser "
                               f"recipes, the frozen denoiser): give them, or choose a text recipe.")
    train_pairs, val_pairs = split_for_training(pairs, val_fraction, config.seed)
    config.validate(len(train_pairs))
    return train_pairs, val_pairs


class _SingleProcess:
    is_main_process = True
    num_processes = 1

    def main_process_first(self):
        return contextlib.nullcontext()


def process_state(device: str):
    """accelerate's PartialState when started by `accelerate launch` with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    return _SingleProcess()


#: where a stopped run was, by its PipelineResult ``stage``, in the words every host tells the user (then how to go on)
STOPPED_IN = {CODESWITCH_STAGE: "while making the code-switched copies (nothing was cached yet)",
              "features": "while caching features (what was cached is kept)"}


#: code-switched copies made or read in this process, most recently used last: a host's re-queue of the same run,
#: or a resume in the same process, neither builds the dictionary again (minutes on large data) nor reads its file.
#: Two entries: one holds up to ``copies`` pairs per English prompt, and a host keeps running. (On disk they are
#: kept in the cache folder too: :func:`_copies_file`.)
_COPIES_KEPT = 2
_copies: collections.OrderedDict[tuple, tuple[Pair, ...]] = collections.OrderedDict()
_copies_lock = threading.Lock()


def _uses_codeswitch(job: TrainJob) -> bool:
    """Whether ``job`` trains on code-switched copies at all: only when its rows are text alone (a recipe that
    reads images needs one for each row, and a copy has none)."""
    return job.images is None and not job.recipe.needs_images


def _copies_key(job: TrainJob, train_pairs: Sequence[Pair]) -> tuple:
    """What the copies depend on: the encoder's vocabulary (its fingerprint) and input embeddings (its weights
    digest: a fine-tune has the vocabulary but other neighbours), the distinct English, the settings."""
    english = json.dumps(sorted({p.en for p in train_pairs}), ensure_ascii=False)
    digest = hashlib.sha256(english.encode("utf-8", "surrogatepass")).hexdigest()
    return (*job.encoder.info.identity.values(), digest, job.codeswitch, job.codeswitch_rate, job.config.seed)


def _copies_file(job: TrainJob, key: tuple) -> str:
    """Where the copies of ``key`` are kept on disk (a resume in another process, such as the command line's
    rerun after Ctrl-C, reads them instead of building the dictionary again), in the job's cache folder."""
    digest = hashlib.sha256(json.dumps([COPIES_VERSION, *key], ensure_ascii=False).encode()).hexdigest()[:16]
    return os.path.join(job.cache_dir, f"codeswitch-{digest}.jsonl")


def _read_copies(path: str) -> list[Pair] | None:
    """The copies kept at ``path`` (one JSON object per line: ``en``, ``text``); None if there are none or the file
    is unreadable (then they are made again and the file replaced)."""
    try:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [Pair(en=str(r["en"]), text=str(r["text"]), lang=CODESWITCH_LANG) for r in rows]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring the unreadable code-switched copies %s (%s); making them again", path, e)
        return None


def _write_copies(path: str, made: Sequence[Pair]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for p in made:
                f.write(json.dumps({"en": p.en, "text": p.text}) + "\n")  # (ASCII: any text survives)

    atomic_write(path, write, "code-switched copies")


class _Stopped(Exception):
    """A stop requested while the code-switched copies are made (raised from their progress callback)."""


def codeswitched(job: TrainJob, train_pairs: Sequence[Pair], hooks: Hooks | None = None) -> list[Pair] | None:
    """The code-switched training rows of ``job`` (:mod:`.codeswitch`): none for the recipes that read images,
    whose rows must each have one. Reports :data:`CODESWITCH_STAGE` to ``hooks`` and polls its stop between the
    dictionary's chunks of words; None if stopped. Kept in the process and in the cache folder (a rerun, even in
    another process, reads them rather than building the dictionary again)."""
    if not _uses_codeswitch(job) or job.codeswitch <= 0 or job.codeswitch_rate <= 0:
        return []
    key = _copies_key(job, train_pairs)
    with _copies_lock:
        if key in _copies:
            _copies.move_to_end(key)
            return list(_copies[key])
    path = _copies_file(job, key)
    made = _read_copies(path)
    if made is None:
        made = _make_copies(job, train_pairs, hooks or Hooks())
        if made is None:
            return None
        _write_copies(path, made)
    with _copies_lock:
        _copies[key] = tuple(made)
        while len(_copies) > _COPIES_KEPT:
            _copies.popitem(last=False)
    return made


def _make_copies(job: TrainJob, train_pairs: Sequence[Pair], hooks: Hooks) -> list[Pair] | None:
    """Build the dictionary and the copies, with progress and stop (None if stopped)."""
    def progress(done: int, total: int) -> None:
        if hooks.progress is not None:
            hooks.progress(CODESWITCH_STAGE, done, total, None)
        if done < total and hooks.stopping():  # (after the last chunk: the features' first check stops)
            raise _Stopped

    try:
        return codeswitch_pairs(train_pairs, job.encoder, copies=job.codeswitch, rate=job.codeswitch_rate,
                                seed=job.config.seed, progress=progress)
    except _Stopped:
        return None


def _features(job: TrainJob, hooks: Hooks, pairs, layout: str, prefix: str = "", encode_english: bool = False):
    from .features import prepare_text_features

    progress = ((lambda name, done, total: hooks.progress(prefix + name, done, total, None))
                if hooks.progress else None)
    return prepare_text_features(pairs, job.encoder, job.teacher, job.cache_dir, layer=job.layer,
                                 batch_size=job.config.batch_size, progress=progress,
                                 should_stop=hooks.should_stop, teacher_layout=layout, encode_english=encode_english)


def _build_adapter(job: TrainJob):
    from ..models import build_adapter

    torch.manual_seed(job.config.seed)
    return build_adapter(job.arch, job.encoder.info.hidden_size, job.teacher.family, **job.arch_options)


def _prepare(job: TrainJob, hooks: Hooks, train_pairs, val_pairs, adapter):
    """The training rows (text features, plus the caller's images) and the held-out features; None if stopped."""
    from .features import teacher_layout_for

    # the teacher's 77 tokens are cached only when the recipe and adapter read them (features.py)
    data = _features(job, hooks, train_pairs, teacher_layout_for(adapter, job.recipe))
    if hooks.stopping():
        return None
    # the held-out English is encoded too: the evaluation reports the encoder's own retrieval beside the adapter's
    val = (_features(job, hooks, val_pairs, teacher_layout_for(adapter), "held-out ", encode_english=True)
           if val_pairs else None)
    if hooks.stopping():
        return None
    denoiser = None
    if job.images is not None:
        denoiser, data = job.images(train_pairs, data)
    if job.recipe.needs_unet and denoiser is None:
        raise InvalidDataError(f"Recipe {job.recipe.name!r} trains through the frozen denoiser, and none was "
                               f"given: give the checkpoint's denoiser and one image per row, or choose a text "
                               f"recipe.")
    return data, val, denoiser


def _recipe_options(recipe) -> dict:
    """The recipe's own settings (loss weights, temperature), as its constructor took them."""
    return {k: v for k, v in vars(recipe).items() if isinstance(v, (bool, int, float, str))}


def _changed_recipe_options(recipe) -> dict:
    """The recipe's settings that differ from its class's defaults (the paper's loss), sorted by name."""
    defaults = _recipe_options(type(recipe)())
    return {k: v for k, v in sorted(_recipe_options(recipe).items()) if defaults.get(k) != v}


def metadata(job: TrainJob, result: TrainResult, train_pairs, report, seconds: float, codeswitched: int = 0) -> dict:
    """The adapter file's metadata: the same keys from every caller. ``recipe.codeswitch`` (the copies' settings
    and how many were trained on) only for runs that can train on copies: a denoiser recipe's has none."""
    teacher = job.teacher
    switched = ({"codeswitch": {"copies": job.codeswitch, "rate": job.codeswitch_rate, "pairs": codeswitched}}
                if _uses_codeswitch(job) else {})
    return {
        "encoder": job.encoder.info, "family": teacher.family.name, "layer": job.layer,
        "teacher": {"family": teacher.family.name, "fingerprint": teacher.fingerprint,
                    "source": job.teacher_source, "clip_skip": getattr(teacher, "clip_skip", None)},
        "languages": sorted({p.lang for p in job.pairs}),
        "recipe": {"name": job.recipe.name, "options": _recipe_options(job.recipe), **dataclasses.asdict(job.config),
                   "final_loss": result.losses[-1],
                   "final_terms": result.terms, "train_pairs": len(train_pairs), "seconds": seconds, **switched,
                   **({"runs": job.run_count} if job.run_count != 1 else {})},
        "metrics": report["average"] if report else {},
    }


def _save(job: TrainJob, hooks: Hooks, adapter, result: TrainResult, train_pairs, val, seconds: float,
          codeswitched: int = 0):
    from ..models import save_adapter
    from .evaluation import evaluate_adapter, report_markdown, write_report

    report = evaluate_adapter(adapter, val) if val is not None else None
    meta = metadata(job, result, train_pairs, report, seconds, codeswitched)
    table = report_markdown(report) if report else None
    save_adapter(adapter.cpu(), job.out, meta, overwrite=job.overwrite, evaluation=table)
    for path in (job.checkpoint_path, *(_run_job(job, k).checkpoint_path for k in range(1, job.run_count))):
        if os.path.exists(path):
            os.unlink(path)
    hooks.log(f"saved {job.out} (final loss {result.losses[-1]:.4g})")
    if report and job.report_files:
        paths = write_report(report, job.out[: -len(".safetensors")] + ".eval")
        hooks.log(table)
        hooks.log(f"evaluation: {paths['json']}, {paths['markdown']}, {paths['chart']}")
    return report, meta


def _run_job(job: TrainJob, k: int) -> TrainJob:
    """Run ``k`` of a job of several runs: seed ``seed + k`` (initialisation, batch order, copies) and its own
    checkpoint beside the first run's; run 0 is the job itself."""
    if k == 0:
        return job
    return dataclasses.replace(job, config=dataclasses.replace(job.config, seed=job.config.seed + k),
                               checkpoint=f"{job.checkpoint_path}.run{k}")


def average_into(adapter, others) -> None:
    """Set ``adapter``'s weights to the mean of its own and ``others``' (runs of one architecture that share a
    basis: :data:`AVERAGEABLE_ARCHS`)."""
    states = [adapter.state_dict(), *(o.state_dict() for o in others)]
    adapter.load_state_dict({k: sum(s[k] for s in states) / len(states) for k in states[0]})


def run_pipeline(job: TrainJob, hooks: Hooks | None = None) -> PipelineResult:
    """Split, build, cache, train, evaluate, save (see the module doc). A stop returns ``stopped`` and keeps
    what a rerun of the same job reuses: the cached features and the checkpoint of the last finished step."""
    from .trainer import train

    hooks = hooks or Hooks()
    check_runs(job.runs, job.arch)
    train_pairs, val_pairs = check_job(job.pairs, job.recipe, job.config, job.val_fraction, job.images is not None)
    with torch.inference_mode(False), torch.enable_grad():  # hosts may call in inference mode
        adapter = _build_adapter(job)
    hooks.log(job.recipe.describe(adapter))
    hooks.log(f"{len(train_pairs)} training and {len(val_pairs)} held-out pairs")
    extra = codeswitched(job, train_pairs, hooks)
    if extra is None:  # stopped while making the copies: nothing was cached yet, a rerun starts there again
        return PipelineResult(True, CODESWITCH_STAGE, adapter=adapter)
    if extra:
        hooks.log(f"{len(extra)} code-switched copies of the training English (up to {job.codeswitch} per prompt)")
    state = process_state(job.config.device)
    if state.num_processes > 1 and state.is_main_process:
        hooks.log(f"data parallel over {state.num_processes} processes (accelerate)")
    with state.main_process_first():  # under `accelerate launch`, the main process fills the caches first
        prepared = _prepare(job, hooks, [*train_pairs, *extra], val_pairs, adapter)
    if prepared is None:
        return PipelineResult(True, "features", adapter=adapter)
    data, val, denoiser = prepared
    if hooks.prepared is not None:
        hooks.prepared(adapter, val)
    started = time.perf_counter()
    result, others = None, []
    for k in range(job.run_count):  # one bar: the runs' steps one after the other
        run = _run_job(job, k)
        if k:  # its own copies (its seed's) and their features; the held-out split is the job's
            copies = codeswitched(run, train_pairs, hooks)
            if copies is None:
                return PipelineResult(True, CODESWITCH_STAGE, adapter=adapter, train=result)
            with state.main_process_first():
                prepared = _prepare(run, hooks, [*train_pairs, *copies], [], adapter)
            if prepared is None:
                return PipelineResult(True, "features", adapter=adapter, train=result)
            data = prepared[0]
            with torch.inference_mode(False), torch.enable_grad():
                others.append(_build_adapter(run))
        progress = ((lambda done, total, loss=None, k=k: hooks.progress("training", k * total + done,
                                                                          job.run_count * total, loss))
                    if hooks.progress else None)
        with torch.inference_mode(False), torch.enable_grad():
            result = train(others[-1] if k else adapter, job.recipe, data, run.config,
                           checkpoint=run.checkpoint_path, resume=job.resume, unet=denoiser, progress=progress,
                           should_stop=hooks.should_stop, steady_heap=job.steady_heap)
        if result.stopped:
            return PipelineResult(True, "training", adapter=adapter, train=result,
                                  seconds=round(time.perf_counter() - started, 1))
    if others:
        average_into(adapter, others)
    seconds = round(time.perf_counter() - started, 1)
    if not state.is_main_process:
        return PipelineResult(False, "training", adapter=adapter, train=result, seconds=seconds)
    report, meta = _save(job, hooks, adapter, result, train_pairs, val, seconds, len(extra))
    return PipelineResult(False, "saved", job.out, adapter, result, report, seconds, meta)
