"""INT4 small language models: file size, peak memory, time to first token, decode tokens/s and perplexity.

Two models (no pretrained small decoder is available offline):
(a) quality — `recipes/small-lm.toml` (the Llama-shaped `llama-small`) trained on ../shared/data/tinyshakespeare:
    held-out perplexity of the float graph and of each INT4 algorithm, from the run's report;
(b) speed — a decoder with SmolLM2-135M's exact shapes (Llama, hidden 576, 30 layers, 9 heads / 3 key-value heads,
    vocabulary 49,152, tied embeddings) and random weights, since speed depends on shapes, not on training:
    optimum's FP32 ONNX export with its KV cache, ONNX Runtime dynamic INT8 of it, and the toolkit's INT4
    (`scheme = "int4"`: RTN and HQQ, block 32); and ExecuTorch programs with the KV cache inside: FP32 and
    `scheme = "8da4w"` (int8 dynamic activations, int4 weights in groups of 32, XNNPACK), `--context` positions.

Speed: batch 1, a 64-token prompt, 128 new tokens (greedy, through `toolkit.decode_steps`, the loop eval times),
1 and 2 threads. Each measurement runs in a fresh process (so peak RSS is that variant's alone); variants alternate
in rounds and the figures are medians of rounds.

    python benchmarks/llm_int4.py [--rounds 3] [--skip-quality] [--skip-pte] [--context 256] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from toolkit.targets.host import host_summary

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SMOL = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
            rms_norm_eps=1e-5, rope_theta=100000.0)


def build_speed_models(work: Path) -> dict[str, Path]:
    """FP32 (optimum export), INT8 dynamic and INT4 RTN / HQQ graphs of the SmolLM2-135M-shaped decoder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from toolkit.compress.int4 import matmul_form, quantize_graph
    from toolkit.compress.quantize import QuantizeConfig
    from toolkit.export.onnx import export_onnx

    out = {"fp32": work / "fp32" / "model.onnx", "int8": work / "int8" / "model.onnx",
           "int4-rtn": work / "int4-rtn" / "model.onnx", "int4-hqq": work / "int4-hqq" / "model.onnx"}
    if all(p.exists() for p in out.values()):
        return out
    folder = work / "smol-shaped"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOL, bos_token_id=1, eos_token_id=2))
        model.save_pretrained(folder, safe_serialization=True)
    if not out["fp32"].exists():
        t0 = time.time()
        export_onnx(folder, out["fp32"].parent, "language-modeling")
        print(f"export: {time.time() - t0:.0f} s", file=sys.stderr)
    if not out["int8"].exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out["int8"].parent.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(str(out["fp32"]), str(out["int8"]), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm", "Gather"], use_external_data_format=False)
    import onnx

    prepared = work / "prepared" / "model.onnx"
    if not prepared.exists():
        model = onnx.load(str(out["fp32"]))
        print(f"graph form: {matmul_form(model)}", file=sys.stderr)
        prepared.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(prepared), save_as_external_data=True, location="model.onnx.data")
    for name, algorithm in (("int4-rtn", "rtn"), ("int4-hqq", "hqq")):
        if not out[name].exists():
            t0 = time.time()
            quantize_graph(prepared, out[name], QuantizeConfig(scheme="int4", algorithm=algorithm), 4, set())
            print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr)
    return out


def build_pte_models(work: Path, context: int) -> dict[str, Path]:
    """FP32 and 8da4w (`scheme = "8da4w"`) ExecuTorch programs of the same decoder, KV cache inside, ``context``
    positions (an app sizes its cache to the context it serves; the static cache is attended in full each step)."""
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.compress.a8w4 import quantize_8da4w
    from toolkit.export.executorch import export_pte_decoder

    out = {"pte-fp32": work / "pte-fp32" / "model.pte", "pte-8da4w": work / "pte-8da4w" / "model.pte"}
    for name, path in out.items():
        if path.exists():
            continue
        model = AutoModelForCausalLM.from_pretrained(work / "smol-shaped", attn_implementation="sdpa").eval()
        model.config.max_position_embeddings = context
        t0 = time.time()
        if name == "pte-8da4w":
            with torch.no_grad():
                quantize_8da4w(model, 32)
        export_pte_decoder(model, path, name)
        print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr)
    return out


def measure(path: Path, threads: int, prompt: int, new_tokens: int) -> dict:
    """In a child process: load, decode ``new_tokens`` after a ``prompt``-token prompt; TTFT, tokens/s, peak RSS."""
    code = f"""
import json, resource, time, numpy as np
from toolkit.decode_steps import onnx_decoder_step, pte_decoder_step
from toolkit.eval.latency_generation import time_generation
t0 = time.perf_counter()
step = ({"pte_decoder_step" if path.suffix == ".pte" else "onnx_decoder_step"})({str(path)!r}, {threads})
load = time.perf_counter() - t0
prompt = (np.arange({prompt}) * 7919 % 40000 + 100).astype(np.int64)
t = time_generation(step, prompt, {new_tokens}, warmup=1, runs=1).to_dict()
t["load_s"] = load
t["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(t))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if p.returncode != 0:
        raise SystemExit(f"{path}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure_genai(folder: Path, python: str, threads: int, prompt: int, new_tokens: int) -> dict:
    """The `onnxruntime-genai` builder's model in its own runtime (its own environment: the 0.18 builder needs
    transformers >= 5): ``append_tokens`` + the first ``generate_next_token`` is time to first token."""
    code = f"""
import json, resource, time, numpy as np
import onnxruntime_genai as og
t0 = time.perf_counter()
config = og.Config({str(folder)!r})
config.overlay(json.dumps({{"model": {{"decoder": {{"session_options": {{"intra_op_num_threads": {threads},
                                                                          "inter_op_num_threads": 1}}}}}}}}))
