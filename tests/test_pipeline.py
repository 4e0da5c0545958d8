"""training/pipeline.py: the one run from pairs to a saved adapter; stops, resumes, refuses what it cannot train."""

from __future__ import annotations

import json
import os

import pytest

from babelclip.errors import InvalidDataError
from babelclip.models import load_encoder, read_adapter_spec
from babelclip.models.encoder import EncoderInfo
from babelclip.models.tiny import build_tiny_encoder
from babelclip.training.pipeline import MIN_PAIRS_TO_HOLD_OUT, Hooks, TrainJob, run_pipeline, split_for_training
from babelclip.training.recipes import get_recipe
from babelclip.training.trainer import TrainConfig

from . import synthetic


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = build_tiny_encoder(tmp_path_factory.mktemp("enc") / "enc", "xlm-roberta", extra_text=synthetic.all_text())
    encoder = load_encoder(folder)
    return encoder, synthetic.LinearTeacher(encoder)


def _job(models, tmp_path, name="a", recipe="altclip-kd", steps=6, **options) -> TrainJob:
    encoder, teacher = models
    config = TrainConfig(steps=steps, batch_size=16, lr=1e-2, checkpoint_every=2)
    return TrainJob(synthetic.pairs(("en", "de")), encoder, teacher, "linear teacher", get_recipe(recipe), "linear",
                    config, str(tmp_path / f"{name}.safetensors"), str(tmp_path / "cache"), **options)


def _recorder(stop_at: dict | None = None):
    seen: list = []

    def progress(stage, done, total, loss=None):
        seen.append((stage, done, total, loss))
    stop = (lambda: any(s == stop_at["stage"] and d >= stop_at["done"] for s, d, _, _ in seen)) if stop_at else None
    return seen, Hooks(progress=progress, should_stop=stop, log=lambda line: None)


def test_one_run_saves_the_adapter_with_its_metadata_and_evaluation(models, tmp_path):
    seen, hooks = _recorder()
    out = run_pipeline(_job(models, tmp_path), hooks)
    assert not out.stopped and out.stage == "saved" and out.report["pairs"] > 0
    spec = read_adapter_spec(out.path)
    recipe = json.loads(spec.metadata["babelclip.recipe"])
    assert {"name", "steps", "final_loss", "final_terms", "train_pairs", "seconds"} <= set(recipe)
    assert json.loads(spec.metadata["babelclip.teacher"])["source"] == "linear teacher"
    assert set(json.loads(spec.metadata["babelclip.metrics"])) >= {"r@1", "mean_recall", "cosine"}
    stages = [s for s, *_ in seen]
    assert stages.index("encoder") < stages.index("held-out encoder") < stages.index("training")
    assert [d for s, d, _, _ in seen if s == "training"] == list(range(1, 7))
    assert not (tmp_path / "a.safetensors.ckpt").exists()


def test_a_stop_keeps_the_step_and_the_same_job_resumes_there(models, tmp_path):
    _, hooks = _recorder({"stage": "training", "done": 3})
    out = run_pipeline(_job(models, tmp_path, "r"), hooks)
    assert out.stopped and out.stage == "training" and out.train.step == 3 and out.path is None
    assert (tmp_path / "r.safetensors.ckpt").exists() and not (tmp_path / "r.safetensors").exists()
    seen, hooks = _recorder()
    out = run_pipeline(_job(models, tmp_path, "r"), hooks)
    assert [d for s, d, _, _ in seen if s == "training"] == [4, 5, 6] and out.stage == "saved"


def test_a_stop_while_caching_ends_before_any_step(models, tmp_path):
    _, hooks = _recorder({"stage": "encoder", "done": 1})
    out = run_pipeline(_job(models, tmp_path, "c"), hooks)
    assert out.stopped and out.stage == "features" and out.train is None
    assert not (tmp_path / "c.safetensors.ckpt").exists() and any((tmp_path / "cache").iterdir())


