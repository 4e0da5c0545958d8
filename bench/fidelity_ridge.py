"""Closed-form ridge adapters against the fidelity benchmark (issue 12): is the transfer loss of English-only
adapters the optimiser's, or the fit's?

``python bench/fidelity_ridge.py --work /tmp/fid-work [--seeds 0 1] [--alphas ...] [--out ...]`` loads the same
cached features :mod:`bench.fidelity` uses (same split, encoder, teacher and caches), fits the ``linear``
adapter in closed form on the English of the training split -- ``W = T^T X (X^T X + lambda I)^-1`` on the
masked-mean encoder states ``X`` (mean-centred: the centring goes into the bias), for the pooled projection
(targets: the teacher's pooled vectors) and the token projection (targets: the teacher's token means; for a
token-wise linear map the masked mean of its output is the map of the masked mean, so this is the exact
minimiser of ``altclip-kd``'s token term) -- and evaluates it with the product's
:func:`~babelclip.training.evaluation.evaluate_adapter`, like ``bench/fidelity.py``.
``lambda = alpha * trace(X^T X) / d`` (``alpha`` relative to the mean eigenvalue of the centred English states).

Also prints diagnostics: how the language shift (translation minus English mean state) spreads over the
principal directions of the English states, and the gain ``||W v_k||`` of each fit along them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fidelity as fid  # noqa: E402


def pooled_states(feats) -> torch.Tensor:
    """Masked-mean encoder states of ``feats``' texts ``[N, d]`` (the ``linear`` adapter's pooled input)."""
    return torch.stack([feats.encoder_store.get(p.text).float().mean(0) for p in feats.pairs])


def targets(feats) -> tuple[torch.Tensor, torch.Tensor]:
    b = feats.batch(range(len(feats)))
    return b.teacher_pooled.float(), b.teacher_token_mean().float()


def ridge(x: torch.Tensor, t: torch.Tensor, alpha: float, penalty: torch.Tensor | None = None, beta: float = 0.0,
          rank: int | None = None):
    """``(W [p, d], b [p])`` minimising ``||x W^T + b - t||^2 + lambda ||W||^2 + beta tr(W P W^T)`` with ``lambda =
    alpha * trace(xc^T xc) / d`` (double precision). ``P`` (``penalty``, ``[d, d]``) is the summed covariance of a
    noise added to each example (training with that noise minimises this in expectation). ``rank``: principal
    component regression on the top ``rank`` principal directions of ``x`` instead."""
    x, t = x.double(), t.double()
    mu, tbar = x.mean(0), t.mean(0)
    xc, tc = x - mu, t - tbar
    if rank is not None:
        _, _, vt = torch.linalg.svd(xc, full_matrices=False)
        v = vt[:rank].T  # [d, k]
        z = xc @ v
        lam = alpha * float((z.T @ z).trace()) / rank
        a = torch.linalg.solve(z.T @ z + lam * torch.eye(rank, dtype=x.dtype), z.T @ tc).T  # [p, k]
        w = a @ v.T
        return w.float(), (tbar - w @ mu).float()
    gram = xc.T @ xc
    lam = alpha * float(gram.trace()) / x.shape[1]
    reg = gram + lam * torch.eye(x.shape[1], dtype=x.dtype)
    if penalty is not None and beta:
        reg = reg + beta * penalty.double()
    w = torch.linalg.solve(reg, xc.T @ tc).T  # [p, d]
    return w.float(), (tbar - w @ mu).float()


def sharpen(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Retrieval-sharpened targets: row i is ``U (U^T U + gamma' I)^-1 e_i`` for the unit targets ``U`` (columns),
    rescaled to the targets' mean norm; ``gamma' = gamma * trace(U^T U) / n``. gamma -> infinity gives the unit
    targets themselves, gamma -> 0 their dual basis (the query scoring 1 on its own target and 0 on the others)."""
    u = torch.nn.functional.normalize(t.double(), dim=1).T  # [p, n]
    gram = u.T @ u
    g = gamma * float(gram.trace()) / gram.shape[0]
    z = (u @ torch.linalg.inv(gram + g * torch.eye(gram.shape[0], dtype=u.dtype))).T  # [n, p]
    z = z / z.norm(dim=1, keepdim=True) * t.norm(dim=1, keepdim=True).double()
    return z.float()


