"""What the compression methods share: a variant's model folder and ONNX file, the encoded data of a split, and
running an ONNX graph (or a torch module) over that data to get the task's validation metric.

The accuracy guard (guard.py) compares a compressed variant with its parent on the *validation* split, in the
runtime the variant runs in: ONNX variants through ONNX Runtime, PyTorch ones through the task's own evaluate.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from toolkit.errors import UserError

EVAL_BATCH = 32

_NP = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
       "tensor(float16)": np.float16, "tensor(bool)": np.bool_, "tensor(double)": np.float64}


# ---- where a variant's model lives ---------------------------------------------------------------------------

def variants_of(ctx: Any) -> dict[str, Any]:
    """Every variant of the run so far (the stage keeps them in ``ctx.cache['variants']``; else read from disk)."""
    if "variants" not in ctx.cache:
        from toolkit.compress.registry import load_variants

        ctx.cache["variants"] = load_variants(ctx.run.variants)
    return ctx.cache["variants"]


def nearest_model_dir(variant: Any, variants: dict[str, Any]) -> Path | None:
    """The model folder of ``variant`` or of its nearest ancestor that has one (tokenizer, labels, preprocessing
    live there); None for a chain of ONNX-only variants."""
    seen: set[str] = set()
    v = variant
    while v is not None and v.name not in seen:
        if v.model_dir is not None and Path(v.model_dir).is_dir():
            return Path(v.model_dir)
        seen.add(v.name)
        v = variants.get(v.parent) if v.parent else None
    return None


def bundle_source(variant: Any, variants: dict[str, Any]) -> Path | None:
    """Where the tokenizer/labels/preprocess files of ``variant`` come from: the nearest model folder, else the
    folder of the base ONNX file (an ONNX ``model.source`` exported by optimum holds its tokenizer beside it)."""
    model_dir = nearest_model_dir(variant, variants)
    if model_dir is not None:
        return model_dir
    base = variants.get("base")
    source = (base.info or {}).get("source") if base is not None else None
    return Path(source).parent if source else None


def model_type_of(variant: Any, variants: dict[str, Any]) -> str | None:
    """config.json's model_type of the nearest model folder (or beside the base ONNX file)."""
    import json

    folder = bundle_source(variant, variants)
    cfg = folder / "config.json" if folder is not None else None
    if cfg is None or not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def parent_onnx(parent: Any, ctx: Any, work_dir: Path, opset: int | None = None) -> Path:
    """The parent's float ONNX graph: its own ``model.onnx``, else an export of its model folder into ``work_dir``.

    Raises:
        UserError: the parent has neither (e.g. an ExecuTorch-only variant).
    """
    if parent.onnx is not None and Path(parent.onnx).is_file():
        return Path(parent.onnx)
    if parent.model_dir is None or not Path(parent.model_dir).is_dir():
        raise UserError(f"variant '{parent.name}' has no ONNX file and no model folder to export one from; "
                        f"set from = \"<a PyTorch or ONNX variant>\" on this step")
    from toolkit.export.onnx import export_onnx

    example = None
    if ctx.recipe.task == "image-classification":
        # torch.onnx needs example images; the CNN's config names its size differently from HF vision configs
        data = split_data(ctx, parent)
        items = list(data.train[:2]) or list(data.validation[:2])
        if items:
            example = {k: v for k, v in data.collate(items).items() if k != "labels"}
    result = export_onnx(parent.model_dir, Path(work_dir), ctx.recipe.task, opset=opset or ctx.recipe.export.opset,
                         example_inputs=example)
    return result.files[0]


def copy_bundle(variant: Any, variants: dict[str, Any], out_dir: Path) -> list[Path]:
    """Tokenizer, labels.json and preprocess.json beside a compressed model (from the nearest model folder)."""
    from toolkit.export.bundle import copy_bundle_files

    src = bundle_source(variant, variants)
    if src is None or not src.is_dir():
        return []
    return copy_bundle_files(src, out_dir)


def size_bytes(path: Path | None) -> int:
    """A file's size, or a folder's total (0 for None / missing)."""
    if path is None or not Path(path).exists():
        return 0
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# ---- data ----------------------------------------------------------------------------------------------------

