"""Write BENCHMARKS.md and the charts from bench/results/*.json (run bench/run.py first)."""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")

TARGETS = [
    ("encode_adapter_overhead_pct", "adapter time / encoder time, XLM-R-base, batch 1", "<=", 5.0, "%"),
    ("encode_speedup_vs_translate_test", "translate-test proxy / BabelCLIP, batch 1", ">=", 25.0, "x"),
    ("train_matmul_peak_fraction", "cached training step vs measured fp32 matmul rate, batch 256", ">=", 0.30, ""),
    ("train_rss_growth_mb_1k_to_100k", "peak RSS growth, 1k -> 100k prompts", "<=", 100.0, " MB"),
    ("adapter_params_sd15_mlp", "SD1.5 mlp adapter parameters", "<=", 10_000_000, ""),
    ("adapter_file_mb_sd15_mlp", "SD1.5 mlp adapter file", "<=", 40.0, " MB"),
]


def load(name):
    with open(os.path.join(RESULTS, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def chart_encode(encode, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in encode["rows"] if r["batch"] == 1 and (r.get("arch") in (None, "mlp"))]
    kinds = list(dict.fromkeys(r["prompt"] for r in rows))
    paths = list(dict.fromkeys(r["path"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    width = 0.8 / len(paths)
    for j, p in enumerate(paths):
        values = [next(r["ms"] for r in rows if r["path"] == p and r["prompt"] == k) for k in kinds]
        ax.bar([i + (j - len(paths) / 2 + 0.5) * width for i in range(len(kinds))], values, width, label=p)
    ax.set_yscale("log")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("ms per prompt (batch 1, log)")
    ax.set_title("Encode latency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_training(training, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in training["rows"] if r["batch"] == 256]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.bar([r["arch"] for r in rows], [100 * r["matmul_peak_fraction"] for r in rows])
    ax.axhline(30, color="grey", linestyle="--", label="target 30 %")
    ax.set_ylabel("% of measured fp32 matmul rate")
    ax.set_title("Cached-feature training step, batch 256")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(rows, cols, fmt):
    out = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt.get(k, str)(r.get(k, "")) for _, k in cols) + " |")
    return "\n".join(out)


def main() -> int:
    encode, peers, training, scaling, memory, summary = (load(n) for n in
                                                         ("encode", "peers", "training", "scaling", "memory", "summary"))
    env = summary["environment"]
    chart_encode(encode, os.path.join(RESULTS, "encode.png"))
    chart_training(training, os.path.join(RESULTS, "training.png"))
    ms = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [
        "# BabelCLIP benchmarks",
        "",
        "Every number below comes from `bash bench/run.sh` (then `python bench/report.py`), whose raw results are",
        "in `bench/results/*.json`. Models have the real architectures and sizes with random weights: latency,",
        "throughput and memory are real, quality is not measured here. Each figure is the median of repeated runs",
        "after warm-up. Token counts come from a small tokenizer trained on the benchmark prompts (a real XLM-R",
        "vocabulary gives fewer tokens for the long and non-Latin prompts, so BabelCLIP's times here are upper bounds).",
        "",
        f"Machine: {env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']} with {env['torch_threads']} "
        f"threads, transformers {env['transformers']}, Python {env['python']}, device `{env['device']}`.",
        "",
        "## Targets",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
    ]
    for key, label, op, target, unit in TARGETS:
        value = summary.get(key)
        met = value is not None and (value <= target if op == "<=" else value >= target)
        shown = ("not measured" if value is None else f"{value:,.3g}{unit}" if isinstance(value, float)
                 else f"{value:,}{unit}")
        lines.append(f"| {label} (`{key}`) | {shown} | {op} {target:,}{unit} | {'yes' if met else '**no**'} |")
    lines += ["", "### Targets missed, and the plan", "",
              "- **Speed-up over translate-test** "
              f"({summary['encode_speedup_vs_translate_test']:.1f}x, target 25x). The proxy is the cheapest "
              "translation there is: greedy decoding of exactly as many tokens as the source, no beam search, no "
              "tokenizer, on the same CPU threads. On this 2-core CPU one XLM-R-base forward costs about as much as a "
              "few decoder steps, so the ratio grows with prompt length (see the long prompt below) and with beam "
              "search, which real translate-test pipelines use. The study's 438.7 vs 17.2 ms was measured on a GPU. "
              "Not yet done: a profile of the BabelCLIP path (py-spy / torch.profiler) for per-call overhead at "
              "batch 1, and the GPU run (`--device cuda`).",
              "- **RSS growth 1k -> 100k prompts**: measured "
              f"{summary.get('train_rss_growth_mb_measured') or 0:.0f} MB from "
              f"{summary['train_rss_sizes_measured'][0]:,} to {summary['train_rss_sizes_measured'][1]:,} prompts. "
              "The 100k run was not completed: the teacher cache stores 77 tokens + pooled of 768 floats per prompt "
              "(240 KB), so 100k prompts need 24 GB of disk, which filled this machine. A profile of the first run "
              "showed the memory-mapped reads counted as resident memory (2.1 GB growth from 1k to 10k); the store "
              "now remaps after every 256 MB read, which brought the growth to the figure above. Plan: store "
              "teacher features in fp16 and, for token-aligned adapters, only the token mean, then rerun 100k.",
              ""]
    lines += ["", f"Also: BabelCLIP XLM-R-base + mlp takes {summary['encode_ratio_vs_stock_clip']:.2f}x the time of "
              f"the stock CLIP-L path for one short prompt (`encode_ratio_vs_stock_clip`).", ""]
    lines += ["## Encode latency", "", "![encode latency](bench/results/encode.png)", "",
              table(encode["rows"], [("path", "path"), ("batch", "batch"), ("prompt", "prompt"), ("tokens", "tokens"),
                                     ("ms", "ms"), ("encoder ms", "encoder_ms"), ("adapter ms", "adapter_ms"),
                                     ("adapter share %", "adapter_share_pct")],
                    {"ms": ms, "encoder_ms": ms, "adapter_ms": ms, "adapter_share_pct": ms}), ""]
    lines += ["## Peer adapters at equal dimensions (1024 -> 768)", "",
              table(peers["rows"], [("adapter", "adapter"), ("parameters", "params"), ("file MB (fp32)", "file_mb"),
                                    ("forward ms (batch 1, 32 tokens)", "forward_ms_b1_t32")],
                    {"params": lambda v: f"{v:,}", "file_mb": ms, "forward_ms_b1_t32": lambda v: f"{v:.2f}"}), ""]
    lines += ["## Training", "", f"Measured fp32 matmul rate: {training['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
              "(2048x2048 GEMM).", "", "![training](bench/results/training.png)", "",
              table(training["rows"], [("arch", "arch"), ("batch", "batch"), ("steps/s", "steps_per_s"),
                                       ("samples/s", "samples_per_s"), ("GFLOP/step", "flops_per_step"),
                                       ("fraction of matmul rate", "matmul_peak_fraction")],
                    {"steps_per_s": lambda v: f"{v:.2f}", "samples_per_s": ms,
                     "flops_per_step": lambda v: f"{v / 1e9:.2f}", "matmul_peak_fraction": lambda v: f"{v:.2f}"}), "",
              "Scaling over corpus size (tiny encoder, linear teacher; cache pass = both frozen models once per text, "
              "epoch = one pass of adapter steps over the cached features):", "",
              table(scaling["rows"], [("prompts", "prompts"), ("cache pass s", "cache_s"), ("epoch s", "epoch_s"),
                                      ("peak RSS MB", "peak_rss_mb")],
                    {"cache_s": ms, "epoch_s": ms, "peak_rss_mb": ms}), ""]
    lines += ["## Memory and sizes", "",
              f"Peak RSS with XLM-R-base + mlp loaded: {memory['rss']['loaded_peak_rss_mb']:.0f} MB; while encoding "
              f"batches of 16 long prompts: {memory['rss']['encoding_peak_rss_mb']:.0f} MB.", "",
              table(memory["adapter_files_fp32"], [("arch", "arch"), ("family", "family"), ("parameters", "params"),
                                                    ("file MB (fp32)", "file_mb")],
                    {"params": lambda v: f"{v:,}", "file_mb": ms}), ""]
    with open(os.path.join(REPO, "BENCHMARKS.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
