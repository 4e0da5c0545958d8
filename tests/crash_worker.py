"""A training run that saves a checkpoint and an adapter at every step, for tests/test_crash_safety.py.

Usage: python crash_worker.py <folder> <steps> [<fsize limit in bytes>]

Prints ``ready`` once the first checkpoint exists. With a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) the
operating system refuses writes past it with EFBIG: a full disk, simulated; the worker then prints the
error as JSON and exits.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

import torch

from babelclip.models import FAMILIES, build_adapter, save_adapter
from babelclip.models.encoder import EncoderInfo
from babelclip.training.recipes import Batch, get_recipe
from babelclip.training.trainer import TrainConfig, train

WIDTH = 768
ENCODER = EncoderInfo("crash-test", "xlm-roberta", WIDTH, 2, 100, "crash-test")


class RandomBatches:
    def __init__(self, n: int = 8):
        g = torch.Generator().manual_seed(0)
        self.hidden = torch.randn(n, 6, WIDTH, generator=g)
        self.cond = torch.randn(n, 77, 768, generator=g)
        self.pooled = torch.randn(n, 768, generator=g)

    def __len__(self):
        return len(self.hidden)

    def batch(self, idx):
        return Batch(self.hidden[idx], torch.ones(len(idx), 6, dtype=torch.long), self.cond[idx], self.pooled[idx])


def config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=4, lr=1e-3, checkpoint_every=1, device="cpu", seed=0)


def new_adapter():
    torch.manual_seed(0)
    return build_adapter("mlp", WIDTH, FAMILIES["sd1"])


def run(folder: str, steps: int, *, save_every_step: bool = True, announce: bool = True):
    adapter = new_adapter()
    checkpoint = os.path.join(folder, "run.ckpt")
    adapter_path = os.path.join(folder, "adapter.safetensors")

    def progress(step, total, loss):
        if save_every_step:
            save_adapter(adapter, adapter_path, {"encoder": ENCODER, "family": "sd1", "description": f"step {step}"},
                         overwrite=True)
        if announce and step == 1:
            print("ready", flush=True)

    train(adapter, get_recipe("altclip-kd"), RandomBatches(), config(steps), checkpoint=checkpoint, progress=progress)
    return adapter


if __name__ == "__main__":
    folder, steps = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    if len(sys.argv) > 3:
        from babelclip.errors import StorageError

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(sys.argv[3])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            run(folder, steps)
        except StorageError as e:
            print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
            sys.exit(3)
        print(json.dumps({"error": None}))
    else:
        run(folder, steps)
