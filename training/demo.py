"""``python -m babelclip.training demo``: the whole training pipeline on tiny random models, in two or three minutes.

It builds a tiny random multilingual encoder and a tiny random SD1.5-layout CLIP (no download), runs the same
code as ``train`` on the shipped prompt set, and evaluates the adapter on held-out prompts **before and after
training**, beside the recall that chance gives. The tiny encoder is random and relates no language to another,
so what the trained adapter gets right above the untrained one it learned from the training prompts, in seconds.
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
import time

from ..models.files import atomic_write

__all__ = ["run_demo", "compare", "comparison_text", "DEMO_DEFAULTS", "DESCRIPTION"]

#: what the demo trains by default: a linear adapter learns most per second from the tiny models
DEMO_DEFAULTS = {"steps": 300, "lr": 3e-2, "batch_size": 32, "recipe": "altclip-kd", "arch": "linear", "runs": 0}
ENCODER_WIDTH = 128  # wide enough that the tiny encoder's states tell its tokens apart, still fast
TEACHER_LAYERS = 1  # the teacher runs 77 tokens at CLIP-L width; one layer halves the caching time
VAL_FRACTION = 0.1

DESCRIPTION = (
    "Train and evaluate a language adapter end to end with tiny random models: no download, two or three minutes on "
    "2 CPU cores. The adapter is evaluated on held-out prompts before and after training; good is the trained "
    "adapter's recall well above the untrained one's, which is chance.")

INTRO = """\
BabelCLIP training demo: tiny random models built here (no download), {prompts} shipped prompts
in {languages} languages. It trains an adapter on {train:.0%} of the prompts, then asks the untrained and
the trained adapter to match each held-out translation with its English prompt (recall R@k,
k = 1, 5, 10) and compares their conditioning with the teacher's (cosine).
Good: the trained adapter well above the untrained one, which scores chance. The tiny encoder is
random and knows no language, so all it gets right it learned here; a real multilingual encoder
gives the adapter far more to use.
"""

_ROWS = (("R@1", "r@1"), ("R@5", "r@5"), ("R@10", "r@10"), ("mean recall", "mean_recall"),
         ("cosine", "cosine"))


def _tiny_models(work: str, pairs) -> tuple[str, str, str]:
    """The tiny encoder, checkpoint and CLIP tokenizer for ``pairs``, built once per work folder."""
    from ..models.tiny import build_tiny_clip_checkpoint, build_tiny_encoder

    enc = os.path.join(work, "text_encoders", f"tiny-xlm-roberta-{ENCODER_WIDTH}")
    if not os.path.exists(os.path.join(enc, "config.json")):
        build_tiny_encoder(enc, "xlm-roberta", hidden_size=ENCODER_WIDTH, max_positions=128,
                           extra_text=[p.text for p in pairs])
    ckpt_dir = os.path.join(work, "checkpoints", f"tiny-sd15-{TEACHER_LAYERS}-layer")
    ckpt, tok = os.path.join(ckpt_dir, "tiny-sd15-text-encoder.safetensors"), os.path.join(ckpt_dir, "clip_tokenizer")
    if not os.path.exists(ckpt):
        ckpt, tok = build_tiny_clip_checkpoint(ckpt_dir, num_layers=TEACHER_LAYERS,
                                               extra_text=sorted({p.en for p in pairs}))
    return enc, ckpt, tok


def chance(report: dict) -> dict[str, float]:
    """Recall of a random ranking on the same pairs: k / n per language (n pairs), averaged like the report."""
    sizes = [m["pairs"] for m in report["languages"].values()]
    out = {f"r@{k}": sum(min(k, n) / n for n in sizes) / len(sizes) for k in (1, 5, 10)}
    out["mean_recall"] = sum(out.values()) / 3
    return out


def compare(untrained: dict, trained: dict) -> dict:
    """The averages of two evaluations of the same held-out pairs, and chance on them."""
    keys = [key for _, key in _ROWS]
    return {"pairs": trained["pairs"], "languages": len(trained["languages"]), "chance": chance(trained),
            "untrained": {k: untrained["average"][k] for k in keys},
            "trained": {k: trained["average"][k] for k in keys}}


def comparison_text(comparison: dict) -> str:
    """A small table (chance / untrained / trained) and one sentence saying whether the adapter learned."""
    c = comparison
    lines = [f"Held-out pairs: {c['pairs']} in {c['languages']} languages, the same for both adapters "
             f"(R@k: both directions averaged).",
             f"{'':12} {'chance':>8} {'untrained':>10} {'trained':>8}"]
    for label, key in _ROWS:
        base = f"{c['chance'][key]:8.3f}" if key in c["chance"] else f"{'~0':>8}"
        lines.append(f"{label:12} {base} {c['untrained'][key]:10.3f} {c['trained'][key]:8.3f}")
    before, after, luck = c["untrained"]["mean_recall"], c["trained"]["mean_recall"], c["chance"]["mean_recall"]
    if after > max(before, luck) * 1.25:
        verdict = (f"The pipeline learns: trained, the adapter's mean recall is {after / luck:.1f}x chance "
                   f"(untrained {before / luck:.1f}x), and its cosine to the teacher went from "
                   f"{c['untrained']['cosine']:.2f} to {c['trained']['cosine']:.2f}.")
    else:
        verdict = "The trained adapter is not clearly above the untrained one: train longer (--steps) or change --lr."
    return "\n".join(lines + textwrap.wrap(verdict, 100))


def _train_argv(args, work: str, enc: str, ckpt: str, tok: str) -> list[str]:
    from .cli import SHIPPED_PROMPTS

    out = os.path.join(work, "babelclip", f"demo-{args.arch}-{args.recipe}.safetensors")
    return ["train", "--teacher", ckpt, "--clip-tokenizer", tok, "--encoder", enc, "--data", SHIPPED_PROMPTS,
            "--recipe", args.recipe, "--arch", args.arch, "--steps", str(args.steps), "--lr", str(args.lr),
            "--batch-size", str(args.batch_size), "--runs", str(args.runs), "--val-fraction", str(VAL_FRACTION),
            "--out", out,
            "--cache-dir", os.path.join(work, "cache"), "--overwrite"]


def run_demo(args) -> int:
    """Build the tiny models, then cache, evaluate untrained, train, evaluate trained, compare (see module doc)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # the demo may run inside another program (tests)


