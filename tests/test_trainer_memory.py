"""Training keeps its peak memory at the live working set: large activations are mapped and given back.

glibc raises its mmap threshold after every free of a mapped block, so after the first few training steps the
activations come from a heap that fragments as token widths change (see ``bench/heap_fragmentation.py``).
``train(..., steady_heap=True)`` fixes the threshold (the command line asks for it); by default ``train()`` leaves the
process's allocator alone, as inside a host application the process is not ours to retune. mallopt settings are
per process, so each check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from babelclip.training import trainer

SCRIPT = r"""
import ctypes, json, sys, torch
from babelclip.models import FAMILIES, build_adapter
from babelclip.training.recipes import Batch, get_recipe
from babelclip.training.trainer import TrainConfig, train

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mapped(nbytes):
    # True when a tensor of nbytes is mapped from the OS (counted in hblkhd), False when the heap serves it
    before = libc.mallinfo2().hblkhd
    t = torch.empty(nbytes // 4)
    grew = libc.mallinfo2().hblkhd - before >= nbytes
    del t
    return grew

class Features:
    def __len__(self):
        return 64
    def batch(self, indices):
        n = len(indices)
        g = torch.Generator().manual_seed(len(indices))
        return Batch(torch.randn(n, 5, 32, generator=g), torch.ones(n, 5, dtype=torch.long), None,
                     torch.randn(n, 768, generator=g), teacher_mean=torch.randn(n, 768, generator=g))

big = torch.empty((8 << 20) // 4)
del big  # glibc now serves blocks under 8 MB from its heap
before_training = mapped(2 << 20)
if sys.argv[1] != "none":
    train(build_adapter("linear", 32, FAMILIES["sd1"]), get_recipe("altclip-kd"), Features(),
          TrainConfig(steps=2, batch_size=16, lr=1e-3), **({"steady_heap": True} if sys.argv[1] == "steady" else {}))
print(json.dumps({"before_training": before_training, "after": mapped(2 << 20)}))
"""


def run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(trainer._LIBC is None or not hasattr(trainer._LIBC, "mallinfo2"),
                    reason="the mmap threshold is a glibc setting (>= 2.33 for mallinfo2)")
def test_training_maps_large_activations_from_the_os():
    untouched = run("none")
    # the premise: without BabelCLIP's setting, glibc's heap serves a 2 MB block after an 8 MB one was freed
    assert untouched == {"before_training": False, "after": False}
    assert run("train") == {"before_training": False, "after": False}  # by default: the process's settings
    assert run("steady") == {"before_training": False, "after": True}

