"""Looking at ONNX graphs for the compression methods: the parent's float graph, which nodes INT8 (or FP16)
reached, layer groups for the accuracy guard, and ONNX Runtime's transformer fusions checked on real inputs."""
from __future__ import annotations

import collections
import contextlib
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from toolkit.errors import UserError, first_line


def parent_onnx(parent: Any, ctx: Any, work_dir: Path, opset: int | None = None) -> Path:
    """The parent's float ONNX graph: its own ``model.onnx``, else an export of its model folder into ``work_dir``.

    Raises:
        UserError: the parent has neither (e.g. an ExecuTorch-only variant).
    """
    if parent.onnx is not None and Path(parent.onnx).is_file():
        return Path(parent.onnx)
    if not parent.has_pytorch:
        raise UserError(f"variant '{parent.name}' has no ONNX file and no model folder to export one from; "
                        f"set from = \"<a PyTorch or ONNX variant>\" on this step")
    from toolkit.compress._shared.data import split_data
    from toolkit.export.onnx import export_onnx

    # torch.onnx (the path for models optimum does not know) wants real example inputs
    data = split_data(ctx, parent)
    items = list(data.train[:2]) or list(data.validation[:2])
    example = {k: v for k, v in data.collate(items).items() if k != "labels"} if items else None
    result = export_onnx(parent.model_dir, Path(work_dir), ctx.task, opset=opset or ctx.recipe.export.opset,
                         example_inputs=example)
    return result.files[0]


GRAPH_FILES = {"model": "model.onnx", "encoder": "encoder_model.onnx", "decoder": "decoder_model_merged.onnx"}
"""the file a compressed graph of each role is written to: the names the export and eval stages look for
(``toolkit.variants.graph_files``) and optimum's ORTModelForSeq2SeqLM loads"""


def parent_graphs(parent: Any, ctx: Any, work_dir: Path, keep_unmerged: bool = False) -> dict[str, Path]:
    """The parent's float ONNX graphs by role (``ctx.task.graphs``): ``{"model": ...}``, or an encoder-decoder's
    ``{"encoder", "decoder"}`` (the merged decoder), from the parent's own files or an export of its model folder.

    ``keep_unmerged``: an encoder-decoder's export also keeps optimum's ``decoder_model.onnx`` and
    ``decoder_with_past_model.onnx`` beside the merged decoder (the FP16 converter needs graphs without If nodes).

    Raises:
        UserError: the parent has neither graphs nor a model folder to export them from.
    """
    from toolkit.variants import graph_files

    roles = tuple(ctx.task.graphs)
    if len(roles) == 1:
        return {"model": parent_onnx(parent, ctx, work_dir)}
    # a PyTorch parent's own graphs count only when its variant names them (its folder may hold older exports)
    own = graph_files(Path(parent.path), roles, parent.onnx) if parent.onnx is not None or not parent.has_pytorch \
        else {}
    if set(own) == set(roles) and not (keep_unmerged and parent.has_pytorch):
        return own  # an ONNX Runtime variant's graphs (the unmerged decoders, when wanted, may sit beside them)
    if not parent.has_pytorch:
        raise UserError(f"variant '{parent.name}' has no encoder_model.onnx + decoder_model*.onnx and no model folder "
                        f"to export them from; set from = \"<a PyTorch or ONNX variant>\" on this step")
    from toolkit.export.onnx import export_onnx

    export_onnx(parent.model_dir, Path(work_dir), ctx.task, opset=ctx.recipe.export.opset, keep_unmerged=keep_unmerged)
    found = graph_files(Path(work_dir), roles)
    if set(found) != set(roles):
        raise UserError(f"{parent.model_dir}: the ONNX export wrote {sorted(p.name for p in found.values())}, not an "
                        f"encoder and a decoder graph")
    return found


def has_subgraphs(path_or_model: Any) -> bool:
    """Whether a graph holds control flow (If/Loop/Scan) whose branches are graphs of their own: optimum's merged
    decoder is one If node switching between the decoder without and with past."""
    return any(True for _ in subgraphs(_graph(_model(path_or_model))))


def copy_bundle(variant: Any, variants: dict[str, Any], out_dir: Path) -> list[Path]:
    """Tokenizer, labels.json and preprocess.json beside a compressed model (from the nearest model folder)."""
    from toolkit.export.bundle import copy_bundle_files
    from toolkit.variants import bundle_source

    src = bundle_source(variant, variants)
    if src is None or not src.is_dir():
        return []
    return copy_bundle_files(src, out_dir)


