"""Where does an English-only linear adapter lose cross-lingual transfer? (issue 12, diagnostics)

``python bench/fidelity_probe.py --work /tmp/fid-work --seeds 0 --configs linear:altclip-kd:contrastive_weight=1``
trains each configuration exactly as ``bench/fidelity.py`` does (same split, seed, caches), then evaluates the
trained pooled projection ``W`` (product evaluation, as fidelity.py) and edited copies of it:

* ``span``: ``W`` restricted to the span of the centred English training states (what the training data
  determines; the rest is the random initialisation, decayed);
* ``delta``: ``W - W0`` (``W0`` the initialisation, rebuilt from the seed), i.e. as if initialised at zero;
* ``delta-span``: both.

It also prints the teacher targets' spectrum (how many directions the 200 targets spread over) and the gain
``||W v||`` of the trained map along the English principal directions and outside their span.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fidelity as fid  # noqa: E402
from fidelity_ridge import pooled_states, targets  # noqa: E402


def with_pooled(adapter, w, b=None):
    import copy

    a = copy.deepcopy(adapter)
    with torch.no_grad():
        a.pooled_proj.weight.copy_(w)
        if b is not None:
            a.pooled_proj.bias.copy_(b)
    return a.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--configs", nargs="+", default=["linear:altclip-kd:contrastive_weight=1"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(fid.RESULTS, "fidelity-probe.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from babelclip.models import build_adapter
    from babelclip.training.features import prepare_text_features

    pairs, encoder, teacher, cache = fid.frozen_setup(args.work)
    out = []
    for seed in args.seeds:
        english, train_tr, held_out = fid.split(pairs, 0.25, seed)
        feats_en = prepare_text_features(english, encoder, teacher, cache, batch_size=32, teacher_layout="mean")
        ev = fid._eval_features(train_tr, encoder, teacher, cache)
        ceil = fid.ceiling(ev)
        x = pooled_states(feats_en).double()
        tp, _ = targets(feats_en)
        tc = tp.double() - tp.double().mean(0)
        s = torch.linalg.svdvals(tc)
        share = (s ** 2).cumsum(0) / (s ** 2).sum()
        print(f"split {seed}: teacher pooled targets, centred: directions holding 50/90/99% of the spread "
              f"{int((share < 0.5).sum()) + 1}/{int((share < 0.9).sum()) + 1}/{int((share < 0.99).sum()) + 1}; "
              f"centred norm / mean norm {float(tc.norm(dim=1).mean() / tp.mean(0).norm()):.3f}", flush=True)
        xc = x - x.mean(0)
        _, sv, vt = torch.linalg.svd(xc, full_matrices=False)
        rank = int((sv > sv[0] * 1e-6).sum())
        vs = vt[:rank]  # [r, d] the English span
        pspan = vs.T @ vs
        for cfg in args.configs:
            adapter, layer, info = fid.train_adapter(cfg, english, encoder, teacher, cache, args.steps, seed)
            arch, _, options = fid.parse_config(cfg)
            torch.manual_seed(seed)
            init = build_adapter(arch, encoder.info.hidden_size, teacher.family,
                                 **{k[5:]: v for k, v in options.items() if k.startswith("arch.")})
            w = adapter.pooled_proj.weight.detach().double()
            w0 = init.pooled_proj.weight.detach().double()
            g = (w @ vt.T).norm(dim=0)
            outside = (w @ (torch.eye(w.shape[1], dtype=w.dtype) - pspan)).norm() / (w.shape[1] - rank) ** 0.5
            row = {"config": cfg, "seed": seed, "gain_by_decile": [float(g[i * rank // 10:(i + 1) * rank // 10].mean())
                                                                  for i in range(10)],
                   "gain_outside_span_rms": float(outside), "init_gain_rms": float(w0.norm() / w.shape[1] ** 0.5)}
            for name, wt in (("trained", w), ("span", w @ pspan), ("delta", w - w0), ("delta-span", (w - w0) @ pspan)):
                r = fid.evaluate(with_pooled(adapter, wt.float()), ev, ceil)
                row[name] = r["transfer"]
                print(f"  {cfg} {name}: transfer {r['transfer']['average']:.3f} avg {r['transfer']['worst']:.3f} "
                      f"worst ({r['transfer']['worst_language']})", flush=True)
            print(f"  gains by decile: {' '.join(f'{v:.2f}' for v in row['gain_by_decile'])}; outside the span "
                  f"{row['gain_outside_span_rms']:.2f} (init {row['init_gain_rms']:.2f})", flush=True)
            out.append(row)
            with open(args.out, "w", encoding="utf-8") as fh:
                json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
