"""python -m babelclip.training: help, train -> adapter with metadata and evaluation, eval -> JSON, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from babelclip.models import read_adapter_spec
from babelclip.models.tiny import build_tiny_clip_checkpoint
from babelclip.training.cli import main
from babelclip.training.recipes import TRAINING_DEFAULTS, training_recipe

from . import synthetic


@pytest.mark.parametrize("command", ["demo", "cache", "train", "eval"])
def test_help_of_every_command(command):
    out = subprocess.run([sys.executable, "-m", "babelclip.training", command, "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "usage: python -m babelclip.training " + command in out.stdout


def _subparsers():
    import argparse

    from babelclip.training.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_says_what_it_is_and_its_default():
    """--help of each command: every option has a text, and every option with a default shows it."""
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if not action.option_strings or action.option_strings == ["-h", "--help"]:
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help text"
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False) and not action.required \
                    and action.option_strings != ["-h", "--help"]:
                assert f"(default: {action.default})" in text, f"{name} {action.option_strings[0]}: no default"
    train = " ".join(_subparsers()["train"].format_help().split())
    for shown in ("--steps STEPS optimizer steps (default: 1000)", "--lr LR peak learning rate",
                  "--seed SEED seed of", "--runs RUNS Train this many independent runs", "--checkpoint-every CHECKPOINT_EVERY steps between resumable checkpoints",
                  "(default: " + os.path.join(os.path.expanduser("~"), ".cache", "babelclip", "features") + ")"):
        assert shown in train


def test_train_help_of_copies_and_runs_is_the_text_the_node_and_the_web_ui_show():
    """--codeswitch and --runs read the one help text of training.pipeline (the Train node's tooltip and the web UI
    tab's info read it too: tests/integration/test_nodes_inprocess.py, tests/test_webui_training.py)."""
    from babelclip.training.codeswitch import DEFAULT_COPIES
    from babelclip.training.pipeline import CODESWITCH_HELP, RUNS_HELP
    from babelclip.training.trainer import DEFAULT_STEPS, TrainConfig

    train = _subparsers()["train"]
    actions = {a.dest: a for a in train._actions}
    assert actions["codeswitch"].help.replace("%%", "%") == CODESWITCH_HELP
    assert actions["runs"].help.replace("%%", "%") == RUNS_HELP
    text = " ".join(train.format_help().split())
    assert f"--codeswitch CODESWITCH {' '.join(CODESWITCH_HELP.split())} (default: {DEFAULT_COPIES})" in text
    assert f"--runs RUNS {' '.join(RUNS_HELP.split())} (default: 0)" in text
    assert f"(default: {DEFAULT_STEPS})" in text and actions["steps"].default == DEFAULT_STEPS == TrainConfig().steps
    demo = _subparsers()["demo"]  # the demo trains with the same default and says so in the same words
    assert f"--runs RUNS {' '.join(RUNS_HELP.split())} (default: 0)" in " ".join(demo.format_help().split())


def test_recipe_and_arch_choices_come_from_the_registries():
    from babelclip.models.adapters import ARCHITECTURES, trainable_architectures
    from babelclip.training.recipes import RECIPES

    subs = _subparsers()
    for name in ("train", "demo"):
        actions = {a.dest: a for a in subs[name]._actions}
        assert list(actions["arch"].choices) == trainable_architectures()
        assert set(ARCHITECTURES) - set(trainable_architectures()) == {"mulan"}  # converted MuLan files only
        recipes = set(actions["recipe"].choices)
        assert recipes == set(RECIPES) if name == "train" else {"altclip-kd", "mclip-trikd"} <= recipes < set(RECIPES)


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
    # its loss weights as the run used them: BabelCLIP's training defaults (the InfoNCE term on)
    assert recipe["options"] == vars(training_recipe("altclip-kd"))
    assert recipe["options"]["contrastive_weight"] == TRAINING_DEFAULTS["altclip-kd"]["contrastive_weight"] == 2
    assert json.loads(spec.metadata["babelclip.languages"]) == ["de", "ru"]
    metrics = json.loads(spec.metadata["babelclip.metrics"])
    assert {"r@1", "r@5", "r@10", "mean_recall", "cosine"} <= set(metrics)
    assert len(json.loads(spec.metadata["babelclip.teacher"])["fingerprint"]) == 16
    assert (d / "adapters" / "de-ru.eval.png").exists() and not (d / "adapters" / "de-ru.safetensors.ckpt").exists()
    assert "| de |" in capsys.readouterr().out
    card = (d / "adapters" / "de-ru.README.md").read_text(encoding="utf-8")  # its model card, with the table
    assert "library_name: babelclip" in card and "recipe: altclip-kd" in card and "| de |" in card

    report = d / "eval" / "report.json"
    assert main(["eval", *common, "--data", str(d / "pairs.tsv"), "--adapter", str(out), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert set(data["languages"]) == {"de", "ru"}
    for m in [*data["languages"].values(), data["average"]]:  # the encoder's own R@1 and the transfer beside
        assert set(m) == {"r@1", "r@5", "r@10", "mean_recall", "cosine", "encoder_r@1", "transfer"}
    for m in data["languages"].values():
        assert m["transfer"] == pytest.approx(m["r@1"] / m["encoder_r@1"])
    assert "encoder_r@1" in json.loads(spec.metadata["babelclip.metrics"])  # training's held-out evaluation too


def test_train_runs_the_pipeline_with_the_steady_heap(setup, tmp_path):
    """The command line is a process of its own: it asks train() for the glibc allocator tuning (a host does not)."""
    from babelclip.training.cli import build_parser, check_train_args, train_job

    d, common = setup
    args = build_parser().parse_args(["train", *common, "--data", str(d / "pairs.tsv"), "--recipe", "altclip-kd",
                                      "--arch", "linear", "--steps", "2", "--out", str(tmp_path / "h.safetensors")])
    job = train_job(args, check_train_args(args))
    assert job.steady_heap and job.report_files and job.checkpoint_path == str(tmp_path / "h.safetensors.ckpt")


@pytest.mark.parametrize("bad, message", [
    (["--device", "cuda:0"], "--device 'cuda:0'"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--data", "missing.tsv"], "missing.tsv"),
    (["--layer", "middle"], "--layer 'middle'"),
    (["--clip-vision", "."], "--clip-vision is used by mclip-trikd only"),
    (["--recipe", "pea"], "diffusers folder with unet/ and vae/"),
    (["--batch-size", "100000"], "larger than the"),
    (["--codeswitch", "-1"], "--codeswitch -1 is negative"),
    (["--codeswitch-rate", "1.5"], "--codeswitch-rate 1.5 is not between 0 and 1"),
])
def test_train_checks_its_arguments_before_loading_a_model(setup, tmp_path, capsys, bad, message):
    """The encoder given is an empty folder: an error about it would mean a model was loaded before the check."""
    import torch

    d, common = setup
    if bad[:2] == ["--device", "cuda:0"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    empty = tmp_path / "not-an-encoder"
    empty.mkdir()
    args = dict(zip(common[::2], common[1::2]))
    args.update({"--encoder": str(empty), "--cache-dir": str(tmp_path / "cache"), "--data": str(d / "pairs.tsv"),
                 "--out": str(tmp_path / "a.safetensors")})
    args.update(dict(zip(bad[::2], bad[1::2])))
    if args["--data"] == "missing.tsv":
        args["--data"] = str(tmp_path / "missing.tsv")
    assert main(["train", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "a.safetensors.ckpt").exists()


@pytest.mark.parametrize("bad, other", [(["--codeswitch", "-1"], "rate"), (["--codeswitch-rate", "1.5"], "copies")])
def test_a_codeswitch_error_names_only_its_own_flag(setup, tmp_path, capsys, bad, other):
    d, common = setup
    assert main(["train", *common, "--data", str(d / "pairs.tsv"), "--out", str(tmp_path / "cs.safetensors"),
                 *bad]) == 2
    err = capsys.readouterr().err
    assert f"{bad[0]} {bad[1]} " in err and ": give the " in err  # the value given, then what to give instead
    assert other not in err and err.count("--codeswitch") == 1


@pytest.mark.parametrize("options, expected", [
    (["--codeswitch", "0"], {"copies": 0, "pairs": 0}),
    (["--codeswitch", "2", "--codeswitch-rate", "0.3"], {"copies": 2, "rate": 0.3}),
])
def test_train_records_its_code_switched_copies(setup, tmp_path, options, expected):
    d, common = setup
    out = tmp_path / "cs.safetensors"
    assert main(["train", *common, "--data", str(d / "pairs.tsv"), "--arch", "linear", "--steps", "2",
                 "--batch-size", "8", "--out", str(out), *options]) == 0
    switched = json.loads(read_adapter_spec(out).metadata["babelclip.recipe"])["codeswitch"]
    assert switched.items() >= expected.items()
    card = (tmp_path / "cs.README.md").read_text(encoding="utf-8")
    if expected["copies"] == 0:  # trained on the data alone, and the card says nothing of copies
        assert "code-switched" not in card
    else:  # at most 2 per distinct English training prompt
        assert 0 < switched["pairs"] <= 2 * len(set(synthetic.corpus("en")))
        assert f"Also trained on {switched['pairs']} code-switched copies" in card and "up to 2 per" in card


def test_train_runs_averages_and_records_them(setup, tmp_path):
    d, common = setup
    out = tmp_path / "runs.safetensors"
    assert main(["train", *common, "--data", str(d / "pairs.tsv"), "--arch", "linear", "--steps", "2",
                 "--batch-size", "8", "--out", str(out), "--runs", "2"]) == 0
    assert json.loads(read_adapter_spec(out).metadata["babelclip.recipe"])["runs"] == 2
    assert "average of 2 runs (seeds 0 to 1" in (tmp_path / "runs.README.md").read_text(encoding="utf-8")
    assert not list(tmp_path.glob("runs.safetensors.ckpt*"))


@pytest.mark.parametrize("options, problem", [(["--runs", "-1"], "--runs -1: runs must be a whole number from 0"),
                                              (["--runs", "2", "--arch", "mlp"],
                                               "--runs 2: runs 2 averages the weights of independent runs, which "
                                               "only the linear adapter allows (not 'mlp')")])
def test_train_refuses_runs_it_cannot_average(setup, tmp_path, capsys, options, problem):
    d, common = setup
    assert main(["train", *common, "--data", str(d / "pairs.tsv"), "--out", str(tmp_path / "r.safetensors"),
                 *options]) == 2
    assert problem in capsys.readouterr().err and not (tmp_path / "r.safetensors").exists()


def test_unknown_recipe_or_arch_is_an_argparse_error(setup, capsys):
    d, common = setup
    for option in ("--recipe", "--arch"):
        with pytest.raises(SystemExit) as e:
            main(["train", *common, "--data", str(d / "pairs.tsv"), "--out", str(d / "z.safetensors"), option, "nope"])
        assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_errors_are_one_line_and_exit_2(setup, capsys):
    d, common = setup
    code = main(["train", *common, "--data", str(d / "missing.tsv"), "--out", str(d / "x.safetensors")])
    assert code == 2 and "missing.tsv" in capsys.readouterr().err
    code = main(["train", *common, "--data", str(d / "pairs.tsv"), "--steps", "0", "--out", str(d / "y.safetensors")])
    assert code == 2 and "steps must be at least 1" in capsys.readouterr().err


def _tiny_diffusers(folder, ckpt, tok):
    """A diffusers folder: the tiny CLIP as text_encoder, a tiny UNet (768-wide cross-attention) and VAE."""
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextConfig

    from babelclip.models.teacher import _hf_config

    sd = {k[len("cond_stage_model.transformer."):]: v for k, v in load_file(ckpt).items()}
    (folder / "text_encoder").mkdir(parents=True)
    save_file(sd, str(folder / "text_encoder" / "model.safetensors"))
    cfg: CLIPTextConfig = _hf_config(sd, "quick_gelu", 0, 0)
    cfg.save_pretrained(folder / "text_encoder")
    shutil.copytree(tok, folder / "tokenizer")
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
                         attention_head_dim=8, norm_num_groups=8).save_pretrained(folder / "unet")
    AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  layers_per_block=1).save_pretrained(folder / "vae")
    (folder / "model_index.json").write_text("{}")
    return folder


def test_unet_recipe_from_the_cli_with_images(setup, encoder_dirs, caplog):
    """A v-prediction pipeline (its scheduler config says so) trains towards v; a damaged config is refused
    before any image is encoded."""
    from diffusers import EulerDiscreteScheduler

    d, common = setup
    teacher = _tiny_diffusers(d / "sd-tiny", common[1], common[3])
    EulerDiscreteScheduler(prediction_type="v_prediction").save_pretrained(teacher / "scheduler")
    _image_data(d / "images.tsv", "zh", 24, (20, 24), lambda i: (i * 10 % 255, 80, 160), "img")
    out = d / "pea.safetensors"
    args = ["train", "--teacher", str(teacher), "--encoder", encoder_dirs["xlm-roberta"], "--cache-dir",
            str(d / "cache"), "--data", str(d / "images.tsv"), "--recipe", "pea", "--arch", "mlp",
            "--steps", "4", "--batch-size", "4", "--resolution", "16", "--out", str(out)]
    with caplog.at_level("INFO", logger="babelclip"):
        assert main(args) == 0
    assert "The UNet predicts v" in caplog.text and "scheduler_config.json" in caplog.text
    recipe = json.loads(read_adapter_spec(out).metadata["babelclip.recipe"])
    # a denoiser recipe's rows each need their image: no code-switched copies, and nothing says otherwise
    assert recipe["name"] == "pea" and "codeswitch" not in recipe
    assert "code-switched" not in (d / "pea.README.md").read_text(encoding="utf-8")
    assert any(p.name.startswith("latents-") for p in (d / "cache").iterdir())

    (teacher / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "v_pred')
    shutil.rmtree(d / "cache")
    assert main([*args[:-1], str(d / "other.safetensors")]) == 2
    assert not (d / "other.safetensors").exists()
    assert not list((d / "cache").glob("latents-*"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_accelerate_run(setup, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m babelclip.training train ...` on a CPU-only machine:
    accelerate's torchrun launcher starts two processes, which train together over gloo."""
    import os

    d, common = setup
    out = tmp_path / "ddp.safetensors"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), "-m", "babelclip.training", "train",
           *common, "--data", str(d / "pairs.tsv"), "--arch", "mlp", "--steps", "6", "--batch-size", "8",
           "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    recipe = json.loads(read_adapter_spec(out).metadata["babelclip.recipe"])
    assert recipe["steps"] == 6 and recipe["batch_size"] == 8
    assert "data parallel over 2 processes" in run.stdout
    assert run.stdout.count("saved ") == 1  # only the main process writes


def test_ctrl_c_leaves_a_resumable_checkpoint(setup, tmp_path):
    import os
    import signal
    import time

    d, common = setup
    out = tmp_path / "sig.safetensors"
    cmd = [sys.executable, "-m", "babelclip.training", "train", *common, "--data", str(d / "pairs.tsv"),
           "--arch", "linear", "--steps", "300", "--batch-size", "8", "--checkpoint-every", "1000", "--out", str(out)]
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
        deadline = time.monotonic() + 120
        while "training:" not in err.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + err.read_text()[-2000:]
    assert "stopped at step" in stdout and os.path.exists(str(out) + ".ckpt") and not out.exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert out.exists() and not os.path.exists(str(out) + ".ckpt")


def test_mclip_trikd_with_images_and_a_clip_vision_model(setup, encoder_dirs, tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    d, common = setup
    vision = tmp_path / "clip-vision"
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=8,
                                                   projection_dim=768)).save_pretrained(vision)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(vision)
    _image_data(tmp_path / "img.tsv", "ru", 16, (40, 36), lambda i: (i * 15 % 255, 30, 200), "v")
    out = tmp_path / "trikd.safetensors"
    cache = tmp_path / "cache"
    assert main(["train", *common[:4], "--encoder", encoder_dirs["xlm-roberta"], "--cache-dir", str(cache),
                 "--data", str(tmp_path / "img.tsv"), "--recipe", "mclip-trikd", "--arch", "linear", "--steps", "3",
                 "--batch-size", "4", "--clip-vision", str(vision), "--out", str(out)]) == 0
    assert any(p.name.startswith("image_embeds-") for p in cache.iterdir())
    recipe = json.loads(read_adapter_spec(out).metadata["babelclip.recipe"])
    assert recipe["name"] == "mclip-trikd" and set(recipe["final_terms"]) == {"itc", "ttc"}
    assert "codeswitch" not in recipe  # its rows carry images, which a code-switched copy has not


def _image_data(path, lang, n, size, color, prefix):
    """A parallel data file of ``n`` English/``lang`` pairs, each with its own small solid-colour image."""
    from PIL import Image

    rows = ["en\ttext\tlang\timage"]
    for i, (en, text) in enumerate(zip(synthetic.corpus("en")[:n], synthetic.corpus(lang)[:n])):
        Image.new("RGB", size, color(i)).save(path.parent / f"{prefix}{i}.png")
        rows.append(f"{en}\t{text}\t{lang}\t{prefix}{i}.png")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