def token_noise_cov(feats) -> torch.Tensor:
    """Summed covariance of the masked mean when each text's tokens are kept at random: per text its token
    covariance / its token count (times (1 - keep) / keep, which ``beta`` stands for)."""
    d = feats.encoder_store.get(feats.pairs[0].text).shape[1]
    cov = torch.zeros(d, d, dtype=torch.float64)
    for p in feats.pairs:
        h = feats.encoder_store.get(p.text).double()
        hc = h - h.mean(0)
        cov += hc.T @ hc / h.shape[0] / h.shape[0]
    return cov


def shift_cov(feats, by_en: dict[str, torch.Tensor], per: int) -> torch.Tensor:
    """Summed outer products of the language shifts (translation minus English mean state) of ``feats``,
    rescaled to ``per`` examples (a shift per English training prompt)."""
    x = pooled_states(feats).double()
    d = x - torch.stack([by_en[p.en] for p in feats.pairs]).double()
    return d.T @ d * (per / len(feats))


def linear_adapter(encoder, teacher, wp, bp, wt, bt):
    from babelclip.models import build_adapter

    adapter = build_adapter("linear", encoder.info.hidden_size, teacher.family)
    with torch.no_grad():
        adapter.pooled_proj.weight.copy_(wp)
        adapter.pooled_proj.bias.copy_(bp)
        adapter.proj.weight.copy_(wt)
        adapter.proj.bias.copy_(bt)
    return adapter.eval()


def english_r1(adapter, feats_en) -> tuple[float, float]:
    """R@1 of the adapter on the English it was fitted on (how well it fits), both directions averaged, and the
    mean cosine of its pooled vectors to the teacher's."""
    from babelclip.training.evaluation import evaluate_adapter

    m = evaluate_adapter(adapter, feats_en)["languages"]["en"]
    return m["r@1"], m["cosine"]


