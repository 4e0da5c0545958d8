"""Evaluation protocol (XTD10 / Multi30K style): does the adapter put a translation where the teacher puts the English?

For held-out parallel pairs ``(x_en, x_lang)`` the teacher embeds ``x_en`` and the
student (encoder + adapter) embeds ``x_lang``. Per language, on the cosine
similarity matrix between the two sets, it reports text->image-style retrieval
recall R@1/5/10 in both directions, their mean, the mean cosine of true pairs,
and the token-level MSE to the teacher where the token counts agree. Results are
written as JSON, a Markdown table and a PNG chart.

When the encoder's states of the English side are cached too, the report also
gives the *ceiling*: the frozen encoder's own R@1 on the same pairs (its
mean-pooled states of the translation vs of the English), and *transfer*, the
adapter's R@1 divided by it: how much of the encoder's cross-lingual retrieval
the adapter keeps.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Sequence

import torch

from ..models.files import atomic_write

__all__ = ["recall_at_k", "evaluate_embeddings", "evaluate_adapter", "encoder_ceiling", "add_ceiling",
           "report_markdown", "plot_recall", "write_report", "KS"]

KS = (1, 5, 10)


def recall_at_k(sim: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Row ``i`` of ``sim [N, N]`` should rank column ``i`` first; fraction of rows where it is in the top k."""
    n = sim.shape[0]
    true = sim.diagonal().unsqueeze(1)
    rank = (sim > true).sum(1)  # ties count in the query's favour
    return {f"r@{k}": float((rank < k).float().mean()) if n else 0.0 for k in ks}


def _cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T


