"""Flux / SD3 text path: BabelCLIP (XLM-R-base or -large + a Flux adapter) against the stock T5-XXL + CLIP-L path.

Issue 13.7. CPU, batch 1, float32 (and BabelCLIP's opt-in int8 encoder), real architectures with random weights.
Each configuration runs in its own process; its peak resident memory (VmHWM) is read after loading and after
encoding, and "peak" below is everything the process held at its highest (weights, activations, PyTorch).

T5-XXL in float32 is 19 GB of weights, too close to this machine's 24 GB to run whole beside anything else, so
the stock path is measured **layer-wise**: a T5 encoder of T5-XXL's exact widths with **one** of its 24 blocks
(embedding, block, final norm) is loaded and timed at the token count ComfyUI feeds it (Flux pads T5 to 256);
its time is multiplied by 24 (an overestimate by 23 embedding look-ups and norms, which are negligible), and its
peak memory is that process's peak plus the 23 blocks it does not hold (their parameter bytes, from the full
configuration on the meta device). CLIP-L (for the pooled vector, 77 tokens) is measured whole and added.

    python bench/flux_t5.py            # writes bench/results/flux-t5.json and summary.json keys flux_text_*
    python bench/flux_t5.py --summary  # only the summary keys, from flux-t5.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(REPO))
RESULTS = os.path.join(REPO, "bench", "results")
PROMPTS = {
    "short": "一只红色的猫睡在屋顶上",
    "long": ("a highly detailed watercolor painting of an old lighthouse on a rocky coast during a violent storm, "
             "huge waves crashing, dramatic clouds, a small fishing boat in the distance, warm light in the window, "
             "seagulls, rain, foam, golden hour, cinematic composition, trending on artstation"),
}
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)


def hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def timed(fn, warmup=1, repeat=5) -> float:
    times = []
    for i in range(warmup + repeat):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def run_babelclip(size: str, int8: bool, arch: str, work: str) -> dict:
    import torch

    sys.path.insert(0, os.path.join(REPO, "bench"))
    from run import xlmr_encoder  # noqa: E402  (bench/run.py: XLM-R of the real size, random weights)

    from babelclip.models import FAMILIES, build_adapter, encode_prompts, quantize_int8

    torch.set_grad_enabled(False)
    family = FAMILIES["flux"]
    encoder = xlmr_encoder(size, work, torch.device("cpu"))
    if int8:
        encoder = quantize_int8(encoder)
    adapter = build_adapter(arch, encoder.info.hidden_size, family).eval()
    loaded = hwm_mb()
    out = {}
    for kind, text in PROMPTS.items():
        def encode():
            result = encode_prompts(encoder, adapter, [text])
            return family.to_host(result.cond, result.mask)[0]
        cond = encode()
        out[kind] = {"ms": timed(encode), "tokens": cond.shape[1], "shape": list(cond.shape)}
    return {"loaded_peak_mb": loaded, "peak_mb": hwm_mb(), "prompts": out,
            "adapter_params": adapter.num_parameters(), "encoder_params": sum(p.numel() for p in encoder.parameters())}


def run_t5_layer(tokens: int) -> dict:
    import torch
    import transformers

    torch.set_grad_enabled(False)
    with torch.device("meta"):
        full = transformers.T5EncoderModel(transformers.T5Config(**T5_XXL))
    full_params = sum(p.numel() for p in full.parameters())
    block_params = sum(p.numel() for p in full.encoder.block[1].parameters())
    del full
    model = transformers.T5EncoderModel(transformers.T5Config(**{**T5_XXL, "num_layers": 1})).eval()
    ids = torch.randint(2, 32000, (1, tokens))
    loaded = hwm_mb()
    ms = timed(lambda: model(input_ids=ids).last_hidden_state, repeat=3)
    return {"one_block_ms": ms, "loaded_peak_mb": loaded, "peak_mb": hwm_mb(), "full_params": full_params,
            "block_params": block_params, "tokens": tokens}


def run_clip_l() -> dict:
    import torch
    import transformers

    torch.set_grad_enabled(False)
    cfg = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    model = transformers.CLIPTextModel(cfg).eval()
    ids = torch.randint(0, 49000, (1, 77))
    loaded = hwm_mb()
    ms = timed(lambda: model(input_ids=ids).pooler_output)
    return {"ms": ms, "loaded_peak_mb": loaded, "peak_mb": hwm_mb(), "params": sum(p.numel() for p in model.parameters())}


def update_summary(result: dict) -> dict:
    """The Flux text-path ratios into ``bench/results/summary.json`` (targets in BENCHMARKS.md): XLM-R-large in
    float32 with the default (linear) and PEA's (mlp) adapter; the speed-up is the lower of short and long prompt,
    the memory fraction the higher of the two adapters."""
    path = os.path.join(RESULTS, "summary.json")
    summary = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {}
    large = [r for r in result["babelclip"] if r["encoder"] == "XLM-R-large" and not r["int8"]]
    summary.update({
        "flux_text_speedup_vs_t5xxl": min(min(r["speedup_short"], r["speedup_long"]) for r in large),
        "flux_text_peak_memory_fraction": max(r["memory_fraction"] for r in large),
        "flux_text_stock_ms": result["stock"]["ms"], "flux_text_stock_peak_mb": result["stock"]["peak_mb"],
        "t5xxl_params": result["stock"]["t5_params"],
    })
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def child(kind: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True,
                         check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> dict:
    import platform

    import torch

    work = tempfile.mkdtemp(prefix="babelclip-flux-bench-")
    child("babel", "base", "0", "linear", work)  # builds the shared tokenizer once (not timed)
    rows = []
    for size in ("base", "large"):
        for int8 in (False, True):
            for arch in ("linear", "mlp"):
                r = child("babel", size, str(int(int8)), arch, work)
                rows.append({"encoder": f"XLM-R-{size}", "int8": int8, "arch": arch, **r})
                print(json.dumps(rows[-1]), flush=True)
    t5 = child("t5", "256")
    clip = child("clip")
    layers = T5_XXL["num_layers"]
    stock_ms = t5["one_block_ms"] * layers + clip["ms"]
    missing_blocks_mb = t5["block_params"] * (layers - 1) * 4 / 2 ** 20
    stock_peak = t5["peak_mb"] + missing_blocks_mb + clip["peak_mb"]
    stock = {"t5_layer": t5, "clip_l": clip, "ms": stock_ms, "peak_mb": stock_peak,
             "t5_params": t5["full_params"], "t5_weights_fp16_gb": t5["full_params"] * 2 / 1e9,
             "how": "T5: 24 x one-block encoder at 256 tokens; peak = one-block process peak + 23 blocks' fp32 bytes "
                    "+ CLIP-L process peak"}
    for r in rows:
        r["speedup_short"] = stock_ms / r["prompts"]["short"]["ms"]
        r["speedup_long"] = stock_ms / r["prompts"]["long"]["ms"]
        r["memory_fraction"] = r["peak_mb"] / stock_peak
    result = {"environment": {"python": platform.python_version(), "torch": torch.__version__,
                              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "processor": platform.processor() or platform.machine()},
              "babelclip": rows, "stock": stock}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "flux-t5.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
    update_summary(result)
    return result


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, args = sys.argv[2], sys.argv[3:]
        if kind == "babel":
            res = run_babelclip(args[0], bool(int(args[1])), args[2], args[3])
        elif kind == "t5":
            res = run_t5_layer(int(args[0]))
        else:
            res = run_clip_l()
        print(json.dumps(res))
    elif sys.argv[1:] == ["--summary"]:
        print(json.dumps(update_summary(json.load(open(os.path.join(RESULTS, "flux-t5.json"), encoding="utf-8")))))
    else:
        r = main()
        print(json.dumps(r["stock"], indent=1))