@contextlib.contextmanager
def work_dir(out_dir: Path) -> Iterator[Path]:
    """``out_dir/.work``, empty, removed afterwards whatever happens."""
    work = Path(out_dir) / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def quiet_ort_logging() -> Iterator[None]:
    """The quantizer logs "consider pre-processing" and per-node notes on the root logger; our events say what
    matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def ort_fusions(step: Any, parent: Any, variants: dict, float_path: Path, work: Path, data: Any,
                emit: Any, share_tied: bool = False) -> tuple[Path, Any]:
    """ONNX Runtime's transformer optimizer on the families whose fusions it knows (the architecture adapter
    says which); the fused graph is kept only if it gives the float graph's outputs on real inputs.
    ``share_tied``: store a tied embedding once (:func:`share_tied_transposes`). FP16 wants it; INT8 does not:
    the shared copy would be quantized for its lookups as uint8, and ONNX Runtime's u8×u8 MatMulInteger runs the
    LM head 1.2× (one token) to 2× (32 tokens) slower than u8×s8 on this CPU (measured, AVX2, 768×50257).

    Returns: (the graph to quantize, {"optimizer": its arguments, "fusions"} | False | {"skipped": why}).
    """
    if not step.optimize:
        return float_path, False
    from toolkit.arch.transformer import TransformerAdapter
    from toolkit.variants import config_of

    fusion = TransformerAdapter().ort_fusion(config_of(parent, variants))
    if fusion is None:
        return float_path, False
    if getattr(step, "scheme", "") == "int8-static":
        # ORT's static quantizer has no QLinear/QDQ form of the fused Attention/SkipLayerNormalization ops (it fails
        # on them), so static INT8 of a transformer works on the unfused graph; ORT fuses what it can at load time.
        emit.log(f"{step.name}: int8-static quantizes the unfused graph (ONNX Runtime's static quantizer "
                 f"cannot quantize its fused attention ops)")
        return float_path, {"skipped": "static INT8 of fused transformer ops is not supported by ONNX Runtime"}
    from onnxruntime.transformers.optimizer import optimize_model

    from toolkit import onnxrt

    out = work / "optimized.onnx"
    try:
        with quiet_ort_logging(), onnxrt.scratch_cwd():
            model = optimize_model(str(Path(float_path).absolute()), **fusion)
            shared = share_tied_transposes(model.model) if share_tied else []
            model.save_model_to_file(str(Path(out).absolute()))
        if shared:
            emit.log(f"{step.name}: tied weights stored once ({', '.join(shared)}): the optimizer had folded the "
                     f"LM head's transpose into a second copy")
        fusions = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    except Exception as e:  # the optimizer raises many types on graphs it does not know; INT8 works without it
        emit.log(f"{step.name}: ONNX Runtime's transformer optimizer failed ({first_line(e)[:200]}); quantizing the "
                 f"unfused graph", "warning")
        return float_path, False
    if data is not None and data.validation:
        # A fusion that misreads the graph (wrong head count) changes the outputs: keep the graph only if it agrees.
        batch = data.collate(list(data.validation[:8]))
        a = onnxrt.logits(onnxrt.open_session(float_path), batch)
        b = onnxrt.logits(onnxrt.open_session(out), batch)
        if a.shape != b.shape or abs(a - b).max() > 1e-3 * max(1.0, abs(a).max()):
            emit.log(f"{step.name}: the fused graph's outputs differ from the float graph's; quantizing the unfused "
                     f"graph", "warning")
            return float_path, False
    return out, {"optimizer": fusion, "fusions": fusions}


def share_tied_transposes(model: Any) -> list[str]:
    """Store a tied embedding once: ONNX Runtime's optimizer constant-folds the LM head's ``Transpose(wte)`` into a
    second initializer, so the file (and, after FP16 or INT8, both converted copies) holds the embedding twice,
    which is most of a small decoder's weights. The lookups are rewritten to read the transposed copy instead:
    ``Gather(W, ids)`` becomes ``Transpose(Gather(Wᵀ, ids, axis=1))``, which moves only the gathered rows; the
    LM head's MatMul keeps its contiguous weight.

    Returns: the names of the initializers dropped (empty when the graph has no such pair).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    by_shape: dict[tuple, list[str]] = collections.defaultdict(list)
    for t in graph.initializer:
        if len(t.dims) == 2 and t.dims[0] != t.dims[1]:
            by_shape[tuple(t.dims)].append(t.name)
    dropped: list[str] = []
    inferred = None
    for name, tensor in list(inits.items()):
        if len(tensor.dims) != 2 or tensor.dims[0] == tensor.dims[1]:
            continue
        users = [n for n in graph.node if name in n.input]
        lookups = [n for n in users if n.op_type == "Gather" and n.input[0] == name and n.input[1] != name]
        if not lookups or len(lookups) != len(users) or any(_axis(n) != 0 for n in lookups):
            continue
        array = numpy_helper.to_array(tensor)
        twin = next((o for o in by_shape.get((tensor.dims[1], tensor.dims[0]), [])
                     if o in inits and np.array_equal(numpy_helper.to_array(inits[o]), array.T)), None)
        if twin is None:
            continue
        if inferred is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(model).graph
            except Exception:  # noqa: BLE001 - e.g. a graph over protobuf's 2 GB: keep both copies, as before
                return dropped
        ranks = [_rank(inferred, node.input[1]) for node in lookups]
        if None in ranks:
            continue
        for node, ids_rank in zip(lookups, ranks):
            out, gathered = node.output[0], node.output[0] + "_columns"
            index = list(graph.node).index(node)
            graph.node.remove(node)
            graph.node.insert(index, helper.make_node("Transpose", [gathered], [out], name=node.name + "_rows",
                                                      perm=[*range(1, ids_rank + 1), 0]))
            graph.node.insert(index, helper.make_node("Gather", [twin, node.input[1]], [gathered],
                                                      name=node.name, axis=1))
        graph.initializer.remove(tensor)
        del inits[name]
        dropped.append(name)
    return dropped


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _rank(graph: Any, name: str) -> int | None:
    """The rank of a tensor from the graph's declared inputs and inferred shapes (None: not known)."""
    for info in [*graph.input, *graph.value_info]:
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def op_counts(path_or_model: Any) -> dict[str, int]:
    """Nodes per op type (sorted by count), the nodes of If/Loop branches included (see :func:`nodes`)."""
    counts = collections.Counter(n.op_type for n in nodes(_model(path_or_model)))
    return dict(counts.most_common())


