"""The variant a server runs: chosen from the run's report, loaded in one runtime, with eval's pre- and
post-processing.

What eval does to an example is what the server does to a request: the task encodes it from the files beside the
variant (tokenizer, ``preprocess.json`` with the recipe's ``data.clean`` steps, the image processor's steps,
``labels.json``; ``Task.encode_bundle``), the task's collate pads a batch, ONNX Runtime (or PyTorch, or
ExecuTorch) runs it, and a softmax gives the class probabilities, as ``toolkit.eval.onnx_eval`` computes them.
Language models decode through the step functions that eval times (``toolkit.decode_steps``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.errors import UserError, did_you_mean

RUNTIMES = ("onnxruntime", "executorch", "pytorch")

ENDPOINTS = {"predict": "/v1/predict", "generate": "/v1/generate", "translate": "/v1/translate"}


def endpoint_of(task: Any) -> str | None:
    """Which endpoint serves a task, from what the task says of itself (never its name)."""
    if task.classifies:
        return "predict"
    if task.causal:
        return "generate"
    if "encoder" in task.graphs:
        return "translate"
    return None


@dataclass
class ServedModel:
    """A loaded variant and everything a request needs."""

    run: Path
    variant: str
    task: Any
    runtime: str
    endpoint: str
    threads: int
    files: list[dict[str, Any]]
    """the variant's model files: {"path" (relative to the run), "sha256" (the manifest's, else computed)}"""
    labels: list[str] = field(default_factory=list)
    clean: list[str] = field(default_factory=list)
    """the recipe's data.clean steps, from preprocess.json"""
    notes: list[str] = field(default_factory=list)
    encode: Callable[[list[Any]], list[Any]] | None = None
    """inputs (texts or decoded images) -> encoded items (classification)"""
    collate: Callable[[list[Any]], dict[str, Any]] | None = None
    infer: Callable[[dict[str, Any]], np.ndarray] | None = None
    """a collated batch -> class probabilities (B, K)"""
    step: Callable[[np.ndarray, Any], tuple[np.ndarray, Any]] | None = None
    """one decode step (generation): ``step(new_ids, state) -> (logits, state)``; the state (KV cache) is the
    caller's, so one step function serves every stream"""
    tokenizer: Any = None
    prompt_limit: int | None = None
    """the longest prompt the model's positions allow (tokens)"""
    stop_ids: set[int] = field(default_factory=set)
    line_break_ids: set[int] = field(default_factory=set)
    """EOS of a language model trained on lines each followed by EOS: a line break to it, not the end of the text,
    so generation goes on through it and the text shows a newline"""
    forced_first: int | None = None
    """the generation config's ``forced_bos_token_id`` (seq2seq), forced as the first output token"""
    forced_last: int | None = None
    """its ``forced_eos_token_id``: the last allowed token is the end of the sequence"""

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt (language models: special tokens but no trailing EOS, as eval's decoding starts) or a source
        text (seq2seq), cleaned as the training data was."""
        from toolkit.data.clean import clean_text
        from toolkit.eval.generation import _prompt_ids

        text = clean_text(text, self.clean)
        if self.endpoint == "generate":
            return _prompt_ids(self.tokenizer, text, None, 0)
        return list(self.tokenizer(text, truncation=True, max_length=self.prompt_limit or 512)["input_ids"])

    def detokenize(self, tokens: list[int]) -> str:
        """Generated token ids as text (special tokens dropped; a line-break EOS shown as a newline)."""
        if not self.line_break_ids:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)
        lines, current = [], []
        for t in tokens:
            if t in self.line_break_ids:
                lines.append(current)
                current = []
            else:
                current.append(t)
        lines.append(current)
        return "\n".join(self.tokenizer.decode(line, skip_special_tokens=True) for line in lines)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers."""
        return {"run": self.run.name, "run_dir": str(self.run), "variant": self.variant, "task": self.task.name,
                "endpoint": ENDPOINTS[self.endpoint], "runtime": self.runtime, "threads": self.threads,
                "labels": self.labels, "clean": self.clean, "files": self.files, "notes": self.notes}


def choose_variant(run: Path, requested: str | None, variants: dict[str, Any]) -> str:
    """``--variant``, else the report's recommendation for ``host``, else the baseline.

    Raises:
        UserError: an unknown name, or no report to choose from.
    """
    if requested is not None:
        if requested not in variants:
            raise UserError(f"--variant '{requested}': no such variant in {run}"
                            f"{did_you_mean(requested, list(variants))} (there are: {', '.join(variants)})")
        return requested
    report = run / "report.json"
    if not report.is_file():
        raise UserError(f"{run}: no report.json to take the recommended variant from; run `python -m toolkit eval` "
                        f"on the run first, or pass --variant NAME ({', '.join(variants)})")
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{report}: not readable JSON ({e}); rebuild it with `python -m toolkit report`, or pass "
                        f"--variant NAME") from None
    name = (data.get("recommendation") or {}).get("host") or data.get("baseline")
    if name not in variants:
        raise UserError(f"{report}: recommends '{name}', which is not in {run / 'variants'}; pass --variant NAME")
    return name


