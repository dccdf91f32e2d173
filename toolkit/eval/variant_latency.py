"""Latency of a run's variants on each target of ``[eval] targets``, on real eval samples.

- ``host``: measured in this process for every runtime a variant has a file for: ONNX Runtime (``model.onnx``; the
  host's preferred runtime), ExecuTorch (``model.pte``) and PyTorch eager (``model/``), each under ``by_runtime``;
  the top-level fields are the target's preferred runtime's. Per runtime, all the variants being evaluated are
  loaded first and timed in interleaved rounds (:mod:`toolkit.eval.interleave`): ``p10_ms`` (the figure compared),
  ``median_ms`` (median of the round medians), ``spread_ms`` (their interquartile range), ``stable`` and the
  machine's ``interference`` beside p50/p90/p99. Every variant of a run is therefore in memory at once while the host times it.
- any other target: measured there by its runner (``toolkit.eval.runners.runner_for``) when it is reachable, else
  estimated from the ONNX graph (``toolkit.eval.estimate``) calibrated on the host measurement; an unreachable
  target falls back to the estimate with a warning.

Inputs: eval texts tokenised to ``[eval.latency] seq_len`` (truncated, right-padded with the mask at 0; a language
model's eval text is cut into full windows of real tokens), or eval images. Seq2seq models are timed on their
encoder graph (one forward of the source), which is what every runtime and the estimator can run alike; the
entry says so (``graph``). Language models and seq2seq models also get ``generation`` on the host, per runtime
(ONNX Runtime with the exported KV cache, PyTorch eager with its cache): time to first token and tokens/s of a
greedy decode of ``[eval.latency] new_tokens`` tokens from a real eval prompt
(:mod:`toolkit.eval.latency_generation`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.config import LatencyConfig
from toolkit.errors import UserError
from toolkit.eval.evaluate import Encoding
from toolkit.pte_decoder import is_kv_program

SAMPLES = 32
"""at most this many batches of real samples are cycled through the timed runs"""
FIELDS = ("p10_ms", "p10_spread_ms", "p10_rounds", "median_ms", "spread_ms", "rounds", "stable", "interference", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "std_ms", "throughput", "threads", "runtime",
          "source", "batch", "seq_len", "warmup", "runs", "first_inference_ms", "load_ms", "peak_rss_mb",
          "rss_growth_mb", "model_size_bytes", "inputs", "basis", "graph", "file", "generation", "provider",
          "node_assignment")
TORCH = "torch"
"""the runtime of a variant's PyTorch model folder (model/)"""
CONVENTION = ("p50/p90/p99/mean over timed runs after warm-up (toolkit.eval.latency: perf_counter_ns around each "
              "call, numpy linear percentiles); throughput = batch / mean; real eval samples; top-level fields = the "
              "target's preferred runtime, every runtime measured under by_runtime; source = measured | estimated; "
              "host figures: see host_latency")
GENERATION_CONVENTION = (
    "host, per runtime under latency.<target>.generation: greedy decode of {n} new tokens (EOS ignored), batch 1, "
    "the first eval prompt; ttft_ms = prompt in to first token (seq2seq: encoder + first decoder step); "
    "tokens_per_s = (new_tokens - 1) / decode time after the first token; medians over generation_runs; "
    "ONNX Runtime with the exported KV cache, PyTorch eager with use_cache=True, ExecuTorch programs with the "
    "cache inside (8da4w)")


def runtime_format(runtime: str) -> str:
    """The export format whose files a runtime runs ("pytorch" for the model folder)."""
    from toolkit.registry import FORMATS

    return next((name for name, f in FORMATS.items() if f.runtime == runtime and name != "torchscript"),
                "pytorch" if runtime == TORCH else runtime)


def variant_files(variant: Any, task: Any) -> dict[str, Path]:
    """The variant's deployable files by format: "onnx" (the graph timed: an encoder-decoder's encoder), "decoder",
    and every other format's main file ("ort", "pte", ...) where the variant has one."""
    from toolkit.registry import FORMATS
    from toolkit.variants import graph_files

    folder = Path(variant.path)
    graphs = graph_files(folder, task.graphs, variant.onnx)
    files: dict[str, Path] = {}
    main = graphs.get(task.graphs[0])
    if main is not None:
        files["onnx"] = main
    if "decoder" in graphs:  # an encoder-decoder's generation needs both graphs
        files["decoder"] = graphs["decoder"]
    stem = main.stem if main is not None else ("encoder_model" if len(task.graphs) > 1 else "model")
    for name, fmt in FORMATS.items():
        if name in files or name in ("onnx", "torchscript"):
            continue
        for p in (folder / f"{stem}{fmt.suffix}", folder / f"model{fmt.suffix}"):
            if p.is_file():
                files[name] = p
                break
    return files