def evaluate_embeddings(teacher: torch.Tensor, student: torch.Tensor, langs: Sequence[str], *,
                        teacher_tokens: Sequence[torch.Tensor] | None = None,
                        student_tokens: Sequence[torch.Tensor] | None = None) -> dict:
    """Per-language retrieval metrics between teacher(English) and student(translation) embeddings.

    Args:
        teacher: ``[N, D]`` pooled (or token-mean) teacher embeddings of the English side.
        student: ``[N, D]`` the student's embeddings of the target-language side, row-aligned.
        langs: language code of each row.
        teacher_tokens / student_tokens: optional per-row token sequences ``[T_i, D]``; the MSE is
            averaged over the rows whose token counts agree.

    Returns ``{"languages": {lang: metrics}, "average": metrics, "pairs": N}``.
    """
    if teacher.shape != student.shape or teacher.shape[0] != len(langs):
        raise ValueError(f"shapes disagree: teacher {tuple(teacher.shape)}, student {tuple(student.shape)}, "
                         f"{len(langs)} languages")
    rows: dict[str, list[int]] = defaultdict(list)
    for i, lang in enumerate(langs):
        rows[lang].append(i)
    per_lang = {}
    for lang, idx in sorted(rows.items()):
        sim = _cosine_matrix(student[idx], teacher[idx])  # query: target-language text
        metrics = {}
        for direction, matrix in (("lang2en", sim), ("en2lang", sim.T)):
            for key, value in recall_at_k(matrix).items():
                metrics[f"{direction}_{key}"] = value
        for k in KS:  # the headline r@k averages both directions
            metrics[f"r@{k}"] = (metrics[f"lang2en_r@{k}"] + metrics[f"en2lang_r@{k}"]) / 2
        metrics["mean_recall"] = sum(metrics[f"r@{k}"] for k in KS) / len(KS)
        metrics["cosine"] = float(sim.diagonal().mean())
        if teacher_tokens is not None and student_tokens is not None:
            errs = [float((student_tokens[i].float() - teacher_tokens[i].float()).square().mean())
                    for i in idx if student_tokens[i].shape == teacher_tokens[i].shape]
            metrics["token_mse"] = sum(errs) / len(errs) if errs else float("nan")
        metrics["pairs"] = len(idx)
        per_lang[lang] = metrics
    keys = [k for k in next(iter(per_lang.values())) if k != "pairs"]
    average = {k: _mean([m[k] for m in per_lang.values()]) for k in keys}
    return {"languages": per_lang, "average": average, "pairs": int(teacher.shape[0])}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _finite(value):
    """NaN (e.g. token MSE where no lengths align) becomes null, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def encoder_ceiling(features) -> dict | None:
    """The frozen encoder's own retrieval of ``features``' pairs (a report of :func:`evaluate_embeddings`): its
    mean-pooled states of each translation against those of its English. None when the English side's states
    are not in the encoder cache (``prepare_text_features(..., encode_english=True)`` puts them there)."""
    store, pairs = features.encoder_store, features.pairs
    if not pairs or store.missing(p.en for p in pairs):
        return None
    pooled = {text: store.get(text).mean(0) for text in {t for p in pairs for t in (p.en, p.text)}}
    return evaluate_embeddings(torch.stack([pooled[p.en] for p in pairs]),
                               torch.stack([pooled[p.text] for p in pairs]), [p.lang for p in pairs])


def add_ceiling(report: dict, ceiling: dict) -> dict:
    """Put the encoder's R@1 (``encoder_r@1``) and ``transfer`` = adapter R@1 / encoder R@1 into ``report``,
    per language and on average (transfer's average is the mean of the languages'); returns ``report``."""
    for lang, m in report["languages"].items():
        ceil = ceiling["languages"][lang]["r@1"]
        m["encoder_r@1"] = ceil
        m["transfer"] = m["r@1"] / ceil if ceil > 0 else float("nan")
    for key in ("encoder_r@1", "transfer"):
        report["average"][key] = _mean([m[key] for m in report["languages"].values()])
    return report


REPORT_LEGEND = (
    "Held-out pairs, per language. r@k: the share of pairs whose partner ranks in the top k among that language's "
    "pairs, averaged over both directions (translation -> English and English -> translation); a random ranking "
    "scores k / pairs. mean_recall: the mean of r@1, r@5 and r@10. cosine: mean cosine between the adapter's and "
    "the teacher's embedding of a true pair.")


def report_markdown(report: dict) -> str:
    """A Markdown table, one row per language plus the average, under a line saying what the columns mean."""
    cols = ["r@1", "r@5", "r@10", "mean_recall", "cosine"]
    legend = REPORT_LEGEND
    if not math.isnan(report["average"].get("token_mse", float("nan"))):
        cols.append("token_mse")
        legend += " token_mse: mean squared error to the teacher's tokens, where the token counts agree."
    if "transfer" in report["average"]:
        cols += ["encoder_r@1", "transfer"]
        legend += (" encoder_r@1: the frozen encoder's own r@1 on the same pairs (its mean-pooled states of the "
                   "translation vs the English), the ceiling; transfer: r@1 / encoder_r@1, the share of it the "
                   "adapter keeps.")
    lines = [legend, "", "| language | pairs | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    cell = lambda v: "—" if math.isnan(v) else f"{v:.3f}"  # noqa: E731
    for lang, m in report["languages"].items():
        lines.append(f"| {lang} | {m['pairs']} | " + " | ".join(cell(m[c]) for c in cols) + " |")
    avg = report["average"]
    lines.append(f"| **average** | {report['pairs']} | " + " | ".join(cell(avg[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def evaluate_adapter(adapter, features) -> dict:
    """Run ``adapter`` on cached held-out features and evaluate it against the teacher, with the encoder's
    ceiling and the transfer when the features hold the English side's encoder states (see module doc)."""
    teacher, student, tt, st = [], [], [], []
    param = next(adapter.parameters())
    for start in range(0, len(features), 64):
        batch = features.batch(range(start, min(start + 64, len(features))))
        with torch.no_grad():
            out = adapter(batch.hidden.to(param.device, param.dtype), batch.mask.to(param.device))
        teacher.append(batch.teacher_pooled)
        student.append(out.pooled.float().cpu())
        for i in range(out.cond.shape[0]):
            st.append(out.cond[i][out.mask[i].bool()].float().cpu())
            if batch.teacher_cond is not None:  # cached without the teacher's tokens: no token MSE
                tt.append(batch.teacher_cond[i])
    langs = [p.lang for p in features.pairs]
    report = evaluate_embeddings(torch.cat(teacher), torch.cat(student), langs, teacher_tokens=tt if tt else None,
                                 student_tokens=st)
    ceiling = encoder_ceiling(features)
    return add_ceiling(report, ceiling) if ceiling is not None else report


def plot_recall(report: dict, path: str) -> None:
    """Bar chart of R@1/5/10 per language, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = list(report["languages"])
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(langs) + 2), 3.2), dpi=100)
    width = 0.27
    for j, k in enumerate(KS):
        values = [report["languages"][lang][f"r@{k}"] for lang in langs]
        ax.bar([i + (j - 1) * width for i in range(len(langs))], values, width, label=f"R@{k}")
    if all("encoder_r@1" in report["languages"][lang] for lang in langs):
        ceilings = [report["languages"][lang]["encoder_r@1"] for lang in langs]
        ax.hlines(ceilings, [i - 1.5 * width for i in range(len(langs))],
                  [i - 0.5 * width for i in range(len(langs))], colors="black", linewidth=2,
                  label="encoder R@1 (ceiling)")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall (both directions)")
    ax.set_title("BabelCLIP adapter vs teacher, held-out pairs")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_report(report: dict, prefix: str | os.PathLike) -> dict[str, str]:
    """Write ``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png``; return their paths."""
    prefix = os.fspath(prefix)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    paths = {"json": prefix + ".json", "markdown": prefix + ".md", "chart": prefix + ".png"}
    atomic_write(paths["json"], lambda tmp: _write_text(tmp, json.dumps(_finite(report), indent=2,
                                                                         ensure_ascii=False)), "report")
    atomic_write(paths["markdown"], lambda tmp: _write_text(tmp, report_markdown(report)), "report")
    atomic_write(paths["chart"], lambda tmp: plot_recall(report, tmp), "chart")
    return paths


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