@dataclass
class SplitData:
    """Encoded examples of the run's splits (with the tokenizer of the variant's model) and how to batch them."""

    task: str
    train: Sequence[Any]
    validation: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, Any]]
    primary_metric: str
    """"accuracy" (classifiers, higher is better) or "perplexity" (language models, lower is better)"""
    higher_is_better: bool

    def sample(self, split: str, n: int, seed: int) -> list[Any]:
        """``n`` examples of ``split`` drawn without replacement with ``seed`` (all of them when fewer)."""
        items = self.train if split == "train" else self.validation
        if n >= len(items):
            return list(items)
        order = np.random.default_rng(seed).permutation(len(items))[:n]
        return [items[int(i)] for i in sorted(order)]


def split_data(ctx: Any, variant: Any) -> SplitData:
    """The run's data encoded for ``variant`` (cached per model folder in ``ctx.cache``).

    A chain without a model folder (an ONNX ``model.source``) is encoded without a model: images as the
    built-in CNN would take them, text with the tokenizer saved beside the ONNX file.

    Raises:
        UserError: text data and no tokenizer to encode it with.
    """
    variants = variants_of(ctx)
    model_dir = nearest_model_dir(variant, variants)
    key = f"split_data:{model_dir}"
    if key in ctx.cache:
        return ctx.cache[key]
    if model_dir is not None:
        prepared = ctx.prepare(model_dir)
        primary = "accuracy" if prepared.primary_metric == "accuracy" else "perplexity"
        data = SplitData(ctx.recipe.task, prepared.train_set, prepared.val_set, prepared.collate, primary,
                         prepared.higher_is_better)
    else:
        data = _data_without_model(ctx, bundle_source(variant, variants))
    ctx.cache[key] = data
    return data


def _data_without_model(ctx: Any, folder: Path | None) -> SplitData:
    task = ctx.recipe.task
    if task == "image-classification":
        # The built-in CNN's preparation encodes images exactly as a model trained by this toolkit takes them.
        model_cfg = dataclasses.replace(ctx.recipe.model, source="builtin:cnn-small")
        prepared = ctx.task.prepare(dataclasses.replace(ctx.recipe, model=model_cfg), ctx.splits(), ctx.run.train)
        return SplitData(task, prepared.train_set, prepared.val_set, prepared.collate, "accuracy", True)
    if task == "text-classification" and folder is not None:
        from toolkit.models import load_tokenizer
        from toolkit.tasks.common import class_labels, label_ids, pad_with_mask

        tokenizer = load_tokenizer(folder)
        splits = ctx.splits()
        labels = class_labels(splits.labels, splits.train)
        label2id = {n: i for i, n in enumerate(labels)}
        max_length = ctx.recipe.data.max_length
        pad_id = tokenizer.pad_token_id or 0

        def encode(examples: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
            if not examples:
                return []
            ids = tokenizer([str(ex["text"]) for ex in examples], truncation=True, max_length=max_length,
                            return_token_type_ids=False, return_attention_mask=False)["input_ids"]
            return [{"input_ids": i, "labels": y} for i, y in zip(ids, label_ids(examples, label2id, split))]

        def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
            import torch

            input_ids, mask = pad_with_mask([it["input_ids"] for it in items], pad_id, cap=max_length)
            return {"input_ids": input_ids, "attention_mask": mask,
                    "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long)}

        return SplitData(task, encode(splits.train, "train"), encode(splits.validation, "validation"), collate,
                         "accuracy", True)
    where = f" in {folder}" if folder else ""
    raise UserError(f"model.source = {ctx.recipe.model.source}: no tokenizer{where} to encode the {task} data with; "
                    f"put the tokenizer files (tokenizer.json, ...) beside the ONNX file")


def batches(items: Sequence[Any], collate: Callable, batch_size: int = EVAL_BATCH) -> Iterator[dict[str, Any]]:
    """Collated batches of ``items``, in order."""
    for start in range(0, len(items), batch_size):
        yield collate([items[i] for i in range(start, min(start + batch_size, len(items)))])


# ---- running ONNX graphs -------------------------------------------------------------------------------------

def onnx_session(path: Path | str, threads: int | None = None):
    """An ONNX Runtime CPU session (errors name the op a runtime cannot run)."""
    from toolkit.export.ort import open_session

    return open_session(path, threads=threads)


def onnx_feed(session: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """The session's inputs from a collated batch: cast to the graph's types; token_type_ids, position ids and a
    first step's empty KV cache are filled in."""
    from toolkit.export.common import positions_from_mask

    arrays = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in batch.items() if k != "labels"}
    first = arrays.get("input_ids", next(iter(arrays.values())))
    n = first.shape[0]
    feed = {}
    for i in session.get_inputs():
        dtype = _NP.get(i.type, np.float32)
        if i.name in arrays:
            value = arrays[i.name]
        elif i.name == "position_ids" and "attention_mask" in batch:
            value = positions_from_mask(batch["attention_mask"]).numpy()
        elif i.name == "token_type_ids":
            value = np.zeros(first.shape)
        elif i.name == "use_cache_branch":
            value = np.array([False])
        elif i.name.startswith("past_key_values"):
            value = np.zeros([n if "batch" in str(d) else (d if isinstance(d, int) else 0) for d in i.shape])
        else:
            raise UserError(f"the ONNX graph wants input '{i.name}', which the task's batches do not have "
                            f"(they have {', '.join(sorted(arrays))})")
        feed[i.name] = value.astype(dtype)
    return feed


def onnx_logits(session: Any, batch: dict[str, Any]) -> np.ndarray:
    """The graph's logits for one batch (float32)."""
    outputs = [o.name for o in session.get_outputs()]
    name = "logits" if "logits" in outputs else outputs[0]
    return np.asarray(session.run([name], onnx_feed(session, batch))[0], dtype=np.float32)


def metric_from_logits(task: str, pairs: Sequence[tuple[np.ndarray, dict[str, Any]]]) -> dict[str, float]:
    """{"accuracy"} (classifiers) or {"loss", "perplexity"} (token-weighted, language models) from
    (logits, batch) pairs."""
    if task in ("text-classification", "image-classification"):
        correct = total = 0
        for logits, batch in pairs:
            labels = np.asarray(batch["labels"])
            correct += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
        return {"accuracy": correct / total if total else math.nan, "examples": total}
    loss_sum = tokens = 0.0
    for logits, batch in pairs:
        labels = np.asarray(batch["labels"])
        if task == "language-modeling":  # the model predicts token t+1 at position t
            logits, labels = logits[:, :-1], labels[:, 1:]
        valid = labels != -100
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
        loss_sum += float(-(picked * valid).sum())
        tokens += float(valid.sum())
    loss = loss_sum / tokens if tokens else math.nan
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)) if tokens else math.nan, "tokens": int(tokens)}