def graph_paths(variant: Any, task: Any) -> list[Path]:
    """Every ONNX graph of the variant (an encoder-decoder's encoder and decoder), for size_bytes."""
    from toolkit.variants import graph_files

    return list(graph_files(Path(variant.path), task.graphs, variant.onnx).values())


# --- inputs ------------------------------------------------------------------------------------------------------

def base_samples(enc: Encoding, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """Real eval samples as the task lays them out: {"input_ids", "attention_mask"} (N, seq_len) or
    {"pixel_values"} (N, C, H, W)."""
    n = max(batch, min(SAMPLES * batch, len(enc.examples)))
    return enc.task.latency_samples(enc.tokenizer, enc.examples, n, seq_len, enc.pad_id, preprocess=enc.preprocess)


def onnx_samples(path: Path, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``base`` shaped to an ONNX graph's inputs: token types, positions and an empty KV cache (prefill) added.

    Raises:
        UserError: an input that real samples cannot fill (e.g. a merged decoder's encoder states).
    """
    from toolkit import onnxrt

    return onnxrt.feed(onnxrt.graph_inputs(path), base, path)


def pte_names(base: dict[str, np.ndarray]) -> list[str]:
    """A .pte stores no input names: the order the exporter uses (input_ids, attention_mask / pixel_values)."""
    return list(base)


# --- measuring -----------------------------------------------------------------------------------------------------

def shown(path: Path | str, root: Path | None) -> str:
    """A file as eval.json names it: relative to the run directory (as export.json does) when inside it."""
    p = Path(path).absolute()
    if root is not None and p.is_relative_to(Path(root).absolute()):
        return p.relative_to(Path(root).absolute()).as_posix()
    return str(path)


def _entry(result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    d = {**result, **extra}
    return {k: d[k] for k in FIELDS if k in d and d[k] is not None}


def host_contender(runtime: str, files: dict[str, Path], enc: Encoding, cfg: LatencyConfig
                   ) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]] | None:
    """(model, inputs, load_contender keywords) of a variant in ``runtime`` on the host; None when the variant has
    nothing that runtime runs."""
    image = enc.task.data.images
    seq_len = None if image else cfg.seq_len
    base = base_samples(enc, cfg.batch, cfg.seq_len)
    kwargs: dict[str, Any] = {"seq_len": seq_len}
    if runtime == "onnxruntime" and "onnx" in files:
        return files["onnx"], onnx_samples(files["onnx"], base), kwargs
    if runtime == "executorch" and "pte" in files and not image and is_kv_program(files["pte"]):
        # a decoder with its KV cache inside (8da4w): one forward = a prefill of seq_len tokens from position 0
        if cfg.batch != 1:
            raise UserError(f"the program decodes one sequence at a time; eval.latency.batch = {cfg.batch} needs 1")
        ids = base["input_ids"]
        positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        inputs = {"input_ids": ids, "cache_position": positions}
        return files["pte"], inputs, {"options": {"input_names": list(inputs)}, "seq_len": seq_len}
    if runtime == "executorch" and "pte" in files:
        inputs, length = base, seq_len
        if not image:
            # a decoder's or a PT2E program's token length may be fixed below seq_len: time it at its own
            from toolkit.eval.onnx_eval import pte_input_sizes

            sizes = pte_input_sizes(files["pte"])
            if sizes and len(sizes[0]) == 2 and sizes[0][1] < cfg.seq_len:
                length = sizes[0][1]
                inputs = base_samples(enc, cfg.batch, length)
        return files["pte"], inputs, {"options": {"input_names": pte_names(inputs)}, "seq_len": length}
    if runtime == TORCH and enc.model is not None:
        # an encoder-decoder is timed on its encoder (one forward of the source), as the ONNX graph is
        return (enc.model.get_encoder() if len(enc.task.graphs) > 1 else enc.model), base, kwargs
    return None


INTERLEAVED = ("p10_ms", "p10_spread_ms", "p10_rounds", "median_ms", "spread_ms", "rounds", "stable", "interference")
"""the interleaved timing's fields, from the result's details to the entry's top level"""


def measure_host(jobs: dict[str, tuple[dict[str, Path], Encoding]], cfg: LatencyConfig, threads: int,
                 log: Callable[[str, str], None], runtimes: tuple[str, ...] = ("onnxruntime", "executorch", "torch"),
                 root: Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Measure every variant of ``jobs`` (name -> (files, encoding)) in each runtime it has a file for, in this
    process: per runtime, all variants are loaded and warmed up, then timed in interleaved rounds
    (:func:`toolkit.eval.interleave.time_interleaved`), so background load lands on all of them alike.
    Returns {variant: {runtime: fields}}.

    A runtime that cannot run a variant (missing extra, static shapes that differ, an op it lacks) is skipped
    for that variant with a warning, so one format never costs the others their numbers.
    """
    from toolkit.eval.interleave import time_interleaved
    from toolkit.eval.latency import load_contender

    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in jobs}
    for runtime in runtimes:
        loaded: dict[str, Any] = {}
        files_shown: dict[str, str] = {}
        try:
            for name, (files, enc) in jobs.items():
                try:
                    spec = host_contender(runtime, files, enc, cfg)
                    if spec is None:
                        continue
                    model, inputs, kwargs = spec
                    if runtime == "onnxruntime" and cfg.provider != "cpu":
                        # TensorRT's engines are kept in the run directory, beside the variants they were built for
                        cache = {"cache_dir": Path(root) / "trt_cache" / name} if root is not None else {}
                        kwargs = {**kwargs, "options": {"provider": cfg.provider, **cache}}
                    loaded[name] = load_contender(model, runtime=runtime, threads=threads, batch=cfg.batch,
                                                  warmup=cfg.warmup, inputs=inputs, target="host", **kwargs)
                    files_shown[name] = shown(model if isinstance(model, Path) else enc.source, root)
                except UserError as e:
                    log(f"{name}: host latency with {runtime} skipped: {e}", "warning")
            results = time_interleaved(loaded, cfg.runs, cfg.budget_s, cfg.rounds) if loaded else {}
        finally:
            for contender in loaded.values():  # closed by time_interleaved, unless loading failed midway
                contender.close(alone=False)
        for name, r in results.items():
            d = r.to_dict()
            timing = {k: d["details"][k] for k in INTERLEAVED + ("node_assignment",) if k in d.get("details", {})}
            provider = cfg.provider if runtime == "onnxruntime" else None
            out[name][runtime] = _entry({**d, **timing}, graph=jobs[name][1].task.graphs[0], file=files_shown[name],
                                        provider=provider)
    for name, (files, enc) in jobs.items():
        if not (enc.task.kv_cache and cfg.new_tokens > 0):
            continue
        base = base_samples(enc, cfg.batch, cfg.seq_len)
        for runtime, entry in out[name].items():
            if runtime == "executorch" and not ("pte" in files and is_kv_program(files["pte"])):
                continue  # a logits-only program recomputes the whole window per token: not how one generates
            try:
                entry["generation"] = measure_generation(runtime, files, enc, cfg, threads, base)
            except Exception as e:  # a graph the decode loop cannot drive: the other numbers still count
                from toolkit.errors import first_line

                log(f"{name}: generation timing with {runtime} skipped: {first_line(e)}", "warning")
    return out


def measure_generation(runtime: str, files: dict[str, Path], enc: Encoding, cfg: LatencyConfig, threads: int,
                       base: dict[str, np.ndarray]) -> dict[str, Any]:
    """Time to first token and tokens/s of a greedy decode (batch 1) from the first eval prompt, in ``runtime``.

    The prompt is the first timed sample's real tokens (a language model's prompt leaves room for the new tokens
    in the model's positions). EOS is ignored so every decode makes ``new_tokens`` tokens.
    """
    from toolkit import decode_steps as gs
    from toolkit.eval.latency_generation import time_generation
    from toolkit.eval.onnx_eval import positions_in, read_config

    if enc.model is not None and runtime == TORCH:
        config = enc.model.config.to_dict()
    else:
        config = read_config(files["onnx"].parent if "onnx" in files else None) or read_config(
            Path(enc.source) if enc.source else None)
    prompt = base["input_ids"][0][base["attention_mask"][0] == 1]
    positions = positions_in(config) if enc.task.causal else None
    if positions is not None:
        if positions <= cfg.new_tokens:
            raise UserError(f"eval.latency.new_tokens = {cfg.new_tokens} leaves no room for a prompt in the "
                            f"model's {positions} positions")
        prompt = prompt[-(positions - cfg.new_tokens):]
    if runtime == TORCH:
        step = gs.torch_step(enc.model, threads)
    elif runtime == "onnxruntime" and len(enc.task.graphs) > 1:
        if "decoder" not in files or "onnx" not in files:
            raise UserError("no decoder graph beside the encoder")
        start = config.get("decoder_start_token_id")
        if not isinstance(start, int):
            raise UserError("no decoder_start_token_id in the variant's config.json")
        step = gs.onnx_seq2seq_step(files["onnx"], files["decoder"], threads, start)
    elif runtime == "onnxruntime":
        step = gs.onnx_decoder_step(files["onnx"], threads)
    elif runtime == "executorch":
        step = gs.pte_decoder_step(files["pte"], threads)
    else:
        raise UserError(f"no generation timing for {runtime}")
    import torch

    torch_threads = torch.get_num_threads()  # torch_step sets the thread count; leave it as it was
    try:
        timing = time_generation(step, prompt, cfg.new_tokens, warmup=1, runs=cfg.generation_runs).to_dict()
    finally:
        torch.set_num_threads(torch_threads)
    for key in ("tokens", "conventions", "warmup"):  # the conventions are eval.json's, once per variant
        timing.pop(key)
    return timing


def top_level(by_runtime: dict[str, dict[str, Any]], preferred: str) -> dict[str, Any]:
    """The target's latency entry: its preferred runtime's fields at the top, every runtime under by_runtime."""
    if not by_runtime:
        return {}
    chosen = preferred if preferred in by_runtime else next(iter(by_runtime))
    entry = {**by_runtime[chosen], "by_runtime": by_runtime}
    if chosen != preferred:
        entry["preferred_runtime"] = preferred
        entry["note"] = (f"no {runtime_format(preferred)} file for the preferred runtime {preferred}: "
                         f"showing {chosen}; run `python -m toolkit export` for the deployable files")
    return entry


def target_latency(target: Any, files: dict[str, Path], enc: Encoding, cfg: LatencyConfig,
                   host_entry: Callable[[], dict[str, Any] | None], host_target: Any,
                   log: Callable[[str, str], None], label: str = "", root: Path | None = None) -> dict[str, Any] | None:
    """Latency on a non-host target: measured by its runner when reachable, else estimated (calibrated on the host).

    ``host_entry()`` gives the host's ONNX Runtime measurement of the same graph (measured on first use).
    Returns None (with a warning) when the variant has no ONNX graph to measure or estimate.
    """
    model = files.get(runtime_format(target.runtime)) or files.get("onnx")
    if model is None:
        log(f"{label}{target.name}: no ONNX graph to measure or estimate; run `python -m toolkit export` first",
            "warning")
        return None
    threads = cfg.threads or target.threads
    graph = enc.task.graphs[0]
    seq_len = cfg.seq_len
    from toolkit.eval.runners import runner_for

    runner = runner_for(target)
    if runner is not None:
        base = base_samples(enc, cfg.batch, cfg.seq_len)
        inputs = onnx_samples(model, base) if model.suffix == ".onnx" else base
        try:
            extra = {"provider": cfg.provider} if cfg.provider != "cpu" else {}  # runners before it took none
            if extra and root is not None:
                extra["cache_dir"] = Path(root) / "trt_cache" / model.parent.name
            r = runner.measure(model, batch=cfg.batch, seq_len=seq_len, warmup=cfg.warmup, runs=cfg.runs,
                               threads=threads, inputs=inputs, **extra)
            entry = _entry({**r, "source": "measured"}, graph=graph, file=shown(model, root))
            return {**entry, "by_runtime": {entry.get("runtime", target.runtime): dict(entry)}}
        except UserError as e:
            log(f"{label}{target.name}: {e}; estimating its latency instead", "warning")
    if "onnx" not in files:
        log(f"{label}{target.name}: no ONNX graph to estimate from; run `python -m toolkit export` first", "warning")
        return None
    from toolkit.eval.estimate import calibrate, estimate_latency

    host = host_entry()
    calibration = None
    try:
        if host is not None and host.get("provider", "cpu") != "cpu":
            log(f"{label}{target.name}: the host was timed on {host['provider']}, not its CPU; the estimate is "
                f"not calibrated", "warning")
        elif host is not None:
            # the host figures are measured at the thread count the host measurement used
            measured_on = dataclasses.replace(host_target, threads=int(host.get("threads") or host_target.threads))
            calibration = calibrate(files["onnx"], host["p50_ms"], measured_on, cfg.batch, seq_len)
        r = estimate_latency(files["onnx"], target, calibration, batch=cfg.batch, seq_len=seq_len)
    except UserError as e:
        log(f"{label}{target.name}: no estimate either: {e}", "warning")
        return None
    entry = _entry({**r, "source": "estimated"}, graph=graph, file=shown(files["onnx"], root))
    if "threads" not in entry:
        entry["threads"] = threads
    return {**entry, "by_runtime": {entry.get("runtime", target.runtime): dict(entry)}}