def shift_spectrum(x_en: torch.Tensor, evals: dict, train_tr_feats) -> dict:
    """Share of the English states' variance and of the language shift's energy in each decile of the English
    principal directions (largest variance first)."""
    xc = (x_en - x_en.mean(0)).double()
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)
    var = s ** 2 / (s ** 2).sum()
    by_en = {p.text: i for i, p in enumerate(train_tr_feats.en_pairs)}
    x_tr = pooled_states(train_tr_feats).double()
    x_src = x_en.double()[[by_en[p.en] for p in train_tr_feats.pairs]]
    d = x_tr - x_src
    proj = (d @ vt.T) ** 2  # [N, k]
    k = vt.shape[0]
    deciles = [range(i * k // 10, (i + 1) * k // 10) for i in range(10)]
    out = {"english_variance_by_decile": [float(var[list(r)].sum()) for r in deciles],
           "shift_energy_by_decile": {}}
    langs = sorted({p.lang for p in train_tr_feats.pairs})
    for lang in langs:
        rows = [i for i, p in enumerate(train_tr_feats.pairs) if p.lang == lang]
        e = proj[rows].sum(0)
        e = e / e.sum()
        out["shift_energy_by_decile"][lang] = [float(e[list(r)].sum()) for r in deciles]
    # the share of the shift outside the English states' span (rank = n - 1 after centring)
    resid = d - (d @ vt.T) @ vt
    out["shift_outside_english_span"] = float(resid.square().sum() / d.square().sum())
    out["_vt"] = vt
    return out


def gains(w: torch.Tensor, vt: torch.Tensor) -> list[float]:
    """``||W v_k||`` averaged per decile of the English principal directions."""
    g = (w.double() @ vt.T).norm(dim=0)
    k = vt.shape[0]
    return [float(g[i * k // 10:(i + 1) * k // 10].mean()) for i in range(10)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="bench/fidelity.py's --work folder (its caches)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--alphas", nargs="+", type=float, default=[1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1, 3, 10, 100])
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--out", default=os.path.join(fid.RESULTS, "fidelity-ridge.json"))
    parser.add_argument("--sharpen", nargs="*", type=float, help="also fit retrieval-sharpened pooled targets "
                        "with these gammas (see sharpen())")
    parser.add_argument("--sharpen-alphas", nargs="+", type=float, default=[0.01, 0.1, 0.3, 1.0])
    parser.add_argument("--variants", action="store_true", help="also noise-covariance penalties and PCR")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from babelclip.training.features import prepare_text_features

    pairs, encoder, teacher, cache = fid.frozen_setup(args.work)
    result = {"alphas": args.alphas, "splits": []}
    for seed in args.seeds:
        english, train_tr, held_out = fid.split(pairs, args.val_fraction, seed)
        feats_en = prepare_text_features(english, encoder, teacher, cache, batch_size=32, teacher_layout="mean")
        evals = {}
        for name, subset in (("train_translations", train_tr), ("held_out", held_out)):
            f = fid._eval_features(subset, encoder, teacher, cache)
            evals[name] = (f, fid.ceiling(f))
        x = pooled_states(feats_en)
        tp, tt = targets(feats_en)
        tr_feats = evals["train_translations"][0]
        tr_feats.en_pairs = english
        spec = shift_spectrum(x, evals, tr_feats)
        vt = spec.pop("_vt")
        entry = {"seed": seed, "english": len(english), "diagnostics": spec, "ridge": {}}
        print(f"split {seed}: {len(english)} English prompts; teacher pooled: mean cosine to the mean "
              f"{float(torch.nn.functional.cosine_similarity(tp, tp.mean(0, keepdim=True)).mean()):.3f}", flush=True)
        print("  English variance by decile:", " ".join(f"{v:.3f}" for v in spec["english_variance_by_decile"]))
        for lang, e in spec["shift_energy_by_decile"].items():
            print(f"  shift energy {lang}:", " ".join(f"{v:.3f}" for v in e))
        print(f"  shift outside the English span: {spec['shift_outside_english_span']:.3f}", flush=True)
        fits = [(f"ridge alpha={a:g}", dict(alpha=a)) for a in args.alphas]
        if args.variants:
            tok = token_noise_cov(feats_en)
            held_feats = evals["held_out"][0]
            held_en = prepare_text_features([type(p)(p.en, p.en, "en") for p in held_feats.pairs], encoder, teacher,
                                            cache, batch_size=32, teacher_layout="mean")
            by_en = {p.text: x_ for p, x_ in zip(held_en.pairs, pooled_states(held_en))}
            by_en.update({p.text: x_ for p, x_ in zip(english, x)})
            shift_held = shift_cov(held_feats, by_en, len(english))
            shift_train = shift_cov(tr_feats, by_en, len(english))  # the evaluation's own shifts: an oracle
            for a in (0.01, 0.1, 0.3, 1.0):
                for b in (0.3, 1, 3, 10, 30):
                    fits.append((f"token-noise beta={b:g} alpha={a:g}", dict(alpha=a, penalty=tok, beta=b)))
            for a in (0.01, 0.1, 0.3):
                for b in (0.3, 1, 3, 10):
                    fits.append((f"held-out shift beta={b:g} alpha={a:g}", dict(alpha=a, penalty=shift_held, beta=b)))
                    fits.append((f"ORACLE train shift beta={b:g} alpha={a:g}",
                                 dict(alpha=a, penalty=shift_train, beta=b)))
            for k in (8, 16, 32, 64, 100, 150):
                for a in (0.0, 0.1, 1.0):
                    fits.append((f"pcr rank={k} alpha={a:g}", dict(alpha=a, rank=k)))
        if args.sharpen:
            for g in args.sharpen:
                for a in args.sharpen_alphas:
                    fits.append((f"sharpened targets gamma={g:g} alpha={a:g}", dict(alpha=a, sharpen=g)))
        for name_fit, kw in fits:
            alpha = name_fit
            g = kw.pop("sharpen", None)
            wp, bp = ridge(x, tp if g is None else sharpen(tp, g), **kw)
            wt, bt = ridge(x, tt, **kw)
            adapter = linear_adapter(encoder, teacher, wp, bp, wt, bt)
            r1_en, cos_en = english_r1(adapter, feats_en)
            row = {"english_r@1": r1_en, "english_pooled_cosine": cos_en, "pooled_gain_by_decile": gains(wp, vt)}
            for name, (f, c) in evals.items():
                row[name] = fid.evaluate(adapter, f, c)
            entry["ridge"][str(alpha)] = row
            t, h = row["train_translations"]["transfer"], row["held_out"]["transfer"]
            print(f"  {alpha}: English R@1 {row['english_r@1']:.3f} cos {cos_en:.3f}; transfer train-split translations "
                  f"{t['average']:.3f} avg {t['worst']:.3f} worst ({t['worst_language']}); held out {h['average']:.3f}"
                  f"; gain by decile " + " ".join(f"{g:.2f}" for g in row["pooled_gain_by_decile"]), flush=True)
        result["splits"].append(entry)
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
