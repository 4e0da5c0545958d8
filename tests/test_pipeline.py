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
    """A job of one run unless ``runs`` says otherwise (the linear adapter's default is several)."""
    encoder, teacher = models
    config = TrainConfig(steps=steps, batch_size=16, lr=1e-2, checkpoint_every=2)
    return TrainJob(synthetic.pairs(("en", "de")), encoder, teacher, "linear teacher", get_recipe(recipe), "linear",
                    config, str(tmp_path / f"{name}.safetensors"), str(tmp_path / "cache"),
                    **{"runs": 1, **options})


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


def test_other_code_switched_copies_name_another_host_checkpoint(tmp_path, monkeypatch):
    """A host's resume must not continue a run trained on other copies: other settings, or copies made another
    way (``COPIES_VERSION``), name another checkpoint."""
    from babelclip.training import pipeline
    from babelclip.training.codeswitch import DEFAULT_COPIES, DEFAULT_RATE
    from babelclip.training.pipeline import host_checkpoint_path

    def ckpt(**codeswitch):
        return host_checkpoint_path(_host_job(tmp_path, **codeswitch))

    assert ckpt() == ckpt(codeswitch=DEFAULT_COPIES, codeswitch_rate=DEFAULT_RATE)
    assert len({ckpt(), ckpt(codeswitch=0), ckpt(codeswitch=2), ckpt(codeswitch_rate=0.25)}) == 4
    without, default = ckpt(codeswitch=0), ckpt()
    # without copies their settings shape nothing the run learns, so they name nothing (neither does a change of
    # their defaults, then)
    assert ckpt(codeswitch=0, codeswitch_rate=0.3) == without == ckpt(codeswitch_rate=0.0)
    monkeypatch.setattr(pipeline, "COPIES_VERSION", pipeline.COPIES_VERSION + 1)
    assert ckpt() != default and ckpt(codeswitch=0) == without  # no copies: nothing to version


def test_the_host_checkpoint_is_named_by_the_job_as_before(tmp_path):
    """The name comes from the job alone (the settings are given once, to the job), and is the one hosts gave
    before it did: a run cancelled under an older version resumes. The digests below are the older version's for
    one run, except where the run trains on copies (named by their version since version 2: version 3's copies
    differ, and the default's settings changed: rate 0.5 -> 0.75, then 32 -> 64 copies) and for a run without
    copies (named by none of their settings since then: before, codeswitch 0 put the rate in). The default job
    trains DEFAULT_RUNS runs since then (4, then 8), and is named by them."""
    from babelclip.training.pipeline import host_checkpoint_path

    names = [os.path.relpath(host_checkpoint_path(_host_job(tmp_path, **copies)), tmp_path)
             for copies in ({"runs": 1}, {"codeswitch": 0, "runs": 1},
                            {"codeswitch": 2, "codeswitch_rate": 0.25, "runs": 1}, {})]
    assert names == [os.path.join("cache", "a-altclip-kd-linear-3-86c90c0a016c.ckpt"),
                     os.path.join("cache", "a-altclip-kd-linear-3-18e3bb4940ca.ckpt"),
                     os.path.join("cache", "a-altclip-kd-linear-3-03ab4a7e2bff.ckpt"),
                     os.path.join("cache", "a-altclip-kd-linear-3-67269ed6ca6c.ckpt")]
    job = _host_job(tmp_path, codeswitch=0)
    job.checkpoint = host_checkpoint_path(job)
    assert job.checkpoint_path == job.checkpoint  # what run_pipeline resumes from


def test_another_loss_names_another_host_checkpoint(tmp_path):
    """A run cancelled under other loss settings (an older contrastive-weight default) is another run: the recipe's
    settings that differ from the paper's loss name the checkpoint; the paper's loss keeps its older name."""
    from babelclip.training.pipeline import host_checkpoint_path
    from babelclip.training.recipes import training_recipe

    def ckpt(recipe):
        job = _host_job(tmp_path)
        job.recipe = recipe
        return host_checkpoint_path(job)

    paper = ckpt(get_recipe("altclip-kd"))
    assert paper == host_checkpoint_path(_host_job(tmp_path))
    assert ckpt(get_recipe("altclip-kd", contrastive_weight=0.0)) == paper  # the default, given: the same run
    names = {paper, ckpt(get_recipe("altclip-kd", contrastive_weight=1.0)),
             ckpt(get_recipe("altclip-kd", contrastive_weight=2.0)),
             ckpt(get_recipe("altclip-kd", contrastive_weight=2.0, temperature=0.1))}
    assert len(names) == 4
    assert ckpt(training_recipe("altclip-kd")) == ckpt(training_recipe("altclip-kd")) in names - {paper}


