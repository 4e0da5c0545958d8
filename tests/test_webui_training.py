"""The web UI's training settings without a web UI: the tab's and the API's code-switched copies and runs reach
the pipeline's TrainJob (the web UI's ``modules`` stubbed). Training in a real Forge / Automatic1111: tests/webui/."""

from __future__ import annotations

import os
import sys
import threading
import types
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from babelclip.errors import InvalidDataError
from babelclip.models.encoder import EncoderInfo
from babelclip.training.codeswitch import DEFAULT_COPIES
from babelclip.training.pipeline import CODESWITCH_HELP, RUNS_HELP, host_checkpoint_path
from babelclip.training.trainer import DEFAULT_STEPS, TrainConfig
from babelclip.webui import training as webui_training
from babelclip.webui.training import TrainRequest, tab_request


def test_the_tab_and_the_api_default_to_the_pipelines_copies_and_zero_stays_zero():
    assert TrainRequest().codeswitch == DEFAULT_COPIES
    assert TrainRequest().steps == DEFAULT_STEPS == TrainConfig().steps  # the CLI's and the node's default too
    tab = ("enc", None, "a cat\t一只猫\tzh", "altclip-kd", "linear", 10, 1e-3, 4, 0, "n")
    assert tab_request(*tab, 0).codeswitch == 0  # not "empty, so the default"
    assert tab_request(*tab, 3.0).codeswitch == 3
    assert tab_request(*tab, None).codeswitch == tab_request(*tab, "").codeswitch == DEFAULT_COPIES
    assert tab_request(*tab).adapter_name == "n" and tab_request(*tab).steps == 10
    with pytest.raises(InvalidDataError, match="negative"):
        TrainRequest(encoder="enc", codeswitch=-1).check()


def test_the_tab_and_the_api_default_to_runs_zero_the_architectures_default_and_refuse_negative_runs():
    """Runs 0 (the default, also typed) is the pipeline's default for the architecture: DEFAULT_RUNS runs of the
    linear adapter, 1 of the others (TrainJob.run_count)."""
    assert TrainRequest().runs == 0
    tab = ("enc", None, "a cat\t一只猫\tzh", "altclip-kd", "linear", 10, 1e-3, 4, 0, "n", 0)
    assert tab_request(*tab).runs == tab_request(*tab, None).runs == tab_request(*tab, "").runs == 0
    assert tab_request(*tab, 3.0).runs == 3 and tab_request(*tab, 3.0).codeswitch == 0  # after codeswitch
    tab_request(*tab, 0).check()
    with pytest.raises(InvalidDataError, match=r"runs must be a whole number from 0 \(got -1\)"):
        tab_request(*tab, -1).check()
    TrainRequest(encoder="enc", arch="linear", runs=4).check()
    TrainRequest(encoder="enc", arch="mlp", runs=0).check()  # one run of an mlp
    for arch in ("mlp", "resampler"):  # the pipeline's rule: only the linear adapter's runs average
        with pytest.raises(InvalidDataError, match=rf"runs 2 averages .* only the linear adapter .*'{arch}'"):
            TrainRequest(encoder="enc", arch=arch, runs=2).check()
        TrainRequest(encoder="enc", arch=arch, runs=1).check()


def test_the_tabs_copies_and_runs_info_is_the_pipelines_help_text(monkeypatch):
    """The tab's Code-switched copies and Runs to average boxes show training.pipeline's one help text (the Train
    node's tooltip and the CLI's --help read it too); gradio and ``modules`` stubbed."""
    gr = mock.MagicMock(__version__="4.0.0")
    monkeypatch.setitem(sys.modules, "gradio", gr)
    monkeypatch.setitem(sys.modules, "modules", types.ModuleType("modules"))
    monkeypatch.setitem(sys.modules, "modules.shared", SimpleNamespace(state=SimpleNamespace()))
    monkeypatch.setattr(webui_training.runtime, "list_encoders", lambda: [])
    webui_training.ui_tab()
    info = {c.kwargs["label"]: c.kwargs.get("info") for c in gr.Number.call_args_list}
    assert info["Code-switched copies"] is CODESWITCH_HELP
    assert info["Runs to average"] is RUNS_HELP