def evaluate_onnx(path: Path | str, data: SplitData, items: Sequence[Any] | None = None,
                  threads: int | None = None) -> dict[str, float]:
    """The task's metrics of an ONNX graph on the validation split (or ``items``) through ONNX Runtime."""
    session = onnx_session(path, threads)
    items = data.validation if items is None else items
    pairs = [(onnx_logits(session, b), b) for b in batches(items, data.collate)]
    return metric_from_logits(data.task, pairs)


def evaluate_torch(model: Any, data: SplitData, items: Sequence[Any] | None = None) -> dict[str, float]:
    """The same metrics for a torch module (HF model or a captured graph returning logits), on CPU."""
    import torch

    from toolkit.export.common import Logits

    items = data.validation if items is None else items
    pairs = []
    with torch.no_grad():
        for b in batches(items, data.collate):
            inputs = {k: v for k, v in b.items() if k != "labels"}
            out = Logits(model, list(inputs), data.task)(*inputs.values())
            pairs.append((out.float().numpy(), b))
    return metric_from_logits(data.task, pairs)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of two outputs' rows (last axis)."""
    a2 = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1])
    b2 = np.asarray(b, np.float64).reshape(-1, np.shape(b)[-1])
    norms = np.linalg.norm(a2, axis=-1) * np.linalg.norm(b2, axis=-1)
    return float(((a2 * b2).sum(-1) / np.maximum(norms, 1e-12)).mean())


# ---- looking at ONNX graphs ----------------------------------------------------------------------------------

def op_counts(path_or_model: Any) -> dict[str, int]:
    """Nodes per op type (sorted by count), top-level graph."""
    import onnx

    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else \
        onnx.load(str(path_or_model), load_external_data=False)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return dict(counts.most_common())