def test_runs_zero_trains_the_architectures_default_and_names_the_checkpoint_as_that_many(tmp_path):
    """runs 0 (the front ends' default) is DEFAULT_RUNS for an architecture whose runs can be averaged and one run
    for the others; the host checkpoint is named by the runs trained, so runs 0 and runs DEFAULT_RUNS resume each
    other."""
    from babelclip.training.pipeline import AVERAGEABLE_ARCHS, DEFAULT_RUNS, default_runs, host_checkpoint_path

    assert DEFAULT_RUNS > 1 and AVERAGEABLE_ARCHS == ("linear",)
    assert _host_job(tmp_path).runs == 0 and _host_job(tmp_path).run_count == DEFAULT_RUNS == default_runs("linear")
    assert default_runs("mlp") == 1 and _host_job(tmp_path, runs=2).run_count == 2
    mlp = _host_job(tmp_path)
    mlp.arch = "mlp"
    assert mlp.run_count == 1
    pea = _host_job(tmp_path)  # a denoiser recipe: each step runs the denoiser, so one run unless asked
    pea.recipe = get_recipe("pea")
    assert pea.run_count == 1 and default_runs("linear", get_recipe("mclip-trikd")) == DEFAULT_RUNS

    def ckpt(**options):
        return host_checkpoint_path(_host_job(tmp_path, **options))

    assert ckpt() == ckpt(runs=DEFAULT_RUNS) != ckpt(runs=1)


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


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_runs_average_the_weights_of_one_run_per_seed(models, tmp_path):
    """runs=3 saves the mean of the adapters that seeds 0, 1 and 2 train alone (each its own initialisation,
    batch order and code-switched copies; no held-out split here, so all three see the same rows), records it
    in the metadata, reports one training bar over the three runs, and leaves no checkpoint behind."""
    import torch

    alone = [_weights(run_pipeline(_seeded(models, tmp_path, f"s{seed}", seed), Hooks(log=lambda line: None)).path)
             for seed in range(3)]
    seen, hooks = _recorder()
    out = run_pipeline(_seeded(models, tmp_path, "avg", 0, runs=3), hooks)
    averaged = _weights(out.path)
    assert set(averaged) == set(alone[0])
    for name, value in averaged.items():
        assert torch.allclose(value, sum(a[name] for a in alone) / 3, atol=1e-6), name
    assert not torch.allclose(alone[0]["proj.weight"], alone[1]["proj.weight"])  # (the runs differ)
    assert json.loads(read_adapter_spec(out.path).metadata["babelclip.recipe"])["runs"] == 3
    assert [d for s, d, t, _ in seen if s == "training"] == list(range(1, 19)) and seen[-1][2] == 18
    assert not list(tmp_path.glob("avg.safetensors.ckpt*"))


def _seeded(models, tmp_path, name, seed, **options) -> TrainJob:
    job = _job(models, tmp_path, name, val_fraction=0.0, **options)
    job.config.seed = seed
    return job


def test_a_stop_in_a_later_run_resumes_there_and_saves_the_same_average(models, tmp_path):
    import torch

    whole = _weights(run_pipeline(_seeded(models, tmp_path, "whole", 0, runs=2), Hooks(log=lambda line: None)).path)
    _, hooks = _recorder({"stage": "training", "done": 9})  # step 3 of the second run
    out = run_pipeline(_seeded(models, tmp_path, "cut", 0, runs=2), hooks)
    assert out.stopped and out.stage == "training" and out.train.step == 3 and out.path is None
    assert (tmp_path / "cut.safetensors.ckpt").exists() and (tmp_path / "cut.safetensors.ckpt.run1").exists()
    seen, hooks = _recorder()
    out = run_pipeline(_seeded(models, tmp_path, "cut", 0, runs=2), hooks)
    assert [d for s, d, _, _ in seen if s == "training"] == [10, 11, 12] and out.stage == "saved"
    resumed = _weights(out.path)
    assert all(torch.allclose(resumed[k], whole[k], atol=1e-6) for k in whole)
    assert not list(tmp_path.glob("cut.safetensors.ckpt*"))


@pytest.mark.parametrize("runs, arch, problem", [(-1, "linear", "from 0"), (2, "mlp", "only the linear")])
def test_runs_that_cannot_be_averaged_are_refused_before_any_work(models, tmp_path, runs, arch, problem):
    job = _job(models, tmp_path, "no", runs=runs)
    job.arch = arch
    with pytest.raises(InvalidDataError, match=problem):
        run_pipeline(job, Hooks(log=lambda line: None))
    assert not (tmp_path / "cache").exists()