def _model(path_or_model: Any) -> Any:
    import onnx

    if isinstance(path_or_model, (str, Path)):
        return onnx.load(str(path_or_model), load_external_data=False)
    return path_or_model


def subgraphs(graph: Any) -> Iterator[Any]:
    """The graphs held by a graph's nodes (If branches, Loop/Scan bodies), one level down."""
    import onnx

    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield a.g
            elif a.type == onnx.AttributeProto.GRAPHS:
                yield from a.graphs


def nodes(model: Any) -> Iterator[Any]:
    """The graph's nodes, then those of its control-flow branches (graph by graph), each name once.

    The two branches of optimum's merged decoder hold the same layers under the same node names (and the
    quantizer's ``nodes_to_exclude`` matches names in every branch), so a name is one layer, counted once.
    """
    seen: set[str] = set()
    stack = [_graph(model)]
    while stack:
        graph = stack.pop(0)
        for n in graph.node:
            if n.name and n.name in seen:
                continue
            seen.add(n.name)
            yield n
        stack.extend(subgraphs(graph))


def onnx_params(path: Path | str) -> int:
    """Number of elements in the graph's initializers (its weights, quantized or not)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(i.dims)) if len(i.dims) else 1 for i in model.graph.initializer))


# ---- which nodes of a graph INT8 reached ----------------------------------------------------------------

SHAPE_OPS = {"Constant", "Shape", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Cast", "Identity", "Slice",
             "ConstantOfShape", "Expand", "Equal", "Where", "Range", "Flatten", "Transpose", "Not", "Less",
             "Greater", "Gather", "If", "Loop", "Scan", "Trilu", "ScatterND"}
"""ops that move or index data without arithmetic on it (only counted when a weight-free node stays float); control
flow (a merged decoder's If) counts by the nodes of its branches"""
WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "EmbedLayerNormalization", "Gather", "LSTM"}


def quantized_nodes(before: Any, after: Any, qdq: bool) -> set[str]:
    """Names of the float graph's nodes that run in INT8 in ``after``.

    QOperator/dynamic graphs replace a quantized node (its name disappears); QDQ graphs keep it and feed it from
    DequantizeLinear nodes.
    """
    before, after = list(nodes(before)), list(nodes(after))
    after_names = {n.name for n in after}
    if not qdq:
        return {n.name for n in before if n.name and n.name not in after_names}
    # QDQ: activations after a quantized op (Relu, Clip) are absorbed into its range and disappear too
    absorbed = {n.name for n in before if n.name and n.name not in after_names}
    dq_outputs = {o for n in after if n.op_type == "DequantizeLinear" for o in n.output}
    return absorbed | {n.name for n in after
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and n.name and any(i in dq_outputs for i in n.input)
            and n.op_type in WEIGHTED_OPS | {"Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
                                             "Softmax", "Concat", "Sigmoid", "LeakyRelu", "Resize", "ArgMax"}}


def _graph(model: Any) -> Any:
    return model.graph if hasattr(model, "graph") else model


def count_types(model: Any, names: set[str]) -> dict[str, int]:
    """Op types of the named nodes, with counts."""
    counts: dict[str, int] = {}
    for n in nodes(model):
        if n.name in names:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def float_op_types(model: Any, quantized: set[str]) -> dict[str, int]:
    """Arithmetic op types of the float graph with nodes left in float (shape/indexing ops left out)."""
    init = {i.name for i in _graph(model).initializer}
    counts: dict[str, int] = {}
    for n in nodes(model):
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
    init = {i.name for i in _graph(model).initializer}  # a merged decoder's branches share the top-level weights
    assigned: list[tuple[str, str | None]] = []
    for n in nodes(model):
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
