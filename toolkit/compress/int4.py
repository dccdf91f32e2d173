"""INT4 weight-only quantization of language models (``method = "quantize"``, ``scheme = "int4"``) through ONNX
Runtime's ``MatMulNBits``.

Decoding one token reads every weight once, so on a CPU it is memory-bound: bytes per weight decide tokens per
second. ONNX Runtime's ``MatMulNBitsQuantizer`` stores each MatMul's weight in blocks of ``block_size`` 4-bit values
with one scale (and, when not symmetric, a zero point) per block; its ``accuracy_level`` picks the kernel (4: the
activations are quantized to int8 per block and the dot products run in integers, the fast path on x86 and ARM).
Algorithms: ``rtn`` (round to nearest per block), ``hqq`` (half-quadratic: scales and zero points optimized per
block, no data) and ``gptq`` (error-compensating, calibrated on ``calibration_samples`` training texts).

Before quantizing, the graph is put in the quantizer's form: ``Gemm`` nodes with a constant weight (GPT-2's
``Conv1D`` exports that way) become ``MatMul`` + ``Add``, and a tied LM head — exported as ``MatMul`` on a
``Transpose`` of the embedding, which the quantizer skips as "not a constant weight" although it is the largest
matrix of a small model — reads a transposed copy of the embedding instead. With ``quantize_embedding`` (default) the
embedding lookup becomes a 4-bit ``GatherBlockQuantized``: the head and the embedding are then two 4-bit copies
(the info says so), far smaller than one float copy.

The graph keeps its inputs and outputs (``past_key_values.*`` in, ``present.*`` out; a seq2seq merged decoder's
If branches included), so generation keeps its KV cache. The accuracy guard measures the relative perplexity rise
on the validation split and keeps the most sensitive layers in float until it is within ``max_accuracy_drop``.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.compress.context import Context
from toolkit.compress.quantize import QuantizeConfig
from toolkit.errors import UserError
from toolkit.steps import handler
from toolkit.variants import Variant, size_bytes

ACCURACY_LEVELS = (0, 1, 4)
"""the MatMulNBits kernels measured when ``accuracy_level = "auto"``: 0/1 compute in float32 after unpacking the
weights, 4 quantizes the activations to int8 per block (ONNX Runtime's contrib op documentation)"""


def matmul_form(model: Any) -> dict[str, int]:
    """Rewrite ``model`` in place so every constant weight multiplication is a ``MatMul`` the quantizer can reach.

    Returns: {"gemm_rewritten": n, "transposes_folded": n}.
    """
    from onnx import helper, numpy_helper

    from toolkit.compress._shared.graphs import subgraphs

    top = model.graph
    inits = {t.name: t for t in top.initializer}
    graphs = [top]
    for g in graphs:
        graphs.extend(subgraphs(g))
    producers = {o: n for g in graphs for n in g.node for o in n.output}
    consumers: dict[str, int] = {}
    for g in graphs:
        for n in g.node:
            for i in n.input:
                consumers[i] = consumers.get(i, 0) + 1
    counts = {"gemm_rewritten": 0, "transposes_folded": 0}
    added: dict[str, str] = {}

    def transposed(name: str) -> str:
        if name not in added:
            new = f"{name}_transposed_for_matmul"
            top.initializer.append(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[name]).T),
                                                           new))
            added[name] = new
        return added[name]

    for g in graphs:
        for node in list(g.node):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if (node.op_type == "Gemm" and node.input[1] in inits and attrs.get("transA", 0) == 0
                    and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0):
                weight = transposed(node.input[1]) if attrs.get("transB", 0) else node.input[1]
                at = list(g.node).index(node)
                g.node.remove(node)
                if len(node.input) > 2 and node.input[2]:
                    mid = node.output[0] + "_matmul"
                    g.node.insert(at, helper.make_node("Add", [mid, node.input[2]], [node.output[0]],
                                                       name=node.name + "_bias"))
                    g.node.insert(at, helper.make_node("MatMul", [node.input[0], weight], [mid], name=node.name))
                else:
                    g.node.insert(at, helper.make_node("MatMul", [node.input[0], weight], [node.output[0]],
                                                       name=node.name))
                counts["gemm_rewritten"] += 1
            elif node.op_type == "MatMul" and node.input[1] not in inits:
                source = producers.get(node.input[1])
                if (source is not None and source.op_type == "Transpose" and source.input[0] in inits
                        and len(inits[source.input[0]].dims) == 2):
                    perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), [1, 0])
                    if perm == [1, 0]:
                        node.input[1] = transposed(source.input[0])
                        counts["transposes_folded"] += 1
    # a folded Transpose that nothing reads any more would keep the float embedding alive beside its 4-bit copy
    used = {i for g in graphs for n in g.node for i in n.input} | {o.name for g in graphs for o in g.output}
    for g in graphs:
        for node in [n for n in g.node if n.op_type == "Transpose" and not any(o in used for o in n.output)]:
            g.node.remove(node)
    return counts


