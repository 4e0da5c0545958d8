"""Model cards for adapters: a README.md with the Hub's YAML front matter, written beside every adapter.

:func:`model_card` builds the card of an adapter file from its header alone (``babelclip.*`` metadata), plus the
evaluation table when the caller has one. The front matter is what the Hub indexes: ``library_name: babelclip``,
the encoder's repository as ``base_model`` (known when the encoder was fetched with ``python -m babelclip fetch``,
or given), the languages, tags, a licence when one is known, and a ``babelclip`` mapping with the target family,
architecture, recipe, encoder and layer. The body says what the adapter does, how it was made and measured, and
how to use it in ComfyUI, the web UIs and Python.

:func:`save_adapter <babelclip.models.adapter_file.save_adapter>` writes the card as ``<adapter
stem>.README.md`` (several adapters share ``models/babelclip``); ``python -m babelclip push`` uploads it as the
repository's ``README.md``.
"""

from __future__ import annotations

import json
import os

from .adapter_file import AdapterSpec, read_adapter_spec
from .files import atomic_write

__all__ = ["CARD_SUFFIX", "card_path", "evaluation_beside", "model_card", "write_card"]

CARD_SUFFIX = ".README.md"


def card_path(adapter_path: str | os.PathLike) -> str:
    """``x.safetensors`` -> ``x.README.md``."""
    path = os.fspath(adapter_path)
    stem = path[: -len(".safetensors")] if path.endswith(".safetensors") else path
    return stem + CARD_SUFFIX


def evaluation_beside(adapter_path: str | os.PathLike) -> str | None:
    """The evaluation table written beside an adapter (``<stem>.eval.md``, training's report), or None."""
    path = os.fspath(adapter_path)
    report = (path[: -len(".safetensors")] if path.endswith(".safetensors") else path) + ".eval.md"
    if not os.path.isfile(report):
        return None
    with open(report, encoding="utf-8") as f:
        return f.read()


