"""Peak RSS and time of adapter training steps: constant vs varying token widths, under three heap settings.

``python bench/heap_fragmentation.py [--steps 100] [--repeat 3] [--out bench/results/heap-fragmentation.json]``

Each case runs in a fresh process: ``mlp`` adapter (32 -> 768, as in the scaling benchmark), altclip-kd on random
features, batch 256; the token width is 19 for every step (``constant``) or drawn from 19-22 (``varying``, the
spread of the 100k-prompt scaling corpus). Heap settings: ``glibc default``; ``trim`` calls
:func:`babelclip.training.trainer._release_free_memory` every ``RELEASE_EVERY`` steps (the trainer before the
fixed threshold); ``fixed threshold + trim`` also calls :func:`babelclip.training.trainer._steady_heap` first, as
``train()`` does now. No feature cache is involved: what differs is only how the C heap copes with activation
sizes that change from step to step. Each case runs ``--repeat`` times; the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HEAPS = {"default": "glibc default", "trim": "trim", "steady": "fixed threshold + trim"}

CASE = r'''
import json, random, sys, time, torch
from babelclip.models import FAMILIES, build_adapter
from babelclip.training import trainer
from babelclip.training.recipes import Batch, get_recipe
widths, heap, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
trim = heap != "default"
if heap == "steady":
    trainer._steady_heap()
def status():
    return {l.split(":")[0]: int(l.split()[1]) / 1024 for l in open("/proc/self/status")
            if l.split(":")[0] in ("VmHWM", "VmRSS")}
torch.manual_seed(0)
adapter = build_adapter("mlp", 32, FAMILIES["sd1"])
opt, recipe, rng = torch.optim.AdamW(adapter.parameters(), 1e-3), get_recipe("altclip-kd"), random.Random(0)
start, t0 = status()["VmHWM"], time.perf_counter()
for step in range(steps):
    w = 19 if widths == "constant" else rng.choice([19, 20, 20, 21, 21, 22])
    b = Batch(torch.randn(256, w, 32), torch.ones(256, w, dtype=torch.long), None, torch.randn(256, 768),
              teacher_mean=torch.randn(256, 768))
    loss, _ = recipe.loss(adapter, b)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if trim and (step + 1) % trainer.RELEASE_EVERY == 0:
        trainer._release_free_memory()
end = status()
print(json.dumps({"widths": widths, "heap": heap, "steps": steps, "start_mb": start, "peak_rss_mb": end["VmHWM"],
                  "rss_after_mb": end["VmRSS"], "seconds": time.perf_counter() - t0}))
'''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cases = [(widths, heap) for widths in ("constant", "varying") for heap in HEAPS]
    runs = {case: [] for case in cases}
    for _ in range(args.repeat):  # interleaved, so that a busy moment of the machine spreads over all cases
        for widths, heap in cases:
            out = subprocess.run([sys.executable, "-c", CASE, widths, heap, str(args.steps)], capture_output=True,
                                 text=True, check=True)
            runs[(widths, heap)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for (widths, heap), results in runs.items():
        row = {"widths": widths, "heap": HEAPS[heap], "steps": args.steps, "runs": len(results)}
        for key in ("start_mb", "peak_rss_mb", "rss_after_mb", "seconds"):
            row[key] = statistics.median(r[key] for r in results)
        row["peak_growth_mb"] = row["peak_rss_mb"] - row["start_mb"]
        rows.append(row)
        print(row, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
