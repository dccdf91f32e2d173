"""ONNX Runtime, the one place it is opened and fed: sessions, inputs from a batch, the type table, logits.

Every stage that runs an ONNX graph (the quantizers' accuracy guard, export verification, evaluation, the latency
harness, generation timing) opens it with :func:`open_session` and feeds it with :func:`feed`, so a graph that
loads or fails in one stage does the same in every other, with the same message.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from toolkit.errors import UserError, first_line, op_error

NP_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}
"""ONNX Runtime's input type names -> numpy dtypes"""

_CWD_LOCK = threading.RLock()

PROVIDERS: dict[str, str] = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                             "tensorrt": "TensorrtExecutionProvider"}
"""``--provider`` words -> ONNX Runtime's execution provider names"""

GPU_EXTRA = "pip install 'edge-toolkit[gpu]'"
"""what installs onnxruntime-gpu (its CUDA and TensorRT providers)"""

# What to install when the onnxruntime build has the provider but its libraries do not load (ONNX Runtime then
# drops the provider from the session and runs on the next one, logging the dlopen error).
_LIBRARIES = {
    "CUDAExecutionProvider": "the CUDA 12 runtime and cuDNN 9 libraries that onnxruntime-gpu loads "
                             "(pip install nvidia-cuda-runtime-cu12 nvidia-cudnn-cu12, or the CUDA toolkit)",
    "TensorrtExecutionProvider": "TensorRT 10 (libnvinfer; pip install tensorrt-cu12, or JetPack on a Jetson) "
                                 "beside the CUDA and cuDNN libraries",
}

ProviderChain = list[tuple[str, dict[str, str]]]
"""execution providers with their options, preferred first (what ``InferenceSession(providers=...)`` takes)"""


def provider_name(word: str) -> str:
    """``cpu | cuda | tensorrt`` (or an ONNX Runtime provider name) -> the provider name.

    Raises:
        UserError: a word that names no provider, with the choices.
    """
    if word in PROVIDERS.values():
        return word
    if word.lower() in PROVIDERS:
        return PROVIDERS[word.lower()]
    from toolkit.errors import did_you_mean

    raise UserError(f"--provider {word}: not a provider; choose {' | '.join(PROVIDERS)}"
                    f"{did_you_mean(word.lower(), list(PROVIDERS))}")


def provider_chain(provider: str = "cpu", *, cache_dir: Path | str | None = None, fp16: bool = False,
                   int8_qdq: bool = False, device_id: int = 0) -> ProviderChain:
    """The providers a session opens with for ``provider`` (cpu | cuda | tensorrt), with their options.

    TensorRT runs what it can and hands the rest to CUDA, then the CPU; CUDA hands to the CPU. TensorRT builds an
    engine per input shape, which takes seconds to minutes, so the engines (and the timing cache that speeds up
    rebuilding) are kept in ``cache_dir`` (a run's folder: they are that run's artifacts, and a later
    measurement reuses them). ``fp16``: the graph is FP16, so TensorRT may pick FP16 kernels (without the flag
    it builds FP32 ones). ``int8_qdq``: the graph carries QuantizeLinear/DequantizeLinear pairs; TensorRT 8.x
    builds such explicitly quantized layers only with its INT8 flag, and ONNX Runtime then takes the scales
    from the graph, not from a calibration table.
    """
    name = provider_name(provider)
    cpu: ProviderChain = [("CPUExecutionProvider", {})]
    if name == "CPUExecutionProvider":
        return cpu
    cuda: ProviderChain = [("CUDAExecutionProvider", {"device_id": str(device_id)})]
    if name == "CUDAExecutionProvider":
        return cuda + cpu
    options = {"device_id": str(device_id), "trt_fp16_enable": _flag(fp16), "trt_int8_enable": _flag(int8_qdq)}
    if cache_dir is not None:
        cache = str(Path(cache_dir).resolve())
        options.update(trt_engine_cache_enable="True", trt_engine_cache_path=cache,
                       trt_timing_cache_enable="True", trt_timing_cache_path=cache)
    return [(name, options)] + cuda + cpu


def _flag(on: bool) -> str:
    return "True" if on else "False"  # ONNX Runtime's provider options are strings