def _meta(spec: AdapterSpec, key: str, default=None):
    raw = spec.metadata.get("babelclip." + key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _languages(spec: AdapterSpec) -> list[str]:
    langs = _meta(spec, "languages", [])
    return sorted({str(x) for x in langs if isinstance(x, str) and x not in ("*", "")}) if isinstance(langs, list) \
        else []


def _front_matter(spec: AdapterSpec, base_model: str | None, license: str | None) -> str:
    from huggingface_hub import ModelCardData

    recipe = _meta(spec, "recipe", {})
    source = _meta(spec, "source", {})
    enc = spec.encoder
    babel = {"family": spec.family.name, "architecture": spec.arch,
             "recipe": recipe.get("name") if isinstance(recipe, dict) else recipe,
             "encoder": {k: enc.get(k) for k in ("name", "model_type", "hidden_size", "num_layers", "fingerprint")},
             "layer": spec.layer}
    if enc.get("weights"):  # the checkpoint it was trained on (adapters saved before it was recorded lack it)
        babel["encoder"]["weights"] = enc["weights"]
    if isinstance(source, dict) and source:
        babel["converted_from"] = source
    data = ModelCardData(
        library_name="babelclip", base_model=base_model, language=_languages(spec) or None,
        license=license, tags=["babelclip", "language-adapter", "text-to-image", "multilingual",
                               "stable-diffusion", spec.family.name],
        babelclip=babel)
    return data.to_yaml()


def _evaluation_section(spec: AdapterSpec, evaluation: str | None) -> list[str]:
    if evaluation:
        return ["## Evaluation", "",
                "Retrieval between the adapter's conditioning of each held-out translation and the checkpoint's "
                "own CLIP conditioning of its English (R@k over the held-out pairs of each language; "
                "`encoder_r@1` is the frozen encoder's own retrieval of the same pairs, `transfer` the share of it "
                "the adapter keeps).", "", evaluation.strip(), ""]
    metrics = _meta(spec, "metrics", {})
    if isinstance(metrics, dict) and metrics:
        rows = [f"| {k} | {v:.3f} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
                for k, v in sorted(metrics.items())]
        return ["## Evaluation", "", "Averages over the held-out languages (the per-language table is in the "
                "evaluation report, `*.eval.md`, when one was written):", "", "| metric | value |", "|---|---|",
                *rows, ""]
    return ["## Evaluation", "", "Not evaluated: no held-out pairs were given when this adapter was made. "
            "`python -m babelclip.training eval` measures it on your own pairs.", ""]


def _made_section(spec: AdapterSpec) -> list[str]:
    recipe = _meta(spec, "recipe", {})
    source = _meta(spec, "source", {})
    teacher = _meta(spec, "teacher", {})
    lines = ["## How it was made", ""]
    if isinstance(source, dict) and source:
        lines.append("Converted with `python -m babelclip convert` from "
                     + ", ".join(f"{k}: `{v}`" for k, v in source.items() if v not in (None, "")) + ".")
    if isinstance(recipe, dict) and recipe:
        keys = ("steps", "lr", "batch_size", "train_pairs", "final_loss", "seconds")
        settings = ", ".join(f"{k} {recipe[k]}" for k in keys if k in recipe)
        opts = recipe.get("options") or {}
        lines.append(f"Recipe `{recipe.get('name')}`" + (f" ({', '.join(f'{k}={v}' for k, v in opts.items())})"
                                                          if opts else "") + (f": {settings}." if settings else "."))
        switched = recipe.get("codeswitch")
        if isinstance(switched, dict) and switched.get("pairs"):
            lines.append(f"Also trained on {switched['pairs']} code-switched copies of its English prompts (up to "
                         f"{switched.get('copies')} per prompt, words replaced at rate {switched.get('rate')}).")
        runs = recipe.get("runs")
        if isinstance(runs, int) and runs > 1:
            lines.append(f"Its weights are the average of {runs} runs (seeds {recipe.get('seed', 0)} to "
                         f"{recipe.get('seed', 0) + runs - 1}: initialisation, batch order and copies).")
    if isinstance(teacher, dict) and teacher:
        lines.append(f"Teacher: the {teacher.get('family', spec.family.name)} checkpoint's own text encoder"
                     + (f" ({teacher['source']})" if teacher.get("source") else "") + ".")
    langs = _languages(spec)
    if langs:
        lines.append(f"Languages in the training data: {', '.join(langs)}.")
    description = _meta(spec, "description")
    if description:
        lines.append(str(description))
    if len(lines) == 2:
        lines.append("The file does not say how it was made.")
    return [*lines, ""]


def model_card(spec: AdapterSpec | str | os.PathLike, *, evaluation: str | None = None, repo_id: str | None = None,
               base_model: str | None = None, license: str | None = None) -> str:
    """The card of an adapter (a spec or a file), as README.md text.

    Args:
        evaluation: the evaluation table in Markdown (``training.evaluation.report_markdown``).
        repo_id: the Hub repository the adapter is (to be) shared in, for the download commands.
        base_model: the encoder's Hub repository (default: the one the adapter's metadata records).
        license: the licence id (default: the one recorded by a conversion, else none).
    """
    if not isinstance(spec, AdapterSpec):
        spec = read_adapter_spec(spec)
    enc = spec.encoder
    source = _meta(spec, "source", {})
    base_model = base_model or enc.get("repo_id") or None
    license = license or (source.get("license") if isinstance(source, dict) else None) or _meta(spec, "license")
    stem = spec.name[: -len(".safetensors")]
    repo = repo_id or "OWNER/REPO"
    enc_repo = base_model or "ENCODER_REPO"
    body = [
        f"# {stem}", "",
        f"A [BabelCLIP](https://github.com/babelclip/babelclip) language adapter: it turns prompts in any language "
        f"the encoder knows into {spec.family.label} conditioning, for a frozen English checkpoint. It reads layer "
        f"`{spec.layer}` of the multilingual encoder `{enc.get('name')}` ({enc.get('model_type')}, hidden size "
        f"{enc.get('hidden_size')}{f', [{base_model}](https://huggingface.co/{base_model})' if base_model else ''}) "
        f"and maps it with a `{spec.arch}` adapter.", "",
        *_made_section(spec),
        *_evaluation_section(spec, evaluation),
        "## Use it", "",
        "**ComfyUI** (the BabelCLIP node pack): download the encoder and this adapter into ComfyUI's model folders",
        "", "```bash",
        f"python -m babelclip fetch {enc_repo} --kind encoder --models-dir ComfyUI/models",
        f"python -m babelclip fetch {repo} --kind adapter --models-dir ComfyUI/models", "```", "",
        "(or the *BabelCLIP Download* node), then wire *BabelCLIP Load Encoder* and *BabelCLIP Load Adapter* into "
        "*BabelCLIP Text Encode* in place of *CLIP Text Encode*; its CONDITIONING goes to any sampler. The "
        "adapter checks that the encoder and the checkpoint's family match it.", "",
        "**Automatic1111 / Forge**: the files go to the web UI's `models/text_encoders` and `models/babelclip` "
        "folders (same commands with `--models-dir stable-diffusion-webui/models`); the BabelCLIP web UI extension, "
        "from the same repository, is in development.", "",
        "**Python**:", "", "```python",
        "from babelclip.models import encode_prompts, load_adapter, load_encoder",
        f"encoder = load_encoder(\"models/text_encoders/{enc_repo.split('/')[-1]}\")",
        f"adapter = load_adapter(\"models/babelclip/{repo.split('/')[-1]}/{spec.name}\", encoder=encoder.info)",
        "cond = encode_prompts(encoder, adapter, [\"ein Fuchs im Schnee, Aquarell\"])  # .cond, .pooled", "```", "",
    ]
    return _front_matter(spec, base_model, license).join(["---\n", "\n---\n\n"]) + "\n".join(body)


def write_card(adapter_path: str | os.PathLike, **kwargs) -> str:
    """Write :func:`model_card` of ``adapter_path`` beside it (``<stem>.README.md``, atomically); returns the path."""
    text = model_card(adapter_path, **kwargs)
    path = card_path(adapter_path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write, "model card")
