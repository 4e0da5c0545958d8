"""Crash safety (issue 5): a training run killed with SIGKILL while it writes its checkpoint and adapter
leaves, for each file, the previous version or the new complete one, and resuming from what is left ends
where an uninterrupted run ends. A full disk gives a StorageError and no partial file.

The worker (tests/crash_worker.py) saves a 38 MB checkpoint and a 13 MB adapter at every step, so most of
its time is spent writing and most kills land mid-write; the test checks that some did.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from babelclip.models import FAMILIES, load_adapter
from . import crash_worker

WORKER = Path(__file__).with_name("crash_worker.py")
STEPS = 6
TRIALS = 20


def start_worker(folder: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(folder), str(STEPS), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The weights of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    return {k: v.clone() for k, v in crash_worker.run(str(folder), STEPS, announce=False).state_dict().items()}


def check_what_is_left(folder: Path) -> dict:
    """Every visible file is complete and self-consistent; returns what was found."""
    found = {"partial": sorted(p.name for p in folder.glob(".*.part"))}
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert set(visible) <= {"run.ckpt", "adapter.safetensors", "adapter.README.md"}, visible
    if "adapter.README.md" in visible:  # the model card is written atomically after the adapter
        from huggingface_hub import ModelCard

        assert ModelCard.load(folder / "adapter.README.md").data.library_name == "babelclip"
        assert "adapter.safetensors" in visible
    if "run.ckpt" in visible:
        state = torch.load(folder / "run.ckpt", map_location="cpu", weights_only=True)
        assert 1 <= state["step"] <= STEPS and len(state["losses"]) == state["step"]
        found["checkpoint_step"] = state["step"]
    if "adapter.safetensors" in visible:
        adapter = load_adapter(folder / "adapter.safetensors", family=FAMILIES["sd1"])  # checks the tensor hash
        found["adapter_step"] = int(adapter.spec.metadata["babelclip.description"].split()[1])
    return found


def test_sigkill_during_saves_leaves_old_or_new_files_and_resume_finishes_the_run(tmp_path, reference):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")))
    outcomes = []
    for trial in range(TRIALS):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        worker = start_worker(folder)
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
        time.sleep(rng.uniform(0, 1.2))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
        worker.stderr.close()
        found = check_what_is_left(folder)
        outcomes.append(found)
        # Resume from what is left: the run ends with the uninterrupted run's weights.
        adapter = crash_worker.run(str(folder), STEPS, save_every_step=False, announce=False)
        for name, value in adapter.state_dict().items():
            torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5, msg=f"trial {trial}: {name}")
    print(json.dumps(outcomes))
    assert sum(bool(o["partial"]) for o in outcomes) >= 3, f"too few kills landed mid-write: {outcomes}"
    assert any(o.get("checkpoint_step", 0) > 1 for o in outcomes)


@pytest.mark.parametrize("limit_mb", [1, 20], ids=["adapter-does-not-fit", "checkpoint-does-not-fit"])
def test_a_full_disk_is_a_storage_error_and_leaves_no_partial_file(tmp_path, limit_mb):
    """Simulated with RLIMIT_FSIZE: the kernel refuses writes past the limit (EFBIG), as a full disk would."""
    worker = start_worker(tmp_path, str(limit_mb * 1024 * 1024))
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 3, (out, err)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["error"] == "StorageError"
    assert "disk is full" in report["message"] and "Nothing was written" in report["message"]
    assert not list(tmp_path.glob(".*.part")) and not list(tmp_path.glob("*.part"))
    check_what_is_left(tmp_path)  # whatever exists is complete (here: nothing, or an older checkpoint)
