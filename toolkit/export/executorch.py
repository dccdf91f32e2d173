"""ExecuTorch ``.pte`` through torch.export and the XNNPACK partitioner (the optional extra ``executorch``).

Classifiers and CNNs must lower (DESIGN.md); they are exported with a dynamic batch axis (and a dynamic sequence
axis up to the model's position limit), falling back to the example's static shapes if that fails. Decoders and
encoder-decoders are best-effort: logits only, no KV cache (each call recomputes the whole window), exported with
static shapes (batch 1, ``seq_len`` tokens; shorter inputs are right-padded with attention mask 0), because HF's
masking code builds batch-sized aranges that ExecuTorch cannot resize. A model that does not lower gives a result
with ``lowered=False`` and the error's first line (naming the op when the message does) instead of an exception.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.errors import UserError, first_line, op_error
from toolkit.export.common import ExportJob, ExportResult, FileRunner, Format, failed, load_model
from toolkit.registry import FORMATS

EXTRA = "pip install 'edge-toolkit[executorch]'"


def _require_executorch() -> str:
    try:
        from importlib.metadata import version

        import executorch.exir  # noqa: F401
        return version("executorch")
    except ImportError as exc:
        raise UserError(f"the .pte format needs ExecuTorch, which is not installed: {EXTRA}") from exc


def export_pte(model_dir_or_module: Any, out_dir: Path, task: Any,
               example_inputs: dict[str, Any] | None = None, *, required: bool | None = None,
               filename: str = "model.pte", max_batch: int = 64, seq_len: int = 32) -> ExportResult:
    """Lower a model to an ExecuTorch program with the XNNPACK backend and write ``out_dir/filename``.

    Args:
        model_dir_or_module: an HF model directory or a torch module (also one PT2E has quantized to INT8).
        task: the Task (classifiers must lower; models with a KV cache are exported at static shapes).
        example_inputs: names -> tensors, in the order the program takes them; default from the model's config
            (classifiers: input_ids, attention_mask; seq2seq also decoder_input_ids, decoder_attention_mask;
            images: pixel_values).
        required: raise when lowering fails (default: for classifiers and CNNs) instead of returning
            ``lowered=False``.
        max_batch: upper bound of the dynamic batch axis (XNNPACK plans memory for the largest shape).
        seq_len: decoders / encoder-decoders: the static number of tokens (batch 1).

    Raises:
        UserError: ExecuTorch is not installed (names the extra), or a required model did not lower
            (UnsupportedOpError when the error names the op).
    """
    from toolkit.export.logits import Logits, as_tensors
    from toolkit.tasks import as_task

    task = as_task(task)
    version = _require_executorch()
    required = task.classifies if required is None else required
    exporter = f"executorch {version} (XNNPACK)"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    module = load_model(model_dir_or_module, task)
    static = task.kv_cache
    if example_inputs:
        inputs = as_tensors(example_inputs)
    elif static:
        inputs = task.dummy_inputs(module, 1, min(seq_len, _max_positions(module) - 1))
    else:
        inputs = task.dummy_inputs(module, 2, 8)
    wrapper = Logits(module, list(inputs), task.causal)
    extra: dict[str, Any] = {}
    try:
        program, inputs = _capture(wrapper, inputs, static, max_batch, _max_positions(module), extra)
        buffer = _lower(program)
    except Exception as exc:  # torch.export and the lowering passes raise many types
        if required:
            raise op_error(exc, "pte (ExecuTorch/XNNPACK)", path) or UserError(
                f"{path}: the model did not lower to ExecuTorch: {first_line(exc)[:300]}") from exc
        return failed("pte", task.name, exporter, exc)
    path.write_bytes(buffer)
    try:
        _load(path)
    except Exception as exc:
        if required:
            raise UserError(f"{path}: ExecuTorch cannot load the program it wrote: {first_line(exc)[:300]}") from exc
        path.unlink()
        return failed("pte", task.name, exporter, exc)
    if static:
        extra |= {"static_shapes": True, "kv_cache": False,
                  "note": "logits only, no KV cache: each call recomputes the padded window"}
    dynamic = "static" not in extra["shapes"]
    signature = [{"name": k, "shape": _shape(k, v, dynamic), "dtype": str(v.dtype).removeprefix("torch.")}
                 for k, v in inputs.items()]
    return ExportResult(format="pte", files=[path], exporter=exporter, task=task.name, inputs=signature,
                        outputs=["logits"], graphs={path.name: {"role": "model", "inputs": signature,
                                                                "outputs": ["logits"]}}, extra=extra)


def _max_positions(module: Any) -> int:
    cfg = getattr(module, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return 512


def _capture(wrapper: Any, inputs: dict[str, Any], static: bool, max_batch: int,
             max_len: int, extra: dict[str, Any]):
    """torch.export: with dynamic batch/sequence axes; else static at batch 1 (fed one row at a time); else at
    the example's shapes (e.g. a PT2E GraphModule captured at that batch size). Returns (program, inputs)."""
    attempts: list[tuple[dict[str, Any], tuple | None]] = [(inputs, None)]
    if not static:
        attempts = [(inputs, _dynamic_shapes(inputs, max_batch, max_len)),
                    ({k: v[:1] for k, v in inputs.items()}, None), (inputs, None)]
    for i, (args, dynamic) in enumerate(attempts):
        try:
            program = _export(wrapper, args, dynamic)
        except Exception as exc:  # torch.export raises many types; the next attempt may still work
            if i == len(attempts) - 1:
                raise
            extra.setdefault("dynamic_shapes_failed", first_line(exc)[:300])
            continue
        extra["shapes"] = (f"dynamic batch (<= {max_batch}) and sequence" if dynamic else
                           "static: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in args.items()))
        return program, args
    raise AssertionError("unreachable")


def _dynamic_shapes(inputs: dict[str, Any], max_batch: int, max_len: int) -> tuple:
    from torch.export import Dim

    batch = Dim("batch_size", min=1, max=max_batch)
    seq = Dim("sequence_length", min=1, max=max_len)
    dec = Dim("decoder_sequence_length", min=1, max=max_len)
    shapes = []
    for name, t in inputs.items():
        axes = {0: batch}
        if t.dim() == 2 and not t.is_floating_point():
            axes[1] = dec if name.startswith("decoder_") else seq
        shapes.append(axes)
    return (tuple(shapes),)  # one entry: the wrapper's *tensors


def _shape(name: str, t: Any, dynamic: bool) -> list[int | str]:
    shape: list[int | str] = list(t.shape)
    if dynamic:
        shape[0] = "batch_size"
        if t.dim() == 2 and not t.is_floating_point():
            shape[1] = "decoder_sequence_length" if name.startswith("decoder_") else "sequence_length"
    return shape


def _export(wrapper: Any, inputs: dict[str, Any], dynamic_shapes: tuple | None) -> Any:
    import torch

    with torch.no_grad():
        return torch.export.export(wrapper, tuple(inputs.values()), dynamic_shapes=dynamic_shapes)


def _lower(program) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def _load(path: Path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def dynamic_inputs(path: Path, n: int) -> list[bool]:
    """Which inputs of ``forward`` have dynamic (bounded) shapes, from the program's flatbuffer.

    The runtime's metadata gives only the upper bounds; the ``shape_dynamism`` of each input tensor is in the
    program itself, read with ExecuTorch's own deserializer (a private module: if it moves, inputs count as
    static, which is what they were before dynamic shapes existed).
    """
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary

        pte = deserialize_pte_binary(path.read_bytes())
        program = getattr(pte, "program", pte)
        plan = next(p for p in program.execution_plan if p.name == "forward")
        flags = [getattr(plan.values[i].val, "shape_dynamism", 0) != 0 for i in plan.inputs]
        return flags if len(flags) == n else [False] * n
    except Exception:
        return [False] * n


def export_pte_decoder(model: Any, path: Path, where: str) -> Path:
    """Lower a causal LM (float or torchao-quantized) to an ExecuTorch program with its KV cache inside, at ``path``.

    transformers' ``TorchExportableModuleForDecoderOnlyLM`` exports ``forward(input_ids (1, T), cache_position
    (T,))`` with a static cache of the model's positions; T is dynamic from 1 to all of them. The program also
    gets the constant methods ExecuTorch's LLM runner reads (:mod:`toolkit.pte_decoder`).

    Raises:
        UserError: ExecuTorch missing (names the extra), or the family does not export with a static cache.
    """
    import torch
    from transformers import GenerationConfig

    _require_executorch()
    config = model.config
    positions = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "n_ctx")
                      if isinstance(getattr(config, k, None), int)), None)
    if positions is None:
        raise UserError(f"[[compress]] {where}: the model's config names no position count "
                        f"(max_position_embeddings); the KV cache's length cannot be set")
    # the exporter reads the cache's shape from the generation config
    model.generation_config = GenerationConfig(
        use_cache=True, cache_implementation="static", max_length=positions,
        cache_config={"batch_size": 1, "max_cache_len": positions})
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

        seq = torch.export.Dim("seq", min=1, max=positions)
        ids = torch.zeros((1, 4), dtype=torch.long)
        with torch.no_grad():
            program = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=positions).export(
                input_ids=ids, cache_position=torch.arange(4),
                dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}}, strict=True)
        constants = {"use_kv_cache": True, "enable_dynamic_shape": True, "get_max_seq_len": positions,
                     "get_max_context_len": positions, "get_vocab_size": int(config.vocab_size)}
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              constant_methods=constants).to_executorch()
    except Exception as exc:  # torch.export and the lowering passes raise many types
        raise op_error(exc, "pte (ExecuTorch/XNNPACK, KV cache)", path) or UserError(
            f"[[compress]] {where}: the decoder did not export with its KV cache to ExecuTorch: "
            f"{first_line(exc)[:300]}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lowered.buffer)
    return path


def load_method(path: Path | str):
    """The ``forward`` method of a ``.pte`` in the ExecuTorch runtime (``method.execute([tensors])``)."""
    _require_executorch()
    try:
        return _load(Path(path))
    except Exception as exc:
        raise op_error(exc, "pte (ExecuTorch)", path) or UserError(
            f"{path}: ExecuTorch cannot load it: {first_line(exc)[:300]}") from exc


# ---- the format plug-in --------------------------------------------------------------------------------------

REAL_ROWS = "__rows__"
"""a batch piece's key: how many of its rows are real (static programs are filled to their batch size)"""


def existing_pte(path: Path, task: Any) -> ExportResult:
    """An ExportResult for a .pte a PT2E step wrote: inputs named in the exporter's order (input_ids,
    attention_mask / pixel_values), dtypes and sizes from the program, dynamic where the program says so."""
    from toolkit.pte_decoder import is_kv_program

    if is_kv_program(path):  # scheme = "8da4w": a decoder with its KV cache inside
        inputs = [{"name": "input_ids", "shape": [1, "sequence_length"], "dtype": "int64"},
                  {"name": "cache_position", "shape": ["sequence_length"], "dtype": "int64"}]
        return ExportResult(format="pte", files=[path], exporter="compress stage (8da4w, KV cache inside)",
                            task=task.name, inputs=inputs, outputs=["logits"],
                            graphs={path.name: {"role": "model", "inputs": inputs, "outputs": ["logits"]}})
    md = load_method(path).metadata
    n = md.num_inputs()
    names = (["pixel_values"] if task.data.images else
             ["input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"])[:n]
    dynamic = dynamic_inputs(path, n)
    inputs = []
    for i, name in enumerate(names):
        meta = md.input_tensor_meta(i)
        shape: list[int | str] = [int(d) for d in meta.sizes()]
        if dynamic[i]:
            shape[0] = "batch_size"
            if len(shape) == 2:
                shape[1] = "sequence_length"
        inputs.append({"name": name, "shape": shape, "dtype": {4: "int64", 6: "float32"}.get(meta.dtype(), "float32")})
    return ExportResult(format="pte", files=[path], exporter="compress stage (PT2E)", task=task.name, inputs=inputs,
                        outputs=["logits"], graphs={path.name: {"role": "model", "inputs": inputs,
                                                                "outputs": ["logits"]}})


def _export_job(job: ExportJob) -> ExportResult | str:
    if not job.variant.has_pytorch:
        pte = job.folder / "model.pte"
        return (existing_pte(pte, job.task) if pte.is_file() else
                f"no PyTorch model to lower ({job.variant.method} made an ONNX Runtime graph)")
    r = export_pte(job.variant.model_dir, job.folder, job.task, example_inputs=job.example)
    return r if r.lowered else f"did not lower to ExecuTorch: {r.reason}"


def _runners(result: ExportResult) -> list:
    from importlib.metadata import version

    if [i["name"] for i in result.inputs] == ["input_ids", "cache_position"]:
        from toolkit.pte_decoder import PteDecoder

        decoder = PteDecoder(result.files[0])  # row by row from position 0: the logits of the whole window
        runner = FileRunner(lambda b: decoder.logits({k: v.numpy() for k, v in b.items()}),
                            ["input_ids", "attention_mask"])
        return [(result.files[0], "model", f"executorch {version('executorch')} (XNNPACK, KV cache inside)", runner)]
    method = load_method(result.files[0])
    names = [i["name"] for i in result.inputs]
    runner = FileRunner(lambda b: _pte_run(method, result, b), names, lambda b: _fit_static(result, b))
    return [(result.files[0], "model", f"executorch {version('executorch')} (XNNPACK)", runner)]


def _available() -> str | None:
    try:
        import executorch.exir  # noqa: F401
    except ImportError:
        return f"the .pte format needs ExecuTorch, which is not installed: {EXTRA}"
    return None


def _pte_run(method: Any, result: ExportResult, batch: dict) -> Any:
    import torch

    dtypes = {i["name"]: getattr(torch, i["dtype"]) for i in result.inputs}
    tensors = [batch[name].to(dtypes[name]).contiguous() for name in dtypes]
    return method.execute(tensors)[0].float().numpy()



def _fit_static(result: ExportResult, batch: dict) -> list[dict]:
    """Static-shape programs: groups of the program's batch size, token inputs right-padded (mask 0) or cut to
    its length; a short last group is filled with copies of its last row, which ``REAL_ROWS`` leaves uncounted."""
    shapes = {i["name"]: i["shape"] for i in result.inputs}
    static_batch = next((s[0] for s in shapes.values() if isinstance(s[0], int)), None)
    static_len = any(len(s) > 1 and isinstance(s[1], int) for s in shapes.values())
    if static_batch is None and not static_len:
        return [batch]
    rows = next(iter(batch.values())).shape[0]
    size = static_batch or rows
    import torch

    pieces = []
    for start in range(0, rows, size):
        real = min(size, rows - start)
        piece: dict[str, Any] = {}
        for name, t in batch.items():
            t = t[start:start + real]
            if real < size:
                t = torch.cat([t, t[-1:].expand(size - real, *t.shape[1:])])
            shape = shapes.get(name)
            if shape is not None and t.dim() == 2 and isinstance(shape[1], int):
                t = t[:, :shape[1]]
                t = torch.nn.functional.pad(t, (0, shape[1] - t.shape[1]), value=0)
            piece[name] = t.contiguous()
        piece[REAL_ROWS] = real
        pieces.append(piece)
    return pieces


FORMATS.register("pte", Format("pte", ".pte", "executorch", _export_job, _runners, order=2, available=_available,
                               best_effort_when_generating=True))
