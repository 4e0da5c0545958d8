"""python -m babelclip.training: help, train -> adapter with metadata and evaluation, eval -> JSON, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from babelclip.models import read_adapter_spec
from babelclip.models.tiny import build_tiny_clip_checkpoint
from babelclip.training.cli import main

from . import synthetic


@pytest.mark.parametrize("command", ["demo", "cache", "train", "eval"])
def test_help_of_every_command(command):
    out = subprocess.run([sys.executable, "-m", "babelclip.training", command, "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "usage: python -m babelclip.training " + command in out.stdout


@pytest.fixture(scope="module")
def setup(tmp_path_factory, encoder_dirs):
    d = tmp_path_factory.mktemp("cli")
    ckpt, tok = build_tiny_clip_checkpoint(d / "ckpt", extra_text=synthetic.all_text())
    rows = ["en\ttext\tlang"]
    for en, de, ru in zip(synthetic.corpus("en"), synthetic.corpus("de"), synthetic.corpus("ru")):
        rows += [f"{en}\t{de}\tde", f"{en}\t{ru}\tru"]
    (d / "pairs.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    common = ["--teacher", ckpt, "--clip-tokenizer", tok, "--encoder", encoder_dirs["xlm-roberta"],
              "--cache-dir", str(d / "cache")]
    return d, common


def test_train_writes_an_adapter_with_metadata_and_evaluation(setup, capsys):
    d, common = setup
    out = d / "adapters" / "de-ru.safetensors"
    assert main(["train", *common, "--data", str(d / "pairs.tsv"), "--recipe", "altclip-kd", "--arch", "linear",
                 "--steps", "20", "--batch-size", "16", "--out", str(out)]) == 0
    spec = read_adapter_spec(out)
    assert spec.arch == "linear" and spec.family.name == "sd1"
    recipe = json.loads(spec.metadata["babelclip.recipe"])
    assert recipe["name"] == "altclip-kd" and recipe["steps"] == 20 and recipe["batch_size"] == 16
    assert json.loads(spec.metadata["babelclip.languages"]) == ["de", "ru"]
    metrics = json.loads(spec.metadata["babelclip.metrics"])
    assert {"r@1", "r@5", "r@10", "mean_recall", "cosine"} <= set(metrics)
    assert len(json.loads(spec.metadata["babelclip.teacher"])["fingerprint"]) == 16
    assert (d / "adapters" / "de-ru.eval.png").exists() and not (d / "adapters" / "de-ru.safetensors.ckpt").exists()
    assert "| de |" in capsys.readouterr().out

    report = d / "eval" / "report.json"
    assert main(["eval", *common, "--data", str(d / "pairs.tsv"), "--adapter", str(out), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert set(data["languages"]) == {"de", "ru"}
    for m in [*data["languages"].values(), data["average"]]:
        assert set(m) == {"r@1", "r@5", "r@10", "mean_recall", "cosine"}


def test_errors_are_one_line_and_exit_2(setup, capsys):
    d, common = setup
    code = main(["train", *common, "--data", str(d / "missing.tsv"), "--out", str(d / "x.safetensors")])
    assert code == 2 and "missing.tsv" in capsys.readouterr().err
    code = main(["train", *common, "--data", str(d / "pairs.tsv"), "--steps", "0", "--out", str(d / "y.safetensors")])
    assert code == 2 and "steps must be at least 1" in capsys.readouterr().err