def graph_precision(path: Path | str) -> dict[str, bool]:
    """{"fp16": weights stored as float16, "int8_qdq": QuantizeLinear/DequantizeLinear in the graph} of an .onnx
    file (read without its external data), for :func:`provider_chain`'s TensorRT flags."""
    import onnx

    path = Path(path)
    if path.suffix.lower() != ".onnx":
        return {"fp16": False, "int8_qdq": False}
    graph = onnx.load(str(path), load_external_data=False).graph
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    return {"fp16": fp16, "int8_qdq": qdq}


def check_providers(chain: Sequence[str | tuple[str, Any]], available: Sequence[str] | None = None) -> None:
    """Every provider of the chain is in this onnxruntime build.

    Raises:
        UserError: one line naming the missing provider and what installs it (the ``gpu`` extra for CUDA and
            TensorRT).
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    for entry in chain:
        name = entry[0] if isinstance(entry, tuple) else entry
        if name in available:
            continue
        if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            raise UserError(f"execution provider '{name}' is not in this onnxruntime build (it has "
                            f"{', '.join(available)}); install the GPU build: {GPU_EXTRA} (pip uninstall -y "
                            f"onnxruntime first: the CPU wheel shadows it)")
        raise UserError(f"execution provider '{name}' is not in this onnxruntime build; "
                        f"available: {', '.join(available)}")


def check_session_providers(session: Any, chain: Sequence[str | tuple[str, Any]], where: object) -> None:
    """The session kept the preferred provider: ONNX Runtime silently falls back to the next one when a
    provider's libraries do not load (TensorRT's libnvinfer, CUDA's cuDNN), which would time the wrong device.

    Raises:
        UserError: naming the provider and the libraries to install.
    """
    wanted = chain[0][0] if isinstance(chain[0], tuple) else chain[0]
    if wanted != "CPUExecutionProvider" and wanted not in session.get_providers():
        raise UserError(f"{where}: onnxruntime could not start '{wanted}' (the session fell back to "
                        f"{', '.join(session.get_providers())}); install {_LIBRARIES.get(wanted, 'its libraries')}")


def node_assignment(session: Any) -> dict[str, float] | None:
    """The fraction of the graph's nodes each provider took, e.g. {"TensorrtExecutionProvider": 0.97,
    "CPUExecutionProvider": 0.03}; None when this onnxruntime cannot say (before 1.23, or a session opened
    without ``assignment=True``). Counted after ONNX Runtime's basic graph optimisations, as it partitions."""
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception:  # older builds have no such method; a session without the config entry raises Fail
        return None
    counts: dict[str, int] = {}
    for sub in subgraphs:
        counts[sub.ep_name] = counts.get(sub.ep_name, 0) + len(sub.get_nodes())
    total = sum(counts.values())
    return {ep: round(n / total, 4) for ep, n in sorted(counts.items(), key=lambda kv: -kv[1])} if total else None


@contextlib.contextmanager
def scratch_cwd() -> Iterator[Path]:
    """Run ONNX Runtime's tools inside a temporary working folder, removed afterwards (also on failure).

    Its symbolic shape inference (called by the transformer optimizer, the quantizers and the latency estimator)
    saves ``sym_shape_infer_temp.onnx`` and uuid-named ``*.data`` weight files into the *current* folder whenever a
    shape stays unknown, and never removes them; a run must write nothing outside its run directory. Paths given
    to the tools inside must be absolute. The working folder is the process's, so callers are serialised.
    """
    with _CWD_LOCK:
        before = os.getcwd()
        folder = Path(tempfile.mkdtemp(prefix="toolkit-ort-"))
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(before)
            shutil.rmtree(folder, ignore_errors=True)