def test_a_denoiser_recipe_without_its_images_is_refused_before_any_work(models, tmp_path):
    with pytest.raises(InvalidDataError, match="'pea' needs one image per data row"):
        run_pipeline(_job(models, tmp_path, "p", recipe="pea"), Hooks())
    assert not (tmp_path / "cache").exists()


def test_small_sets_hold_nothing_out():
    pairs = synthetic.pairs(("en",))
    few = pairs[: MIN_PAIRS_TO_HOLD_OUT - 1]
    assert split_for_training(few, 0.1, 0) == (few, [])
    assert split_for_training(pairs, 0.1, 0)[1]


def _host_job(tmp_path, **options) -> TrainJob:
    """A job as a host makes it, on stand-ins for the models (the checkpoint's name reads only their identity)."""
    from types import SimpleNamespace

    from babelclip.training.data import Pair

    encoder = SimpleNamespace(info=EncoderInfo("e", "xlm-roberta", 32, 2, 100, "e1", weights="w1"))
    teacher = SimpleNamespace(fingerprint="t1")
    return TrainJob([Pair("a cat", "一只猫", "zh")], encoder, teacher, "stand-in", get_recipe("altclip-kd"), "linear",
                    TrainConfig(seed=3), str(tmp_path / "a.safetensors"), str(tmp_path / "cache"), **options)


def test_other_code_switched_copies_name_another_host_checkpoint(tmp_path):
    """A host's resume must not continue a run trained on other copies; the defaults keep the names they had."""
    from babelclip.training.codeswitch import DEFAULT_COPIES, DEFAULT_RATE
    from babelclip.training.pipeline import host_checkpoint_path

    def ckpt(**codeswitch):
        return host_checkpoint_path(_host_job(tmp_path, **codeswitch))

    assert ckpt() == ckpt(codeswitch=DEFAULT_COPIES, codeswitch_rate=DEFAULT_RATE)
    assert len({ckpt(), ckpt(codeswitch=0), ckpt(codeswitch=2), ckpt(codeswitch_rate=0.25)}) == 4


def test_the_host_checkpoint_is_named_by_the_job_as_before(tmp_path):
    """The name comes from the job alone (the settings are given once, to the job), and is the one hosts gave
    before it did: a run cancelled under an older version resumes. The digests below are the older version's."""
    from babelclip.training.pipeline import host_checkpoint_path

    names = [os.path.relpath(host_checkpoint_path(_host_job(tmp_path, **copies)), tmp_path)
             for copies in ({}, {"codeswitch": 0}, {"codeswitch": 2, "codeswitch_rate": 0.25})]
    assert names == [os.path.join("cache", "a-altclip-kd-linear-3-18e3bb4940ca.ckpt"),
                     os.path.join("cache", "a-altclip-kd-linear-3-a930fccaa218.ckpt"),
                     os.path.join("cache", "a-altclip-kd-linear-3-fa3dfbe2a14b.ckpt")]
    job = _host_job(tmp_path, codeswitch=0)
    job.checkpoint = host_checkpoint_path(job)
    assert job.checkpoint_path == job.checkpoint  # what run_pipeline resumes from


def test_the_copies_and_the_host_checkpoint_are_keyed_by_the_encoder_identity(tmp_path):
    """Both read ``EncoderInfo.identity`` (one place says what identifies the encoder's checkpoint)."""
    import dataclasses

    from babelclip.training.pipeline import _copies_key, host_checkpoint_path

    @dataclasses.dataclass(frozen=True)
    class Marked(EncoderInfo):
        @property
        def identity(self) -> dict:
            return {**super().identity, "mark": 1}

    job = _host_job(tmp_path)
    marked = dataclasses.replace(job, encoder=type(job.encoder)(info=Marked(**job.encoder.info.to_dict())))
    assert _copies_key(job, job.pairs)[:2] == ("e1", "w1")  # the values it had before the property
    assert _copies_key(marked, job.pairs)[:3] == ("e1", "w1", 1)
    assert host_checkpoint_path(marked) != host_checkpoint_path(job)