def onnx_params(path: Path | str) -> int:
    """Number of elements in the graph's initializers (its weights, quantized or not)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(i.dims)) if len(i.dims) else 1 for i in model.graph.initializer))


def remove_tree(path: Path) -> None:
    """Delete a work folder, ignoring one that is already gone."""
    shutil.rmtree(path, ignore_errors=True)


# ---- which nodes of a graph INT8 reached ----------------------------------------------------------------

SHAPE_OPS = {"Constant", "Shape", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Cast", "Identity", "Slice",
             "ConstantOfShape", "Expand", "Equal", "Where", "Range", "Flatten", "Transpose", "Not", "Less",
             "Greater", "Gather"}
"""ops that move or index data without arithmetic on it (only counted when a weight-free node stays float)"""
WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "EmbedLayerNormalization", "Gather", "LSTM"}


def quantized_nodes(before: Any, after: Any, qdq: bool) -> set[str]:
    """Names of the float graph's nodes that run in INT8 in ``after``.

    QOperator/dynamic graphs replace a quantized node (its name disappears); QDQ graphs keep it and feed it from
    DequantizeLinear nodes.
    """
    before, after = _graph(before), _graph(after)
    after_names = {n.name for n in after.node}
    if not qdq:
        return {n.name for n in before.node if n.name and n.name not in after_names}
    # QDQ: activations after a quantized op (Relu, Clip) are absorbed into its range and disappear too
    absorbed = {n.name for n in before.node if n.name and n.name not in after_names}
    dq_outputs = {o for n in after.node if n.op_type == "DequantizeLinear" for o in n.output}
    return absorbed | {n.name for n in after.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and n.name and any(i in dq_outputs for i in n.input)
            and n.op_type in WEIGHTED_OPS | {"Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
                                             "Softmax", "Concat", "Sigmoid", "LeakyRelu", "Resize", "ArgMax"}}


def _graph(model: Any) -> Any:
    return model.graph if hasattr(model, "graph") else model


def count_types(model: Any, names: set[str]) -> dict[str, int]:
    """Op types of the named nodes, with counts."""
    graph = _graph(model)
    counts: dict[str, int] = {}
    for n in graph.node:
        if n.name in names:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def float_op_types(model: Any, quantized: set[str]) -> dict[str, int]:
    """Arithmetic op types of the float graph with nodes left in float (shape/indexing ops left out)."""
    graph = _graph(model)
    init = {i.name for i in graph.initializer}
    counts: dict[str, int] = {}
    for n in graph.node:
        if n.name in quantized:
            continue
        weighted_gather = n.op_type == "Gather" and n.input and n.input[0] in init
        if n.op_type in SHAPE_OPS and not weighted_gather:
            continue
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


_LAYER = re.compile(r"^(layer|layers|h|block|blocks|encoder_layer|decoder_layer)[._](\d+)$")
_CONTAINERS = ("layer", "layers", "h", "block", "blocks")


def group_of(parts: list[str]) -> str | None:
    """Module path parts -> 'bert/encoder/layer.0' (a numbered block) or the first two levels ('bert/pooler')."""
    for i, p in enumerate(parts):
        if _LAYER.match(p):
            return "/".join(parts[: i + 1])
        if p.isdigit() and i > 0 and parts[i - 1] in _CONTAINERS:
            return "/".join(parts[: i - 1] + [f"{parts[i - 1]}.{p}"])
    if not parts:
        return None
    if len(parts) > 1 and not parts[1].startswith(parts[0] + ".") and not parts[1].isdigit():
        return "/".join(parts[:2])
    return parts[0]


def node_groups(model: Any, quantized: set[str]) -> dict[str, list[str]]:
    """Layer groups of the quantized nodes, in model order: the guard's candidates.

    Named by module path: exporters name nodes '/bert/encoder/layer.0/.../MatMul'; fused nodes ('Attention_0')
    are named by their weights ('bert.embeddings.word_embeddings.weight'), else join the layer that follows them.
    """
    graph = _graph(model)
    init = {i.name for i in graph.initializer}
    assigned: list[tuple[str, str | None]] = []
    for n in graph.node:
        if n.name not in quantized:
            continue
        group = None
        if n.name.startswith("/"):
            group = group_of(n.name.strip("/").split("/")[:-1])
        if group is None:
            for i in n.input:
                if i in init and "." in i and not i.startswith("onnx::"):
                    group = group_of(i.split(".")[:-1])
                    break
        assigned.append((n.name, group))
    groups: dict[str, list[str]] = {}
    pending: list[str] = []
    for name, group in assigned:
        if group is None:
            pending.append(name)
            continue
        groups.setdefault(group, []).extend(pending + [name])
        pending = []
    if pending:  # fused nodes after the last named one belong with it
        last = next(reversed(groups)) if groups else "model"
        groups.setdefault(last, []).extend(pending)
    return groups