def open_session(path: Path | str | Any, *, threads: int | None = None, fmt: str | None = None,
                 providers: Sequence[str | tuple[str, dict[str, str]]] | None = None, timing: bool = False,
                 optimize: bool = True, spinning: bool = True, assignment: bool = False) -> Any:
    """An ``onnxruntime.InferenceSession`` for an ``.onnx`` or ``.ort`` file (or an in-memory ``ModelProto``).

    Args:
        threads: intra-op threads (None: ONNX Runtime's default).
        fmt: a word for messages ("onnx" | "ort"; default from the suffix).
        providers: execution providers in order of preference, names or (name, options) pairs
            (:func:`provider_chain`; default: the CPU's).
        timing: the latency harness's settings: one inter-op thread, sequential execution, every graph
            optimisation, only fatal log lines.
        optimize: False runs the graph as written (no fusions): the estimator's kernel timings.
        spinning: False stops the intra-op threads from busy-waiting between calls: a server shares the CPUs
            with its own HTTP handling, which the spinning threads would starve.
        assignment: record which provider took each node (read with :func:`node_assignment`).

    Raises:
        UnsupportedOpError: the runtime has no kernel for an op of the graph (the message names op and format).
        UserError: a file that is not an ONNX model, a provider this build lacks, any other load failure.
    """
    import onnxruntime as ort

    proto = path if hasattr(path, "SerializeToString") else None
    path = Path("<in-memory model>") if proto is not None else Path(path)
    fmt = fmt or ("ort" if path.suffix == ".ort" else "onnx")
    providers = list(providers or ["CPUExecutionProvider"])
    check_providers(providers, ort.get_available_providers())
    options = ort.SessionOptions()
    if assignment:
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    options.log_severity_level = 4 if timing else 3
    if threads:
        options.intra_op_num_threads = threads
    if timing:
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:  # a chain of Adds stays a chain: kernels are timed, not what a fusion leaves
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        source = proto.SerializeToString() if proto is not None else str(path)
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind types (Fail, InvalidGraph, NotImplemented ...)
        kind = type(exc).__name__
        if kind == "InvalidProtobuf" or (fmt == "ort" and kind in ("Fail", "InvalidArgument")):
            raise UserError(f"{path}: not an ONNX model ({first_line(exc, 200)}); export one with "
                            f"`python -m toolkit export RECIPE` or torch.onnx.export") from exc
        raise op_error(exc, f"onnxruntime {ort.__version__} ({fmt})", path) or \
            UserError(f"{path}: onnxruntime cannot load it: {first_line(exc)[:300]}") from exc
    check_session_providers(session, providers, path)
    return session


def graph_inputs(path: Path | str) -> list[Any]:
    """A graph's inputs as ONNX Runtime describes them (name, type, shape), read from the file without a session."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    out = []
    for v in model.graph.input:
        if v.name in init:
            continue
        t = v.type.tensor_type
        np_type = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        ort_type = next((k for k, d in NP_TYPES.items() if np.dtype(d) == np_type), f"tensor({np_type.name})")
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        out.append(SimpleNamespace(name=v.name, type=ort_type, shape=shape))
    return out


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids that skip left padding: cumsum(mask) - 1, padding set to 1 (optimum's rule)."""
    mask = np.asarray(mask)
    return np.where(mask == 0, 1, np.cumsum(mask, -1) - 1).astype(np.int64)


def feed(inputs: Any, values: Mapping[str, Any], where: object = "the ONNX graph") -> dict[str, np.ndarray]:
    """The graph's inputs from ``values`` (arrays or tensors; "labels" is ignored), each cast to the graph's type.

    What a batch does not carry is filled in as a first step of the model would see it: token_type_ids zeros,
    position_ids from the attention mask, ``use_cache_branch`` False and every ``past_key_values.*`` empty (its
    symbolic axes 0 long, the batch axis as the batch).

    Args:
        inputs: a session, or its ``get_inputs()`` (or :func:`graph_inputs` of a file).

    Raises:
        UserError: an input the values cannot fill, naming it and what was given.
    """
    specs = inputs.get_inputs() if hasattr(inputs, "get_inputs") else inputs
    arrays = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in values.items() if k != "labels"}
    first = arrays.get("input_ids", next(iter(arrays.values()), np.zeros((1, 1))))
    n = first.shape[0] if first.ndim else 1
    out = {}
    for spec in specs:
        name = spec.name
        if name in arrays:
            value = arrays[name]
        elif name == "token_type_ids" and "input_ids" in arrays:
            value = np.zeros(arrays["input_ids"].shape)
        elif name == "position_ids" and "attention_mask" in arrays:
            value = positions(arrays["attention_mask"])
        elif name == "use_cache_branch":
            value = np.array([False])
        elif name.startswith("past_key_values"):
            value = np.zeros([n if i == 0 else (d if isinstance(d, int) and d > 0 else 0)
                              for i, d in enumerate(spec.shape)])
        else:
            raise UserError(f"{where}: the graph takes input '{name}', which the batch cannot fill "
                            f"(it has {', '.join(sorted(arrays)) or 'nothing'})")
        out[name] = np.asarray(value).astype(NP_TYPES.get(spec.type, np.float32))
    return out