def _run(args) -> int:
    from .cli import SHIPPED_PROMPTS, build_parser, check_train_args, run_train
    from .data import read_pairs
    from .evaluation import evaluate_adapter

    started = time.perf_counter()
    pairs = read_pairs(SHIPPED_PROMPTS)
    print(INTRO.format(prompts=len({p.en for p in pairs}), languages=len({p.lang for p in pairs}),
                       train=1 - VAL_FRACTION))
    work = args.workdir or tempfile.mkdtemp(prefix="babelclip-train-demo-")
    argv = _train_argv(args, work, *_tiny_models(work, pairs))
    times = {"models": time.perf_counter() - started}
    print("the training part, as a command: python -m babelclip.training " + " ".join(argv) + "\n")
    train_args = build_parser().parse_args(argv)
    plan = check_train_args(train_args)
    seen = {}

    def prepared(adapter, held_out) -> None:  # the same held-out features, before any step
        seen["untrained"] = evaluate_adapter(adapter, held_out)
        times["features"] = time.perf_counter() - started - times["models"]

    result = run_train(train_args, plan, prepared=prepared)
    if result.stopped:
        print(f"stopped at step {result.train.step if result.train else 0}/{plan.config.steps}; run the demo "
              f"again with --workdir {work} and the same options to resume")
        return 130
    times["training"] = result.seconds
    comparison = compare(seen["untrained"], result.report)
    comparison["seconds"] = round(time.perf_counter() - started, 1)
    path = plan.out[: -len(".safetensors")] + ".comparison.json"
    atomic_write(path, lambda tmp: _write_json(tmp, comparison), "demo comparison")
    print("\n" + comparison_text(comparison))
    rest = comparison["seconds"] - sum(times.values())
    runs = result.metadata["recipe"].get("runs", 1)  # what the job trained (the metadata names runs above 1)
    steps = f"{runs} runs of {plan.config.steps} training steps" if runs > 1 else f"{plan.config.steps} training steps"
    print(f"\nDemo files in {work}. Finished in {comparison['seconds']:.0f} s: models {times['models']:.0f} s, "
          f"loading and caching features {times['features']:.0f} s, {steps} {times['training']:.0f} s, "
          f"evaluation and saving {rest:.0f} s.")
    return 0


def _write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
