"""One scaling run: cache ``n`` prompts through a tiny encoder and a linear teacher, then one epoch of adapter steps.

``python bench/scaling.py N ENCODER_DIR CACHE_DIR [--tracemalloc]`` prints one JSON line. ``bench/run.py --only
scaling`` runs it once per corpus size, each in a fresh process so that peak RSS (VmHWM) is per size.

Resident memory is sampled from ``/proc/self/status`` every 20 ms by a thread and reported per phase
(``setup``: corpus built; ``cache``: frozen features computed and stored; ``train``: one epoch), split into
anonymous memory (Python objects, tensors) and file-backed memory (mapped files, counted as resident too).
``--tracemalloc`` adds the Python allocation sites holding the most memory at the end of each phase (slower).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time

import torch


def status() -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in MB (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
    return out


class Sampler(threading.Thread):
    """Largest VmRSS / RssAnon / RssFile seen during the current phase."""

    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.peaks, self.phase, self.stop = every, {}, "start", False
        self.lock = threading.Lock()

    def run(self):
        while not self.stop:
            s = status()
            with self.lock:
                peak = self.peaks.setdefault(self.phase, {})
                for k in ("VmRSS", "RssAnon", "RssFile"):
                    peak[k] = max(peak.get(k, 0.0), s[k])
            time.sleep(self.every)

    def enter(self, phase: str):
        with self.lock:
            self.phase = phase


def top_allocations(limit: int = 8) -> list[str]:
    import tracemalloc

    stats = tracemalloc.take_snapshot().statistics("lineno")
    return [f"{s.size / 2**20:.1f} MB in {s.count} blocks: {s.traceback[0].filename.split('babelclip/')[-1]}:"
            f"{s.traceback[0].lineno}" for s in stats[:limit]]


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    trace = "--tracemalloc" in args
    args = [a for a in args if a != "--tracemalloc"]
    n, enc_dir, cache = int(args[0]), args[1], args[2]
    if trace:
        import tracemalloc

        tracemalloc.start()
    sampler = Sampler()
    sampler.start()

    from babelclip.models import FAMILIES, build_adapter, load_encoder
    from babelclip.models.adapters import masked_mean
    from babelclip.models.teacher import TeacherOutput
    from babelclip.training.data import Pair
    from babelclip.training.features import prepare_text_features

    try:
        from babelclip.training.features import teacher_layout_for
    except ImportError:
        teacher_layout_for = None
    from babelclip.training.recipes import get_recipe
    from babelclip.training.trainer import TrainConfig, train

    enc = load_encoder(enc_dir)

    class Teacher:
        """A linear map of the encoder's mean state, 77 identical tokens: real shapes, no CLIP to load."""

        family, fingerprint, clip_skip = FAMILIES["sd1"], "scale", None

        def __init__(self):
            self.w = torch.randn(enc.info.hidden_size, 768, generator=torch.Generator().manual_seed(0))

        def encode(self, ts):
            out = enc.encode(ts)
            m = masked_mean(out.hidden, out.mask) @ self.w
            return TeacherOutput(m.unsqueeze(1).expand(-1, 77, -1).contiguous(), m)

    words = ("red blue green old tiny golden cat house ship tree dragon lamp night snow hill sea forest moon river "
             "city").split()
    sampler.enter("setup")
    # Unique prompts with the same length distribution at every size: a 7-digit number spread over 0..1e6 (i * 7919 mod
    # a prime), not `i` itself, whose digits made the 100k prompts up to 3 tokens longer than the 1k ones.
    texts = [" ".join(c) + f" {(i * 7919) % 1_000_003:07d}"
             for i, c in zip(range(n), itertools.cycle(itertools.product(words, repeat=3)))]
    pairs = [Pair(t, t, "en") for t in texts]
    del texts
    allocations = {}
    if trace:
        allocations["setup"] = top_allocations()
    rss_before = status()["VmHWM"]
    recipe = get_recipe("altclip-kd")
    adapter = build_adapter("mlp", enc.info.hidden_size, FAMILIES["sd1"])
    sampler.enter("cache")
    t0 = time.perf_counter()
    if teacher_layout_for is not None:
        layout = teacher_layout_for(adapter, recipe)  # what altclip-kd reads for the mlp adapter: "mean"
        feats = prepare_text_features(pairs, enc, Teacher(), cache, batch_size=256, teacher_layout=layout)
    else:  # BabelCLIP before the compact teacher cache (for before/after runs, see BENCHMARKS.md)
        layout = "77 tokens + pooled, float32"
        feats = prepare_text_features(pairs, enc, Teacher(), cache, batch_size=256)
    t1 = time.perf_counter()
    if trace:
        allocations["cache"] = top_allocations()
    sampler.enter("train")
    train(adapter, recipe, feats, TrainConfig(steps=max(1, n // 256), batch_size=256, lr=1e-3))
    t2 = time.perf_counter()
    if trace:
        allocations["train"] = top_allocations()
    time.sleep(0.05)
    sampler.stop = True
    sampler.join()
    cache_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
    result = {"prompts": n, "cache_s": t1 - t0, "epoch_s": t2 - t1, "rss_before_mb": rss_before,
              "peak_rss_mb": status()["VmHWM"], "cache_disk_mb": cache_bytes / 1e6,
              "teacher_layout": layout,
              "phases": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in sampler.peaks.items()}}
    if trace:
        import tracemalloc

        result["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        result["allocations"] = allocations
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