def output_name(session: Any, preferred: str = "logits") -> str:
    """``preferred`` when the graph has that output, else its first output."""
    names = [o.name for o in session.get_outputs()]
    return preferred if preferred in names else names[0]


def logits(session: Any, batch: Mapping[str, Any], where: object = "the ONNX graph") -> np.ndarray:
    """The graph's logits (its first output when none is called so) for one batch, as float32."""
    return np.asarray(session.run([output_name(session)], feed(session, batch, where))[0], dtype=np.float32)


def shift_right(labels: Any, start_id: int, pad_id: int) -> np.ndarray:
    """Teacher forcing's decoder inputs: the labels moved one step right behind ``start_id``, the loss's ignore
    index (-100) replaced by ``pad_id`` (what Hugging Face's seq2seq models do with ``labels``)."""
    labels = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels).astype(np.int64)
    shifted = np.concatenate([np.full_like(labels[:, :1], start_id), labels[:, :-1]], axis=1)
    return np.where(shifted == -100, pad_id, shifted)


def decoder_ids(config: Mapping[str, Any], where: object = "the model's config.json") -> tuple[int, int]:
    """(decoder_start_token_id, pad_token_id) of an encoder-decoder's config, as its PyTorch model shifts labels:
    the start id falls back to the pad id (as ``task.reference_batch`` does), the pad id to 0.

    Raises:
        UserError: the config has neither id (no decoder input can be built).
    """
    start, pad = config.get("decoder_start_token_id"), config.get("pad_token_id")
    start = start if isinstance(start, int) else pad
    if not isinstance(start, int):
        raise UserError(f"{where}: no decoder_start_token_id (nor pad_token_id); set it to the id the decoder "
                        f"starts from (the tokenizer's eos or pad id for BART/Marian/T5)")
    return int(start), int(pad) if isinstance(pad, int) else 0


def seq2seq_logits(encoder: Any, decoder: Any, batch: Mapping[str, Any], start_id: int, pad_id: int,
                   where: object = "the seq2seq graphs") -> np.ndarray:
    """An encoder-decoder's teacher-forced logits (B, T, V) through its two graphs, as float32.

    The encoder turns ``input_ids``/``attention_mask`` into hidden states; the decoder (optimum's merged graph,
    ``use_cache_branch`` False and an empty past, as on a first step) reads them with ``decoder_input_ids`` or,
    without those, ``labels`` shifted right behind ``start_id``: one forward pass gives every target position's
    logits, which is what the loss and perplexity of the PyTorch model are computed from.

    Args:
        encoder, decoder: sessions of ``encoder_model*.onnx`` and ``decoder_model*.onnx``.
        start_id, pad_id: the config's ``decoder_start_token_id`` and ``pad_token_id``.

    Raises:
        UserError: a batch with neither decoder_input_ids nor labels, or inputs the graphs cannot take.
    """
    source = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    if "decoder_input_ids" in batch:
        dec_ids = np.asarray(batch["decoder_input_ids"]).astype(np.int64)
    elif "labels" in batch:
        dec_ids = shift_right(batch["labels"], start_id, pad_id)
    else:
        raise UserError(f"{where}: teacher forcing needs labels or decoder_input_ids in the batch")
    hidden = encoder.run([output_name(encoder, "last_hidden_state")], feed(encoder, source, where))[0]
    first = np.asarray(source["input_ids"])
    mask = source.get("attention_mask", np.ones(first.shape, dtype=np.int64))
    values = {"input_ids": dec_ids, "encoder_hidden_states": hidden, "encoder_attention_mask": mask}
    return np.asarray(decoder.run([output_name(decoder)], feed(decoder, values, where))[0], dtype=np.float32)