def load_served(run_dir: str | Path, variant: str | None = None, runtime: str | None = None,
                threads: int | None = None) -> ServedModel:
    """Load a run's variant for serving.

    Raises:
        UserError: not a run directory, an unknown variant or runtime, a variant without a file for the runtime,
            a task no endpoint serves.
    """
    from toolkit.config import load_recipe
    from toolkit.registry import TASKS
    from toolkit.rundir import RunDir
    from toolkit.variants import bundle_source, load_variants

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise UserError(f"{run.path}: no such run directory; give the --out folder of a run (runs/<recipe name>)")
    if not run.recipe.is_file():
        raise UserError(f"{run.path}: not a run directory (no recipe.toml); give the folder `toolkit run` wrote")
    recipe = load_recipe(run.recipe)
    task = TASKS.get(recipe.task)
    endpoint = endpoint_of(task)
    if endpoint is None:
        raise UserError(f"{run.path}: the {task.name} task has no serving endpoint")
    variants = load_variants(run.variants)
    if not variants:
        raise UserError(f"{run.path}: no variants yet; train first (python -m toolkit train)")
    name = choose_variant(run.path, variant, variants)
    v = variants[name]
    runtime = _runtime(v, runtime, name)
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    folder = bundle_source(v, variants)
    served = ServedModel(run=run.path, variant=name, task=task, runtime=runtime, endpoint=endpoint,
                         threads=int(threads), files=[])
    if endpoint == "predict":
        _classifier(served, v, folder)
    else:
        _generator(served, v, variants, folder)
    served.files = _files(run, v, runtime, task)
    return served


def _runtime(v: Any, runtime: str | None, name: str) -> str:
    have = {"onnxruntime": v.onnx is not None and Path(v.onnx).is_file(), "executorch": v.pte is not None,
            "pytorch": v.has_pytorch}
    if runtime is None:
        found = next((r for r in RUNTIMES if have[r]), None)
        if found is None:
            raise UserError(f"variant '{name}' has no model file to serve (no model.onnx, model.pte or model/)")
        return found
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime '{runtime}' is not a runtime{did_you_mean(runtime, list(RUNTIMES))}; "
                        f"choose {' | '.join(RUNTIMES)}")
    if not have[runtime]:
        there = [r for r in RUNTIMES if have[r]]
        raise UserError(f"--runtime {runtime}: variant '{name}' has no file for it; it runs in "
                        f"{' | '.join(there) or 'nothing'} (export it with `python -m toolkit export`)")
    return runtime


def _classifier(served: ServedModel, v: Any, folder: Path | None) -> None:
    from toolkit.eval.onnx_eval import read_bundle

    preprocess, _ = read_bundle(folder)
    bundled = served.task.encode_bundle(folder, int(preprocess.get("max_length") or 512), [], {})
    if bundled.encode is None:
        raise UserError(f"{served.task.name}: the task cannot encode single requests")
    served.labels, served.clean = list(bundled.labels), list(preprocess.get("clean") or [])
    if not served.labels:
        raise UserError(f"{folder}: no class names (labels.json / preprocess.json); re-export the variant")
    placeholder = served.labels[0]  # encode wants a label per example; predictions never read it
    field_name = "image" if served.task.data.images else "text"

    def encode(inputs: list[Any]) -> list[Any]:
        return bundled.encode([{field_name: x, "label": placeholder} for x in inputs], "request")

    served.encode, served.collate = encode, bundled.collate
    served.infer = _infer(served, v)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _infer(served: ServedModel, v: Any) -> Callable[[dict[str, Any]], np.ndarray]:
    if served.runtime == "onnxruntime":
        from toolkit import onnxrt

        session = onnxrt.open_session(v.onnx, threads=served.threads, spinning=False)
        out = onnxrt.output_name(session)

        def run_onnx(batch: dict[str, Any]) -> np.ndarray:
            values = {k: np.asarray(x) for k, x in batch.items() if k != "labels"}
            return _softmax(session.run([out], onnxrt.feed(session, values, v.onnx))[0])
        return run_onnx
    if served.runtime == "pytorch":
        import torch

        torch.set_num_threads(served.threads)
        model = served.task.load(v.model_dir).eval()

        @torch.inference_mode()
        def run_torch(batch: dict[str, Any]) -> np.ndarray:
            out = model(**{k: x for k, x in batch.items() if k != "labels"})
            return _softmax(out.logits.float().numpy())
        return run_torch
    from toolkit.eval.onnx_eval import pte_classification_probs

    served.notes.append("ExecuTorch runs one example per call at the program's shape; a batch is a loop")

    def run_pte(batch: dict[str, Any]) -> np.ndarray:
        # one "dataset" item that is the batch itself, so the harness eval uses pads each row as eval does
        return pte_classification_probs(v.pte, [batch], lambda items: items[0], 1)["probs"]
    return run_pte