@pytest.fixture
def stubbed_webui(monkeypatch, tmp_path):
    """The web UI's ``modules`` and the loaded models stubbed; returns the TrainJobs that ``train`` ran."""
    state = SimpleNamespace(begin=lambda **_: None, end=lambda: None, interrupted=False, textinfo=None,
                            sampling_step=0, sampling_steps=0, job_count=0)
    stubs = {"modules": types.ModuleType("modules"),
             "modules.call_queue": SimpleNamespace(queue_lock=threading.Lock()),
             "modules.devices": SimpleNamespace(device=torch.device("cpu")),
             "modules.shared": SimpleNamespace(state=state)}
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    family = SimpleNamespace(label="SD 1.x", name="sd1")
    teacher = SimpleNamespace(source=str(tmp_path / "model.safetensors"), family=family, clip_skip=None,
                              fingerprint="t1")
    encoder = SimpleNamespace(info=EncoderInfo("e", "xlm-roberta", 32, 2, 100, "e1", weights="w1"))
    monkeypatch.setattr(webui_training, "_loaded_model", lambda: object())
    monkeypatch.setattr(webui_training, "checkpoint_teacher", lambda model: teacher)
    monkeypatch.setattr(webui_training, "teacher_agreement", lambda model, teacher: 1.0)
    monkeypatch.setattr(webui_training, "resolve_inside", lambda roots, name, what: str(tmp_path / name))
    monkeypatch.setattr(webui_training.runtime, "encoder_dir", lambda: str(tmp_path))
    monkeypatch.setattr(webui_training.runtime, "adapter_dir", lambda: str(tmp_path))
    monkeypatch.setattr(webui_training.runtime, "_kept", lambda kind, key, load: encoder)
    jobs = []

    def run_pipeline(job, hooks):
        jobs.append(job)
        return SimpleNamespace(stopped=False, stage="done", train=SimpleNamespace(step=job.config.steps), report=None)

    monkeypatch.setattr(webui_training, "run_pipeline", run_pipeline)
    return jobs


@pytest.mark.parametrize("copies", [0, 3])
def test_the_requests_copies_reach_the_train_job_and_name_its_checkpoint(copies, stubbed_webui):
    jobs = stubbed_webui
    request = TrainRequest(encoder="enc", prompts="a cat\t一只猫\tzh\na dog\t一只狗\tzh", steps=5, codeswitch=copies)
    webui_training.train(request, on_log=lambda line: None)
    webui_training.train(TrainRequest(encoder="enc", prompts=request.prompts, steps=5), on_log=lambda line: None)
    assert [job.codeswitch for job in jobs] == [copies, DEFAULT_COPIES]
    assert jobs[0].checkpoint != jobs[1].checkpoint  # a resume never continues a run on other copies
    # named by the job itself: the copies it trains on are the ones its checkpoint's name says
    assert [job.checkpoint for job in jobs] == [host_checkpoint_path(job) for job in jobs]
    assert all(os.path.dirname(job.checkpoint) == job.cache_dir for job in jobs)


def test_the_requests_runs_reach_the_train_job_and_name_its_checkpoint(stubbed_webui):
    jobs = stubbed_webui
    prompts = "a cat\t一只猫\tzh\na dog\t一只狗\tzh"
    for runs in (2, 1):
        webui_training.train(TrainRequest(encoder="enc", prompts=prompts, arch="linear", steps=5, runs=runs),
                             on_log=lambda line: None)
    assert [job.runs for job in jobs] == [2, 1]
    assert jobs[0].checkpoint != jobs[1].checkpoint  # a resume never continues a run of another count
    assert [job.checkpoint for job in jobs] == [host_checkpoint_path(job) for job in jobs]
    with pytest.raises(InvalidDataError, match="only the linear adapter"):  # refused before the queue lock
        webui_training.train(TrainRequest(encoder="enc", prompts=prompts, arch="mlp", runs=2))
    assert len(jobs) == 2


def test_an_interrupted_runs_message_names_the_stage_it_stopped_in():
    from babelclip.training.pipeline import CODESWITCH_STAGE

    assert webui_training.stopped_message("training", 3, 10) == ("interrupted at step 3 of 10; start the same "
                                                                 "settings again to resume there")
    assert "code-switched copies" in webui_training.stopped_message(CODESWITCH_STAGE, 0, 10)
    assert "caching features" in webui_training.stopped_message("features", 0, 10)
