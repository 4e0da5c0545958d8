"""Peak RSS of adapter training steps whose batch token width is constant vs varying, with and without trimming.

``python bench/heap_fragmentation.py [--steps 100] [--out bench/results/heap-fragmentation.json]``

Each case runs in a fresh process: ``mlp`` adapter (32 -> 768, as in the scaling benchmark), altclip-kd on random
features, batch 256; the token width is 19 for every step (``constant``) or drawn from 19-22 (``varying``, the
spread of the 100k-prompt scaling corpus). ``trim`` calls :func:`babelclip.training.trainer._release_free_memory`
every ``RELEASE_EVERY`` steps, as the trainer does. No feature cache is involved: what differs is only how the C
heap copes with activation sizes that change from step to step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASE = r'''
import json, random, sys, time, torch
from babelclip.models import FAMILIES, build_adapter
from babelclip.training import trainer
from babelclip.training.recipes import Batch, get_recipe
widths, trim, steps = sys.argv[1], sys.argv[2] == "trim", int(sys.argv[3])
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
print(json.dumps({"widths": widths, "trim": trim, "steps": steps, "start_mb": start, "peak_rss_mb": end["VmHWM"],
                  "rss_after_mb": end["VmRSS"], "seconds": time.perf_counter() - t0}))
'''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = []
    for widths in ("constant", "varying"):
        for trim in ("no-trim", "trim"):
            out = subprocess.run([sys.executable, "-c", CASE, widths, trim, str(args.steps)], capture_output=True,
                                 text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