def _generator(served: ServedModel, v: Any, variants: dict[str, Any], folder: Path | None) -> None:
    from toolkit import decode_steps as steps
    from toolkit.eval.onnx_eval import positions_in, read_bundle, read_config
    from toolkit.models import load_tokenizer
    from toolkit.variants import graph_files

    if folder is None:
        raise UserError(f"variant '{served.variant}': no tokenizer beside it or its ancestors; re-export the run")
    preprocess, _ = read_bundle(folder)
    config = read_config(folder)
    served.tokenizer = load_tokenizer(folder)
    served.clean = list(preprocess.get("clean") or [])
    positions = positions_in(config)
    served.prompt_limit = positions - 1 if positions else None
    for key in ("eos_token_id",):
        for source in (preprocess.get(key), config.get(key), getattr(served.tokenizer, key, None)):
            for i in (source if isinstance(source, list) else [source]):
                if isinstance(i, int):
                    served.stop_ids.add(i)
    if preprocess.get("eos_between_lines") and served.endpoint == "generate":
        served.line_break_ids, served.stop_ids = set(served.stop_ids), set()
    gen_file = folder / "generation_config.json"
    generation = json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else {}
    forced = generation.get("forced_bos_token_id", config.get("forced_bos_token_id"))
    served.forced_first = forced if isinstance(forced, int) else None
    last = generation.get("forced_eos_token_id", config.get("forced_eos_token_id"))
    served.forced_last = last if isinstance(last, int) else None
    threads = served.threads
    if served.runtime == "executorch":
        from toolkit.pte_decoder import is_kv_program

        if served.endpoint != "generate" or not is_kv_program(v.pte):
            raise UserError(f"--runtime executorch: the {served.task.name} variant's .pte has no KV cache to decode "
                            f"with (scheme = '8da4w' makes one for decoders); use --runtime onnxruntime or pytorch")
        served.step = steps.pte_decoder_step(v.pte, threads)
        return
    if served.runtime == "pytorch":
        model = served.task.load(v.model_dir).eval()
        served.step = steps.torch_step(model, threads)
        return
    graphs = graph_files(Path(v.path), served.task.graphs, v.onnx)
    if served.endpoint == "generate":
        served.step = steps.onnx_decoder_step(graphs["model"], threads)
        return
    start = preprocess.get("decoder_start_token_id", config.get("decoder_start_token_id"))
    if not isinstance(start, int):
        raise UserError(f"{folder}: no decoder_start_token_id in config.json or preprocess.json")
    served.step = steps.onnx_seq2seq_step(graphs["encoder"], graphs["decoder"], threads, start)


def _files(run: Any, v: Any, runtime: str, task: Any) -> list[dict[str, Any]]:
    from toolkit.rundir import load_manifest, sha256_path
    from toolkit.variants import graph_files

    if runtime == "onnxruntime":
        paths = list(graph_files(Path(v.path), task.graphs, v.onnx).values())
    elif runtime == "executorch":
        paths = [Path(v.pte)]
    else:
        paths = [Path(v.model_dir)]
    known: dict[str, str] = {}
    try:
        for entry in load_manifest(run).get("artifacts", []):
            if isinstance(entry, dict) and entry.get("path") and entry.get("sha256"):
                known[str(entry["path"])] = str(entry["sha256"])
    except UserError:
        pass  # a torn manifest: hash the files themselves
    out = []
    for p in paths:
        rel = p.relative_to(run.path).as_posix() if p.is_relative_to(run.path) else str(p)
        out.append({"path": rel, "sha256": known.get(rel) or sha256_path(p)})
    return out
