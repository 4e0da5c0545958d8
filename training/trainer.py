"""The one training loop every recipe runs on.

AdamW with linear warmup then cosine decay, gradient clipping, a fixed seed and
a batch order that is a pure function of ``(seed, step)``, so a run resumed from
a checkpoint follows the same loss curve as an uninterrupted one. Mixed
precision (bf16, else fp16) on CUDA, fp32 on the CPU. A stop request (ComfyUI's
cancel button, Ctrl-C) writes a resumable checkpoint; every file is written to a
temporary name and renamed, so an interruption never leaves a broken file.

Multi-process data parallel runs go through Hugging Face Accelerate when the
script is started with ``accelerate launch`` (each process takes its share of
every batch; gradients are averaged).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from ..errors import InvalidDataError, InvalidModelFileError
from ..models.adapters import Adapter
from ..models.files import atomic_write
from .recipes import Batch, Recipe

__all__ = ["DEFAULT_STEPS", "TrainConfig", "TrainResult", "train", "lr_at", "atomic_torch_save"]

#: optimizer steps when none are asked for: the CLI, the Train node and the web UI (BENCHMARKS.md, *Cross-lingual
#: fidelity*: the configuration that met the transfer targets trains 1000 steps; 500 lost about 0.01 on average)
DEFAULT_STEPS = 1000


@dataclass
class TrainConfig:
    """Hyperparameters of one run (stored in the adapter's metadata)."""

    steps: int = field(default=DEFAULT_STEPS, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    batch_size: int = field(default=32, metadata={"help": "examples per step, all processes together"})
    warmup: float = field(default=0.05, metadata={"help": "fraction of steps of linear warmup"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and batch order"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr as a fraction of the peak"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between resumable checkpoints"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})

    def validate(self, examples: int) -> None:
        problems = []
        if not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps must be at least 1 (got {self.steps})")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr <= 1):
            problems.append(f"lr must be in (0, 1] (got {self.lr})")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be at least 1 (got {self.batch_size})")
        elif self.batch_size > examples:
            problems.append(f"batch_size {self.batch_size} is larger than the {examples} training examples")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            problems.append(f"checkpoint_every must be at least 1 (got {self.checkpoint_every})")
        if not (isinstance(self.warmup, (int, float)) and 0 <= self.warmup < 1):
            problems.append(f"warmup must be a fraction in [0, 1) (got {self.warmup})")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in (self.grad_clip, self.weight_decay)):
            problems.append("grad_clip and weight_decay must be finite and not negative")
        if problems:
            raise InvalidDataError("Invalid training settings: " + "; ".join(problems) + ". Change them and start "
                                   "the training again.")


@dataclass
class TrainResult:
    losses: list[float]
    step: int
    stopped: bool
    checkpoint: str | None
    terms: dict = field(default_factory=dict)  # the recipe's loss terms at the last step


class Dataset(Protocol):
    def __len__(self) -> int: ...
    def batch(self, indices: Sequence[int]) -> Batch: ...


def lr_at(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio``."""
    warm = max(1, int(config.warmup * config.steps)) if config.warmup > 0 else 0
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, config.steps - warm)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The examples of ``step``: epochs of seeded permutations, a pure function of its arguments."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[pos * batch_size: (pos + 1) * batch_size].tolist()


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` through :func:`~babelclip.models.files.atomic_write` (tensors and plain data only)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a Python file: a failed write surfaces as OSError (errno) inside torch's error
            torch.save(obj, f)

    atomic_write(path, write, "checkpoint")


#: steps between returns of freed heap memory to the OS (see :func:`_release_free_memory`)
RELEASE_EVERY = 10


def _glibc():
    """The C library when it is glibc (it has ``malloc_trim``), else None (macOS, musl, Windows)."""
    if os.name != "posix":
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()

#: allocations of this size and more are mapped from the OS and given back on free (see :func:`_steady_heap`)
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt() parameter number, <malloc.h>


def _release_free_memory() -> None:
    """Give the heap's free pages back to the OS (glibc only; elsewhere nothing).

    The heap still serves allocations under :data:`MMAP_THRESHOLD` (and everything on other C libraries); with
    token widths that change from batch to batch it fragments. Trimming every few steps keeps the resident
    memory between steps at the live working set; it costs about 20 ms per call.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _steady_heap() -> None:
    """Map allocations of :data:`MMAP_THRESHOLD` and more straight from the OS (glibc only; process-wide).

    glibc maps large blocks from the OS and unmaps them on free, but after each such free it raises its
    threshold to that block's size (up to 32 MB), so from then on the activations of training steps come from
    the heap. Their sizes follow the batch's token width; with widths that change from batch to batch the heap
    fragments, and peak RSS kept rising for the first hundred steps or so: a 1k-prompt run (3 steps) peaked
    130 MB under a 10k-prompt run (39 steps). A fixed threshold turns the dynamic raise off: every large
    activation is mapped fresh and given back when freed, so the peak is the live working set from the first
    step on (``bench/heap_fragmentation.py`` measures both). The price is a page fault per 4 KB of fresh
    activations, a few percent of a step's time. The setting stays for the process, so it is applied only when
    the caller asks (``train(..., steady_heap=True)``: the command line does; a host application running
    training inside its own server does not unless its user asks); it only changes where large blocks come from.
    """
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidDataError(f"Training device {name!r} was asked for but CUDA is not available; "
                               f"use device 'cpu' (BabelCLIP never falls back silently).")
    return device


def _accelerator(device: str):
    """An Accelerator when started by `accelerate launch` with several processes (CPU processes use gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())


def _resume(checkpoint: str, adapter: Adapter, optimizer, scheduler, config: TrainConfig) -> tuple[int, list]:
    """Load a checkpoint of this run into the adapter, optimizer and scheduler; its step and losses."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable checkpoint is the same problem to the user)
        raise InvalidModelFileError(
            f"Checkpoint {checkpoint!r} cannot be read ({type(e).__name__}: {str(e)[:120]}). It is damaged or "
            f"not a BabelCLIP checkpoint: delete it to start the run over.") from None
    if not isinstance(state, dict):
        raise InvalidModelFileError(f"Checkpoint {checkpoint!r} is not a BabelCLIP checkpoint: delete it to start "
                                    f"the run over.")
    if state.get("config") != dataclasses.asdict(config) or state.get("arch") != adapter.arch:
        raise InvalidDataError(f"Checkpoint {checkpoint!r} belongs to another run (other settings or architecture); "
                               f"delete it or choose another output name.")
    adapter.load_state_dict(state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"]), list(state["losses"])


class _Stepper:
    """One optimizer step: mixed precision on CUDA (bf16, else fp16 with a loss scaler), Accelerate's backward
    when several processes train, gradient clipping, then the lr schedule."""

    def __init__(self, model, adapter: Adapter, optimizer, scheduler, config: TrainConfig, device, accelerator):
        self.model, self.adapter, self.optimizer, self.scheduler = model, adapter, optimizer, scheduler
        self.config, self.accelerator = config, accelerator
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if bf16 else torch.float16)
                         if device.type == "cuda" else torch.autocast("cpu", enabled=False))
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not bf16)

    def __call__(self, recipe: Recipe, batch: Batch, unet, step: int) -> tuple[float, dict]:
        with self.autocast:
            loss, terms = recipe.loss(self.model, batch, unet)
        if not torch.isfinite(loss):
            raise InvalidDataError(f"The loss became {float(loss)} at step {step + 1}: lower the learning rate.")
        self.optimizer.zero_grad(set_to_none=True)
        clip, accelerator = self.config.grad_clip, self.accelerator
        if accelerator:
            accelerator.backward(loss)
            if clip:
                accelerator.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        value = float(accelerator.reduce(loss.detach(), reduction="mean")) if accelerator else float(loss.detach())
        return value, terms


def train(adapter: Adapter, recipe: Recipe, data: Dataset, config: TrainConfig, *, checkpoint: str | None = None,
          resume: bool = True, unet=None, progress: Callable[[int, int, float], None] | None = None,
          should_stop: Callable[[], bool] | None = None, steady_heap: bool = False) -> TrainResult:
    """Train ``adapter`` in place with ``recipe`` on ``data``.

    Args:
        checkpoint: path of the resumable checkpoint; resumed from when it exists and ``resume`` is set.
        unet: the frozen UNet wrapper for UNet recipes.
        progress: called after every step with ``(step, steps, loss)``.
        should_stop: polled every step; True stops the run after writing the checkpoint.
        steady_heap: tune glibc's allocator for the whole process (:func:`_steady_heap`): steadier peak memory
            for a process that only trains (the command line); off by default, as the process may be a
            server that is not ours to retune.
    """
    config.validate(len(data))
    if recipe.needs_unet and unet is None:
        raise InvalidDataError(f"Recipe {recipe.name!r} trains through the frozen denoiser (UNet) and none was "
                               f"given: give the checkpoint's denoiser, or choose a text recipe.")
    if steady_heap:
        _steady_heap()
    accelerator = _accelerator(config.device)
    device = accelerator.device if accelerator else _device(config.device)
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    if config.batch_size % world:
        raise InvalidDataError(f"batch_size {config.batch_size} must be divisible by the {world} processes.")
    adapter.to(device).train()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, config))
    start, losses = 0, []
    if checkpoint and resume and os.path.exists(checkpoint):
        start, losses = _resume(checkpoint, adapter, optimizer, scheduler, config)
    model = adapter
    if accelerator:
        model, optimizer = accelerator.prepare(adapter, optimizer)
    step_once = _Stepper(model, adapter, optimizer, scheduler, config, device, accelerator)

    def save(step: int) -> None:
        if checkpoint and rank == 0:
            atomic_torch_save({"adapter": adapter.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "step": step, "losses": losses,
                               "config": dataclasses.asdict(config), "arch": adapter.arch}, checkpoint)

    stopped, terms = False, {}
    for step in range(start, config.steps):
        if should_stop is not None and should_stop():
            stopped = True
            break
        indices = batch_indices(step, len(data), config.batch_size, config.seed)
        batch = data.batch(indices[rank::world]).to(device)
        torch.manual_seed(config.seed * 1_000_003 + step * 7919 + rank)  # noise of UNet recipes: resumable too
        value, terms = step_once(recipe, batch, unet, step)
        if (step + 1) % RELEASE_EVERY == 0:
            _release_free_memory()
        losses.append(value)
        if progress is not None and rank == 0:
            progress(step + 1, config.steps, value)
        if checkpoint and (step + 1) % config.checkpoint_every == 0:
            save(step + 1)
    if checkpoint:
        save(len(losses))
    adapter.eval()
    return TrainResult(losses, len(losses), stopped, checkpoint, terms)