def _algo_config(step: QuantizeConfig, level: int | None, reader: Any) -> Any:
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    ops = ("MatMul", "Gather") if step.quantize_embedding else ("MatMul",)
    axes = (("MatMul", 0), ("Gather", 1))
    if step.algorithm == "hqq":  # HQQ has no Gather form: the embedding gets a second, round-to-nearest pass
        return mnq.HQQWeightOnlyQuantConfig(block_size=step.block_size, bits=4, op_types_to_quantize=("MatMul",),
                                            quant_axes=axes)
    if step.algorithm == "gptq":
        return mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=reader, block_size=128, perchannel=False,
                                             op_types_to_quantize=("MatMul",))
    return mnq.DefaultWeightOnlyQuantConfig(block_size=step.block_size, is_symmetric=step.symmetric,
                                            accuracy_level=level, op_types_to_quantize=ops, quant_axes=axes)


def quantize_graph(src: Path, out: Path, step: QuantizeConfig, level: int | None, exclude: set[str],
                   reader: Any = None) -> Path:
    """One INT4 graph of ``src`` (already in :func:`matmul_form`) at ``out``, ``exclude`` kept in float."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from toolkit import onnxrt
    from toolkit.compress._shared.graphs import quiet_ort_logging

    model = onnx.load(str(src))
    # GPTQ (Intel Neural Compressor's code inside onnxruntime) prints a progress bar on stdout: keep it off ours
    with quiet_ort_logging(), onnxrt.scratch_cwd(), contextlib.redirect_stdout(io.StringIO()):
        quantizer = MatMulNBitsQuantizer(model, block_size=step.block_size, is_symmetric=step.symmetric,
                                         accuracy_level=level, nodes_to_exclude=sorted(exclude),
                                         algo_config=_algo_config(step, level, reader))
        quantizer.process()
        quantized = quantizer.model.model
        if step.algorithm != "rtn" and step.quantize_embedding:
            from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

            lookup = DefaultWeightOnlyQuantConfig(block_size=step.block_size, is_symmetric=step.symmetric,
                                                  op_types_to_quantize=("Gather",),
                                                  quant_axes=(("MatMul", 0), ("Gather", 1)))
            second = MatMulNBitsQuantizer(quantized, algo_config=lookup, nodes_to_exclude=sorted(exclude))
            second.process()
            quantized = second.model.model
    if level is not None:
        set_accuracy_level(quantized, level)  # HQQ and GPTQ leave the attribute at its default
    out.parent.mkdir(parents=True, exist_ok=True)
    large = quantized.ByteSize() > 1_800_000_000
    onnx.save(quantized, str(out), save_as_external_data=large, location=out.name + ".data" if large else None)
    return out


def set_accuracy_level(model: Any, level: int) -> None:
    from onnx import helper

    from toolkit.compress._shared.graphs import nodes

    for n in nodes(model):
        if n.op_type == "MatMulNBits":
            for a in list(n.attribute):
                if a.name == "accuracy_level":
                    n.attribute.remove(a)
            n.attribute.append(helper.make_attribute("accuracy_level", int(level)))


@handler(QuantizeConfig, scheme="int4")
def int4(step: QuantizeConfig, parent: Variant, ctx: Context) -> Variant:
    """INT4 weight-only graph(s) of the parent into variants/<step.name>/ (model.onnx, or encoder_model.onnx +
    decoder_model_merged.onnx with the encoder left in float: it runs once per request, not once per token)."""
    import onnx

    from toolkit.compress._shared import data as shared_data
    from toolkit.compress._shared import graphs as common
    from toolkit.compress._shared.guard import guard, record_guard

    emit = ctx.emit
    out_dir = ctx.variant_dir(step.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = ctx.variants()
    roles = tuple(ctx.task.graphs)
    role = "decoder" if "decoder" in roles else "model"
    with common.work_dir(out_dir) as work:
        floats = ({"model": common.parent_onnx(parent, ctx, work / "float")} if len(roles) == 1
                  else common.parent_graphs(parent, ctx, work / "float"))
        model = onnx.load(str(floats[role]))
        form = matmul_form(model)
        prepared = work / "prepared" / common.GRAPH_FILES[role]
        prepared.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(prepared))
        candidates = {n.name for n in common.nodes(model) if n.op_type == "MatMul" and n.name
                      and n.input[1] in {t.name for t in model.graph.initializer}}
        if not candidates:
            raise UserError(f"[[compress]] {step.name}: no MatMul with a constant weight in the graph of "
                            f"'{parent.name}'; INT4 has nothing to quantize")
        data = _data(ctx, parent, step)
        reader = _gptq_reader(step, data, prepared) if step.algorithm == "gptq" else None
        groups = common.node_groups(model, candidates)
        tries = iter(range(1_000_000))

        def make(kept: Any, level: int | None = 4) -> dict[str, Path]:
            exclude = {n for g in kept for n in groups[g]}
            path = quantize_graph(prepared, work / f"try{next(tries)}" / prepared.name, step, level, exclude, reader)
            return {**floats, role: path}

        result, metric_name = None, data.primary_metric if data else None
        if data is not None and data.validation:
            baseline = shared_data.evaluate_onnx(floats, data)[metric_name]
            result = guard(lambda kept: shared_data.evaluate_onnx(make(kept), data)[metric_name], baseline,
                           list(groups), step.max_accuracy_drop, data.higher_is_better, emit)
        kept = result.kept_in_float if result else []
        final = make(kept)
        levels = _choose_level(step, final, ctx, emit)
        set_level = levels["chosen"]
        graph = onnx.load(str(final[role]))
        set_accuracy_level(graph, set_level)
        paths = {}
        for r in roles:
            paths[r] = out_dir / common.GRAPH_FILES[r]
            if r == role:
                onnx.save(graph, str(paths[r]))
            else:
                shutil.copyfile(floats[r], paths[r])
        ops = common.op_counts(graph)
        info: dict[str, Any] = {
            "scheme": "int4", "algorithm": step.algorithm, "block_size": step.block_size,
            "symmetric": step.symmetric if step.algorithm == "rtn" else step.algorithm != "hqq",
            "accuracy_level": levels, "graph_form": form,
            "quantized_nodes": ops.get("MatMulNBits", 0), "embedding": (
                f"4-bit GatherBlockQuantized (block {step.block_size})" if ops.get("GatherBlockQuantized")
                else "float (quantize_embedding = false)"),
            "lm_head": ("4-bit MatMulNBits on a transposed copy of the tied embedding (two 4-bit copies)"
                        if form["transposes_folded"] else "4-bit MatMulNBits"),
            "float_graphs": [r for r in roles if r != role], "layers_in_float": kept, "layer_groups": len(groups),
            "size_ratio_graph": round(size_bytes(paths[role]) / max(size_bytes(floats[role]), 1), 4),
        }
        record_guard(info, result, metric_name, lambda: (
            f"INT4 lost more than the budget of {step.max_accuracy_drop:g}: validation {metric_name} "
            f"{result.metric:.4f} vs {result.baseline:.4f}; try algorithm = 'hqq' or 'gptq', a smaller block_size, "
            f"or raise max_accuracy_drop"))
        emit.log(f"{step.name}: {info['quantized_nodes']} MatMuls in 4 bits ({step.algorithm}, block "
                 f"{step.block_size}, accuracy_level {set_level}); embedding: {info['embedding']}; graph "
                 f"{info['size_ratio_graph']:.2f}× its float size")
        common.copy_bundle(parent, variants, out_dir)
        return Variant(name=step.name, parent=parent.name, method="quantize", path=out_dir, model_dir=None,
                       onnx=paths[roles[0]], info=info, within_budget=result.within_budget if result else None)


def _data(ctx: Context, parent: Variant, step: QuantizeConfig) -> Any:
    from toolkit.compress._shared.data import split_data

    try:
        return split_data(ctx, parent)
    except UserError as e:
        ctx.emit.log(f"{step.name}: the accuracy guard is off: {e}", "warning")
        return None


def _choose_level(step: QuantizeConfig, graphs: dict[str, Path], ctx: Context, emit: Any) -> dict[str, Any]:
    """``accuracy_level``: the step's, or (``"auto"``) the fastest decode step on this machine among
    :data:`ACCURACY_LEVELS`, measured in alternating rounds; the timings are recorded."""
    if step.accuracy_level != "auto":
        return {"chosen": int(step.accuracy_level), "how": "set in the recipe"}
    import onnx

    from toolkit import decode_steps

    role = "decoder" if "decoder" in graphs else "model"
    variants_of = {}
    for level in ACCURACY_LEVELS:
        model = onnx.load(str(graphs[role]))
        set_accuracy_level(model, level)
        path = graphs[role].with_name(f"level{level}_{graphs[role].name}")
        onnx.save(model, str(path))
        variants_of[level] = {**graphs, role: path}
    prompt = np.arange(1, 17, dtype=np.int64) % 50 + 3
    steps = {}
    for level, g in variants_of.items():
        steps[level] = (decode_steps.onnx_decoder_step(g["model"], 1) if role == "model" else
                        decode_steps.onnx_seq2seq_step(g["encoder"], g["decoder"], 1, 0))
    timings: dict[int, list[float]] = {level: [] for level in steps}
    for _ in range(5):  # rounds: every level once per round, so background load cannot favour one
        for level, step_fn in steps.items():
            _, state = step_fn(prompt, None)
            t0 = time.perf_counter()
            for _ in range(8):
                _, state = step_fn(prompt[-1:], state)
            timings[level].append((time.perf_counter() - t0) / 8 * 1e3)
    medians = {level: float(np.median(v)) for level, v in timings.items()}
    chosen = min(medians, key=medians.get)
    emit.log(f"{step.name}: accuracy_level {chosen} decodes fastest here ("
             + ", ".join(f"{k}: {v:.3g} ms/token" for k, v in medians.items()) + ")")
    return {"chosen": chosen, "how": "fastest decode step on this machine (1 thread, median of 5 rounds)",
            "ms_per_token": {str(k): round(v, 4) for k, v in medians.items()}}


def _gptq_reader(step: QuantizeConfig, data: Any, graph: Path) -> Any:
    """GPTQ's calibration: ``calibration_samples`` training sequences fed as the graph takes them (no past)."""
    if data is None or not data.train:
        raise UserError(f"[[compress]] {step.name}: algorithm = 'gptq' calibrates on training texts, and this run "
                        f"has none encoded; use algorithm = 'rtn' or 'hqq'")
    from onnxruntime.quantization import CalibrationDataReader

    from toolkit import onnxrt
    from toolkit.decode_steps import _empty

    session = onnxrt.open_session(graph)
    specs = {i.name: i for i in session.get_inputs()}
    feeds = []
    for item in data.sample("train", step.calibration_samples, seed=0):
        batch = data.collate([item])
        ids = np.asarray(batch["input_ids"])
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "position_ids" in specs:
            feed["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
        for name, spec in specs.items():
            if name.startswith("past_key_values"):
                feed[name] = _empty(spec)
        feeds.append({k: v for k, v in feed.items() if k in specs})

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.items, None)

        def rewind(self) -> None:
            self.items = iter(feeds)

    return Reader()