model = og.Model(config)
load = time.perf_counter() - t0
prompt = (np.arange({prompt}) * 7919 % 40000 + 100).astype(np.int32)
def once():
    params = og.GeneratorParams(model)
    params.set_search_options(max_length={prompt + new_tokens}, do_sample=False)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(prompt)
    gen.generate_next_token()
    t1 = time.perf_counter()
    n = 1
    while not gen.is_done():
        gen.generate_next_token()
        n += 1
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (n - 1) / (t2 - t1), n
once()
ttft, tps, n = once()
print(json.dumps({{"ttft_ms": ttft, "tokens_per_s": tps, "new_tokens": n, "load_s": load,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if p.returncode != 0:
        raise SystemExit(f"{folder}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def file_mb(path: Path) -> float:
    if path.suffix == ".pte":
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith("model.onnx")) / 2**20


def quality(work: Path) -> dict[str, float]:
    """Held-out perplexity per variant of the small-lm recipe trained on tinyshakespeare."""
    out = work / "small-lm"
    report = out / "report.json"
    if not report.exists():
        recipe = work / "small-lm-gptq.toml"  # the packaged recipe plus a GPTQ step
        recipe.write_text((ROOT / "recipes" / "small-lm.toml").read_text(encoding="utf-8")
                          + '\n[[compress]]\nname = "int4-gptq"\nfrom = "base"\nmethod = "quantize"\nscheme = "int4"\n'
                            'algorithm = "gptq"\ncalibration_samples = 64\nmax_accuracy_drop = 0.05\n', encoding="utf-8")
        subprocess.run([sys.executable, "-m", "toolkit", "run", str(recipe), "--out", str(out), "--quiet", "--set",
                        f"data.train={SHAKESPEARE}", "--set", 'eval.targets=["host"]'], check=True)
    data = json.loads(report.read_text())
    return {v["name"]: v["metrics"]["perplexity"] for v in data["variants"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-llm-int4"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-pte", action="store_true", help="no ExecuTorch rows (FP32 and 8da4w .pte)")
    ap.add_argument("--context", type=int, default=256, help="the .pte programs' KV-cache positions")
    ap.add_argument("--genai-model", metavar="DIR", help="the onnxruntime-genai builder's INT4 CPU model of the same "
                    "weights (python -m onnxruntime_genai.models.builder -i WORK/smol-shaped -p int4 -e cpu)")
    ap.add_argument("--genai-python", default=sys.executable, metavar="PYTHON",
                    help="the interpreter of an environment with onnxruntime-genai (its builder needs transformers >= 5)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = build_speed_models(work)
    if not args.skip_pte:
        models.update(build_pte_models(work, args.context))
    genai = Path(args.genai_model) if args.genai_model else None
    if genai is not None:
        models["genai-int4"] = genai / "model.onnx"
    rows: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.rounds):
        for threads in args.threads:
            for name, path in models.items():
                m = (measure_genai(genai, args.genai_python, threads, args.prompt, args.new_tokens)
                     if name == "genai-int4" else measure(path, threads, args.prompt, args.new_tokens))
                rows.setdefault((name, threads), []).append(m)
                print(f"round {r + 1} {name} t={threads}: ttft {m['ttft_ms']:.0f} ms, "
                      f"{m['tokens_per_s']:.1f} tok/s, rss {m['peak_rss_mb']:.0f} MB", file=sys.stderr)
    ppl = {} if args.skip_quality or not SHAKESPEARE.exists() else quality(work)
    table = []
    for (name, threads), ms in rows.items():
        table.append({"variant": name, "threads": threads, "file_mb": round(file_mb(models[name]), 1),
                      "peak_rss_mb": round(statistics.median(m["peak_rss_mb"] for m in ms), 0),
                      "ttft_ms": round(statistics.median(m["ttft_ms"] for m in ms), 1),
                      "tokens_per_s": round(statistics.median(m["tokens_per_s"] for m in ms), 1)})
    base = {t["threads"]: t for t in table if t["variant"] == "fp32"}
    pte_base = {t["threads"]: t for t in table if t["variant"] == "pte-fp32"}
    print(f"\n{date.today().isoformat()} · {host_summary()} · SmolLM2-135M shapes (random weights), batch 1, "
          f"{args.prompt}-token prompt, {args.new_tokens} new tokens, medians of {args.rounds} rounds\n")
    print("| variant | threads | file (MB) | × FP32 size | peak RSS (MB) | TTFT (ms) | decode tok/s | × FP32 |")
    print("|---|---|---|---|---|---|---|---|")
    for t in table:
        b = base[t["threads"]]
        print(f"| {t['variant']} | {t['threads']} | {t['file_mb']} | {t['file_mb'] / b['file_mb']:.2f} | "
              f"{t['peak_rss_mb']:.0f} | {t['ttft_ms']} | {t['tokens_per_s']} | "
              f"{t['tokens_per_s'] / b['tokens_per_s']:.2f} |")
    for t in table:
        if t["variant"] == "pte-8da4w" and t["threads"] in pte_base:
            print(f"8da4w .pte vs FP32 .pte, {t['threads']} thread(s): "
                  f"{t['tokens_per_s'] / pte_base[t['threads']]['tokens_per_s']:.2f}x decode tokens/s")
    if ppl:
        print("\nsmall-lm (llama-small) on tinyshakespeare, held-out perplexity: "
              + ", ".join(f"{k} {v:.3f} ({(v / ppl['base'] - 1) * 100:+.2f} %)" for k, v in ppl.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"date": date.today().isoformat(), "machine": host_summary(),
                                               "speed": table, "perplexity": ppl}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
