"""Profile BabelCLIP's encode path at batch 1: where the time of ``encode_prompts`` goes.

``python bench/profile_encode.py [--prompt short] [--repeat 30] [--int8] [--out bench/results/profile-encode.json]``

Prints and saves, for an XLM-R-base-sized encoder (random weights, see ``run.xlmr_encoder``) + the SD1.5 ``mlp``
adapter:

* the median wall time of ``encode_prompts`` and of its parts: tokenizing, the encoder forward, the adapter;
* the top operators of a ``torch.profiler`` trace of the repeated calls (self CPU time);
* the measured memory read bandwidth and fp32 matmul rate of this machine, and from them the two lower bounds of
  one forward: streaming the encoder's weights once from memory, and its FLOPs at the matmul rate.

For a Python-level view, run it under py-spy: ``py-spy record -o encode.svg -- python bench/profile_encode.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import PROMPTS, environment, matmul_rate, xlmr_encoder  # noqa: E402


def median_ms(fn, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def read_bandwidth(mb: int = 512) -> float:
    """Bytes per second of reading a tensor far larger than the caches (median of a few sums)."""
    x = torch.ones(mb * 2**20 // 4)
    seconds = median_ms(lambda: x.sum(), repeat=7, warmup=2) / 1000
    return x.numel() * 4 / seconds


def main(argv=None) -> int:
    from babelclip.models import FAMILIES, build_adapter, encode_prompts, quantize_int8
    from babelclip.models.conditioning import tokenize_prompt

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default="short", choices=list(PROMPTS))
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--size", default="base", choices=["base", "large"])
    parser.add_argument("--layer", default="last", help="encoder layer the adapter reads (last, penultimate, N)")
    parser.add_argument("--int8", action="store_true", help="the opt-in int8 encoder (quantize_int8)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--loop", type=int, default=0, help="only call encode_prompts this many times (for py-spy)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="babelclip-profile-")
    enc = xlmr_encoder(args.size, work, torch.device("cpu"))
    layer_params = sum(p.numel() for n, p in enc.model.named_parameters() if "embeddings" not in n)
    linear_params = sum(m.weight.numel() for n, m in enc.model.named_modules()
                        if isinstance(m, torch.nn.Linear) and "embeddings" not in n)
    weight_bytes = (layer_params - linear_params) * 4 + linear_params * (1 if args.int8 else 4)
    if args.int8:
        quantize_int8(enc)
    adapter = build_adapter("mlp", enc.info.hidden_size, FAMILIES["sd1"]).eval()
    layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    prompt = [PROMPTS[args.prompt]]
    if args.loop:
        for _ in range(args.loop):
            encode_prompts(enc, adapter, prompt, layer=layer)
        return 0

    ids = [tokenize_prompt(enc, prompt[0]).chunks[0]]
    hidden = enc.encode_ids(ids, layer)
    with torch.inference_mode():
        parts = {
            "encode_prompts": median_ms(lambda: encode_prompts(enc, adapter, prompt, layer=layer), args.repeat),
            "tokenize_prompt": median_ms(lambda: tokenize_prompt(enc, prompt[0]), args.repeat),
            "encoder.encode_ids": median_ms(lambda: enc.encode_ids(ids, layer), args.repeat),
            "adapter": median_ms(lambda: adapter(hidden.hidden, hidden.mask), args.repeat),
        }
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.repeat):
            encode_prompts(enc, adapter, prompt, layer=layer)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    ops = [{"op": e.key, "calls_per_encode": e.count / args.repeat,
            "self_ms_per_encode": e.self_cpu_time_total / 1000 / args.repeat,
            "self_pct": 100 * e.self_cpu_time_total / total_us} for e in top]

    threads = torch.get_num_threads()
    lin, x = torch.nn.Linear(enc.info.hidden_size, 4 * enc.info.hidden_size).eval(), torch.randn(len(ids[0]),
                                                                                                enc.info.hidden_size)
    with torch.inference_mode():
        one_layer = {f"{threads}_threads_ms": median_ms(lambda: lin(x), 50)}
        torch.set_num_threads(1)
        one_layer["1_thread_ms"] = median_ms(lambda: lin(x), 50)
        torch.set_num_threads(threads)
    tokens = len(ids[0])
    bandwidth, rate = read_bandwidth(), matmul_rate(torch.device("cpu"))
    bounds = {"encoder_weight_mb": weight_bytes / 1e6, "tokens": tokens,
              "memory_read_gb_per_s": bandwidth / 1e9, "matmul_gflop_per_s": rate / 1e9,
              "weights_once_ms": 1000 * weight_bytes / bandwidth,
              "flops_ms": 1000 * 2 * layer_params * tokens / rate}
    result = {"environment": environment(torch.device("cpu")),
              "encoder": f"XLM-R-{args.size}{' int8' if args.int8 else ''} (random weights)",
              "adapter": "mlp (sd1)", "layer": args.layer, "prompt": args.prompt, "repeat": args.repeat, "median_ms": parts,
              "lower_bounds": bounds, "top_ops": ops,
              "one_ffn_linear_at_batch_1": one_layer}
    print("median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    print(f"lower bounds: weights once {bounds['weights_once_ms']:.1f} ms ({bounds['encoder_weight_mb']:.0f} MB at "
          f"{bounds['memory_read_gb_per_s']:.1f} GB/s), FLOPs {bounds['flops_ms']:.1f} ms ({tokens} tokens at "
          f"{bounds['matmul_gflop_per_s']:.0f} GFLOP/s)")
    print(f"{'op':<40} {'calls':>6} {'self ms':>8} {'%':>6}")
    for o in ops:
        print(f"{o['op'][:40]:<40} {o['calls_per_encode']:>6.1f} {o['self_ms_per_encode']:>8.2f} {o['self_pct']:>6.1f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
