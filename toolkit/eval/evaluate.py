"""Quality of one variant on the eval split, the way the field computes it, each number with its convention.

- classification: ``task.predict`` (PyTorch) or an ONNX Runtime session over the same encoded batches →
  :func:`toolkit.eval.metrics.classification_metrics` (+ per-group metrics, + robustness under perturbations);
- language modelling: :func:`toolkit.eval.perplexity.perplexity`, token-weighted, sliding window;
- seq2seq: :func:`toolkit.eval.generation.generate` (greedy or beam) → BLEU and chrF (sacrebleu), ROUGE
  (rouge-score); the teacher-forced loss per target token (PyTorch, or an ONNX variant's two graphs).

A variant with a PyTorch folder (``model_dir``) is evaluated in PyTorch; an ONNX-only variant (INT8) in ONNX Runtime;
a classifier that is only an ExecuTorch program (PT2E INT8) in ExecuTorch. Inputs of the last two are encoded with the
tokenizer/preprocessing of the nearest ancestor that has a PyTorch folder (so parent and child see identical
batches), else with the bundle files beside the graph.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from toolkit.config import Recipe
from toolkit.data.types import Splits
from toolkit.errors import UserError

BATCH_SIZE = 64
"""examples per forward pass for quality (it does not change any metric)"""
TEXT_RATE = 0.05
"""robustness: the probability that a character is swapped / dropped / flips case"""
IMAGE_SIGMA = 0.1
"""robustness: std of the Gaussian noise added to [0, 1] pixels"""
ROUGE_STEMMER = True
"""ROUGE with Porter stemming, as Lin's ROUGE-1.5.5 `-m` and most summarisation papers report it"""
CPU = torch.device("cpu")


@dataclass
class Encoding:
    """What turns eval examples into a variant's inputs: kept for the latency samples."""

    task: Any
    """the Task"""
    examples: list[dict[str, Any]]
    tokenizer: Any = None
    max_length: int = 128
    pad_id: int = 0
    model: torch.nn.Module | None = None
    """the PyTorch model, when the variant was evaluated in PyTorch (PyTorch eager latency)"""
    source: str = ""
    """the folder whose tokenizer/preprocessing encoded the inputs"""
    preprocess: dict[str, Any] = field(default_factory=dict)
    """preprocess.json of that folder: how raw examples become the model's inputs (an image model's resize/crop)"""


@dataclass
class Quality:
    """One variant's quality on the eval split."""

    evaluated_with: str
    examples: int
    metrics: dict[str, float | None]
    conventions: dict[str, str]
    encoding: Encoding
    groups: dict[str, Any] = field(default_factory=dict)
    robustness: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def eval_examples(recipe: Recipe, splits: Splits) -> list[dict[str, Any]]:
    """The eval split, capped at ``eval.limit`` (the first N examples)."""
    examples = list(splits.eval)
    if recipe.eval.limit and len(examples) > recipe.eval.limit:
        examples = examples[: recipe.eval.limit]
    if not examples:
        raise UserError("the eval split is empty; set data.eval or give data.split an eval fraction above 0")
    return examples


def evaluate_variant(recipe: Recipe, variant: Any, variants: dict[str, Any], splits: Splits,
                     log: Callable[[str, str], None] = lambda m, level="info": None) -> Quality:
    """Quality of ``variant`` (a ``Variant`` with local paths) on the eval split.

    Raises:
        UserError: a variant with neither a PyTorch folder nor an ONNX graph, inputs that cannot be encoded.
    """
    from toolkit.tasks import get_task

    task = get_task(recipe.task)
    examples = eval_examples(recipe, splits)
    runtime = runtime_for(variant, task)
    pytorch = runtime == "pytorch"
    if runtime is None:
        raise UserError(f"{variant.path}: variant '{variant.name}' has neither model/ nor an .onnx graph to "
                        f"evaluate; rerun the stage that made it")
    if runtime == "executorch" and not task.classifies and not _kv_program(variant, task):
        raise UserError(f"{variant.path}: variant '{variant.name}' is an ExecuTorch program only; its {recipe.task} "
                        f"quality needs model/ or an .onnx graph (ExecuTorch decoders take one fixed shape)")
    if task.quality == "classification":
        q = _classification(recipe, task, variant, variants, splits, examples, runtime, log)
    elif task.quality == "perplexity":
        q = _language_modeling(recipe, task, variant, variants, splits, examples, runtime)
    else:
        q = _seq2seq(recipe, task, variant, variants, splits, examples, pytorch)
    if recipe.eval.robustness and not task.classifies:
        log(f"{variant.name}: eval.robustness covers classifiers (text and image perturbations); "
            f"{recipe.task} is evaluated clean only", "info")
    return q


def runtime_for(variant: Any, task: Any) -> str | None:
    """What evaluates a variant: "pytorch" (it has model/), "onnxruntime" (an ONNX graph), "executorch" (a .pte
    only, as a PT2E INT8 step leaves it), or None."""
    from toolkit.variants import graph_files

    if variant.has_pytorch:
        return "pytorch"
    if graph_files(variant.path, task.graphs, variant.onnx):
        return "onnxruntime"
    if variant.pte is not None:
        return "executorch"
    return None


def _prepare(recipe: Recipe, task: Any, model_dir: Path, splits: Splits, examples: list[dict[str, Any]]):
    """The task's Prepared for a saved folder, with ``examples`` as its eval set (the training split is cut to one
    example: only the image shape and the label set are read from it)."""
    model_cfg = dataclasses.replace(recipe.model, source=str(model_dir))
    r = dataclasses.replace(recipe, model=model_cfg)
    cut = Splits(train=splits.train[:1], validation=[], eval=list(examples), labels=list(splits.labels),
                 sources=dict(splits.sources))
    return task.prepare(r, cut, Path(model_dir).parent / ".eval-work")


# --- classification --------------------------------------------------------------------------------------------

def _perturbed(recipe: Recipe, examples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    from toolkit.eval import robustness as rb

    if not recipe.eval.robustness:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    if "text" in examples[0]:
        for kind in rb.TEXT_PERTURBATIONS:
            texts = rb.perturb_text([str(ex["text"]) for ex in examples], kind, TEXT_RATE, seed=recipe.seed)
            out[kind] = [{**ex, "text": t} for ex, t in zip(examples, texts)]
    else:
        for kind in rb.IMAGE_PERTURBATIONS:
            imgs = rb.perturb_images([np.asarray(ex["image"]) for ex in examples], kind, seed=recipe.seed,
                                     sigma=IMAGE_SIGMA, channels_last=True)
            out[kind] = [{**ex, "image": img} for ex, img in zip(examples, imgs)]
    return out


def _classification(recipe: Recipe, task: Any, variant: Any, variants: dict[str, Any], splits: Splits,
                    examples: list[dict[str, Any]], runtime: str, log: Callable) -> Quality:
    from toolkit.eval.metrics import classification_metrics, group_metrics

    perturbed = _perturbed(recipe, examples)
    # Clean and perturbed examples are encoded and run in one pass: each is encoded on its own, so this is
    # exactly separate passes, with one model load.
    everything = examples + [ex for kind in perturbed for ex in perturbed[kind]]
    model, params = None, None
    if runtime == "pytorch":
        prepared = _prepare(recipe, task, Path(variant.model_dir), splits, everything)
        out = task.predict(prepared.model, prepared, prepared.eval_set, BATCH_SIZE, CPU)
        model, source, params = prepared.model, variant.model_dir, _count(prepared.model)
    elif runtime == "onnxruntime":
        prepared, source = _onnx_inputs(recipe, task, variant, variants, splits, everything)
        from toolkit.eval.onnx_eval import classification_probs, onnx_params
        from toolkit.variants import graph_files

        onnx = graph_files(variant.path, task.graphs, variant.onnx)["model"]
        out = classification_probs(onnx, prepared.eval_set, prepared.collate, BATCH_SIZE)
        params = onnx_params([onnx])
    else:
        from toolkit.eval.onnx_eval import pte_classification_probs

        prepared, source = _onnx_inputs(recipe, task, variant, variants, splits, everything)
        out = pte_classification_probs(Path(variant.path) / "model.pte", prepared.eval_set, prepared.collate,
                                       BATCH_SIZE)
        info = variant.info or {}
        params = info.get("params_after") if isinstance(info.get("params_after"), int) else None
    probs, y_true = np.asarray(out["probs"], dtype=np.float64), np.asarray(out["labels"], dtype=np.int64)
    n = len(examples)
    labels = list(prepared.labels)
    clean = classification_metrics(y_true[:n], probs[:n].argmax(-1), probs[:n], labels)
    metrics = {"accuracy": clean["accuracy"], "f1_macro": clean["f1_macro"], "auc_roc": clean["auc_roc"],
               "loss": _nll(probs[:n], y_true[:n])}
    conventions = {k: v for k, v in clean["conventions"].items() if k in metrics}
    conventions["loss"] = "mean cross-entropy per example (nats) from the softmax probabilities, p clipped at 1e-12"
    quality = Quality(
        evaluated_with=runtime, examples=n, metrics=metrics, conventions=conventions,
        params=params, details={"labels": labels, "confusion_matrix": clean["confusion_matrix"],
                                "undefined": clean["undefined"]},
        encoding=Encoding(task=task, examples=examples, tokenizer=getattr(prepared, "tokenizer", None),
                          max_length=int((prepared.preprocess or {}).get("max_length", recipe.data.max_length)),
                          pad_id=int((prepared.preprocess or {}).get("pad_token_id") or 0), model=model,
                          source=str(source), preprocess=dict(getattr(prepared, "preprocess", None) or {})))
    if recipe.data.group_column:
        groups = [ex.get("group") for ex in examples]
        if any(g is None for g in groups):
            log(f"data.group_column = '{recipe.data.group_column}': the eval examples carry no group; "
                f"per-group metrics skipped", "warning")
        else:
            g = group_metrics(y_true[:n], probs[:n].argmax(-1), probs[:n], [str(x) for x in groups], labels)
            quality.groups = {"column": recipe.data.group_column, **g}
    if perturbed:
        quality.robustness = _robustness(recipe, "text" in examples[0], clean["accuracy"], probs, y_true, n,
                                         list(perturbed))
    return quality


def _onnx_inputs(recipe: Recipe, task: Any, variant: Any, variants: dict[str, Any], splits: Splits,
                            examples: list[dict[str, Any]]) -> tuple[Any, str]:
    from types import SimpleNamespace

    from toolkit.eval.onnx_eval import bundle_dir
    from toolkit.variants import nearest_model_dir

    ancestor = nearest_model_dir(variant, variants)
    if ancestor is not None:
        return _prepare(recipe, task, ancestor, splits, examples), str(ancestor)
    folder = bundle_dir(variant.path, (variant.info or {}).get("source"))
    b = task.encode_bundle(folder, recipe.data.max_length, splits.labels, {"eval": examples})
    prepared = SimpleNamespace(eval_set=b.sets["eval"], collate=b.collate, labels=b.labels, tokenizer=b.tokenizer,
                               preprocess=b.preprocess)
    return prepared, str(folder) if folder else ""


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    p = probs[np.arange(len(y)), y]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def _robustness(recipe: Recipe, text: bool, clean: float, probs: np.ndarray, y: np.ndarray, n: int,
                kinds: list[str]) -> dict[str, Any]:
    from toolkit.eval.robustness import robustness_report

    perturbed = {}
    for i, kind in enumerate(kinds, 1):
        sl = slice(i * n, (i + 1) * n)
        perturbed[kind] = float((probs[sl].argmax(-1) == y[sl]).mean())
    report = robustness_report(clean, perturbed, higher_is_better=True, metric="accuracy")
    if text:
        how = (f"text: swap (adjacent characters inside a word trade places), drop (a non-space character is "
               f"deleted), case (a letter flips case), each character chosen with probability {TEXT_RATE}")
        report["parameters"] = {"rate": TEXT_RATE, "seed": recipe.seed}
    else:
        how = (f"images: noise (additive Gaussian, std {IMAGE_SIGMA} on [0, 1] pixels), shift (one pixel up, down, "
               f"left or right, edge repeated)")
        report["parameters"] = {"sigma": IMAGE_SIGMA, "seed": recipe.seed}
    report["perturbations"] = how + f"; seeded per example (seed {recipe.seed}); {n} examples each"
    return report


# --- language modelling ----------------------------------------------------------------------------------------

def _kv_program(variant: Any, task: Any) -> bool:
    """A causal LM's ExecuTorch program with its KV cache inside (scheme = "8da4w"): it takes any window."""
    from toolkit.pte_decoder import is_kv_program

    return task.causal and variant.pte is not None and is_kv_program(variant.pte)


def _language_modeling(recipe: Recipe, task: Any, variant: Any, variants: dict[str, Any], splits: Splits,
                       examples: list[dict[str, Any]], runtime: str) -> Quality:
    from toolkit.eval.perplexity import perplexity
    from toolkit.tasks.language_modeling import lm_stream

    texts = [str(ex["text"]) for ex in examples]
    pytorch = runtime == "pytorch"
    if runtime == "executorch":
        from toolkit.pte_decoder import PteDecoder

        tokenizer, source, preprocess = _tokenizer_for(variant, variants)
        decoder = PteDecoder(variant.pte)
        window = min(int(preprocess.get("max_length") or recipe.data.max_length), decoder.max_seq_len)
        model = decoder.window
        info = variant.info or {}
        params = info.get("params_after") if isinstance(info.get("params_after"), int) else None
    elif pytorch:
        prepared = _prepare(recipe, task, Path(variant.model_dir), splits, examples[:1])
        model, tokenizer, source = prepared.model, prepared.tokenizer, Path(variant.model_dir)
        window = int(prepared.preprocess.get("max_length") or recipe.data.max_length)
        params = _count(model)
    else:
        from toolkit.eval.onnx_eval import OnnxCausalLM, config_positions, onnx_params
        from toolkit.variants import graph_files

        tokenizer, source, preprocess = _tokenizer_for(variant, variants)
        window = int(preprocess.get("max_length") or recipe.data.max_length)
        onnx = graph_files(variant.path, task.graphs, variant.onnx)["model"]
        model = OnnxCausalLM(onnx, config_positions(variant.path) or config_positions(source))
        params = onnx_params([onnx])
    stride = recipe.eval.perplexity_stride or max(1, window // 2)
    if stride > window:
        raise UserError(f"eval.perplexity_stride = {stride} is longer than the window (data.max_length = {window}); "
                        f"set it to at most {window} (0 = half the window)")
    name = f"{type(tokenizer).__name__}, vocab {len(tokenizer)}, saved in {Path(source).name}/"
    ids, eos = lm_stream(tokenizer, texts)
    ppl = perplexity(model, None, ids, window=window, stride=stride, device=CPU, tokenizer_name=name)
    metrics = {"perplexity": ppl["perplexity"], "loss": ppl["nll"]}
    joined = f"each followed by EOS (id {eos})" if eos is not None else "concatenated"
    conventions = {"perplexity": ppl["convention"] + f"; the {len(texts)} eval texts tokenised without special "
                                                     f"tokens, {joined}, as the model was trained",
                   "loss": "mean negative log-likelihood per predicted token (nats) = log(perplexity)"}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return Quality(evaluated_with=runtime, examples=len(texts), metrics=metrics,
                   conventions=conventions, params=params,
                   details={"tokens": ppl["tokens"], "window": ppl["window"], "stride": ppl["stride"]},
                   encoding=Encoding(task=task, examples=examples, tokenizer=tokenizer, max_length=window,
                                     pad_id=int(pad), model=model if pytorch else None, source=str(source)))


def _tokenizer_for(variant: Any, variants: dict[str, Any]) -> tuple[Any, Path, dict[str, Any]]:
    """Tokenizer, its folder and preprocess.json for an ONNX-only text variant: the nearest PyTorch ancestor's,
    else the bundle beside the graph."""
    from toolkit.eval.onnx_eval import bundle_dir, read_bundle
    from toolkit.models.pretrained import load_tokenizer
    from toolkit.variants import nearest_model_dir

    folder = nearest_model_dir(variant, variants) or bundle_dir(variant.path, (variant.info or {}).get("source"))
    if folder is None:
        raise UserError(f"{variant.path}: no tokenizer for the ONNX variant '{variant.name}': put tokenizer.json and "
                        f"preprocess.json beside its graph (or beside the .onnx model source)")
    preprocess, _ = read_bundle(folder)
    return load_tokenizer(folder), folder, preprocess


# --- seq2seq ---------------------------------------------------------------------------------------------------

def _seq2seq(recipe: Recipe, task: Any, variant: Any, variants: dict[str, Any], splits: Splits,
             examples: list[dict[str, Any]], pytorch: bool) -> Quality:
    from toolkit.eval.generation import generate
    from toolkit.eval.metrics import bleu, chrf, rouge

    sources = [str(ex["source"]) for ex in examples]
    refs = [str(ex["target"]) for ex in examples]
    metrics: dict[str, float | None] = {}
    conventions: dict[str, str] = {}
    e = recipe.eval
    if pytorch:
        prepared = _prepare(recipe, task, Path(variant.model_dir), splits, examples)
        model, tokenizer, source = prepared.model, prepared.tokenizer, Path(variant.model_dir)
        max_length = int(prepared.preprocess.get("max_length") or recipe.data.max_length)
        tf = task.evaluate(model, prepared, prepared.eval_set, BATCH_SIZE, CPU)
        params, generator = _count(model), model
    else:
        from toolkit.eval.onnx_eval import onnx_params, ort_seq2seq, read_config, seq2seq_loss
        from toolkit.variants import graph_files, nearest_model_dir

        tokenizer, source, preprocess = _tokenizer_for(variant, variants)
        max_length = int(preprocess.get("max_length") or recipe.data.max_length)
        graphs = graph_files(variant.path, task.graphs, variant.onnx)
        if "decoder" not in graphs or "encoder" not in graphs:
            raise UserError(f"{variant.path}: a seq2seq ONNX variant needs encoder_model*.onnx and "
                            f"decoder_model*.onnx; found {sorted(p.name for p in graphs.values())}")
        generator = ort_seq2seq(graphs["encoder"], graphs["decoder"], nearest_model_dir(variant, variants))
        # the same teacher-forced loss as PyTorch's, through both graphs, so an INT8 variant's loss compares
        prepared, _ = _onnx_inputs(recipe, task, variant, variants, splits, examples)
        config = read_config(Path(variant.path)) or read_config(source)
        tf = seq2seq_loss(graphs["encoder"], graphs["decoder"], task, prepared.eval_set, prepared.collate, config,
                          BATCH_SIZE)
        params, model = onnx_params(list(graphs.values())), None
    metrics["loss"] = tf["loss"]
    conventions["loss"] = ("teacher-forced cross-entropy per target token (nats), token-weighted over the eval "
                           f"targets ({tf['tokens']} tokens)")
    hyps = generate(generator, tokenizer, sources, max_new_tokens=e.max_new_tokens, num_beams=e.num_beams,
                    batch_size=BATCH_SIZE, max_source_length=max_length)
    b, c, r = bleu(hyps, refs), chrf(hyps, refs), rouge(hyps, refs, use_stemmer=ROUGE_STEMMER)
    metrics.update({"bleu": b["bleu"], "chrf": c["chrf"], **{k: r[k] for k in ("rouge1", "rouge2", "rougeL",
                                                                                  "rougeLsum")}})
    search = "greedy" if e.num_beams == 1 else f"beam search, {e.num_beams} beams, early stopping"
    conventions.update({
        "bleu": b["signature"], "chrf": c["signature"], "rouge": r["convention"],
        "generation": f"{search}, max_new_tokens={e.max_new_tokens}, sources truncated to {max_length} tokens, "
                      f"special tokens skipped, whitespace stripped",
    })
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Quality(evaluated_with="pytorch" if pytorch else "onnxruntime", examples=len(examples), metrics=metrics,
                   conventions=conventions, params=params,
                   details={"bleu_convention": b["convention"], "chrf_convention": c["convention"],
                            "rouge_stemmer": ROUGE_STEMMER,
                            "samples": [{"source": s, "reference": t, "hypothesis": h}
                                        for s, t, h in list(zip(sources, refs, hyps))[:5]]},
                   encoding=Encoding(task=task, examples=examples, tokenizer=tokenizer, max_length=max_length,
                                     pad_id=int(pad), model=model, source=str(source)))


def _count(model: torch.nn.Module) -> int:
    from toolkit.models import count_params

    return int(count_params(model))


def finite_or_none(x: Any) -> Any:
    """NaN/inf become None: eval.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
