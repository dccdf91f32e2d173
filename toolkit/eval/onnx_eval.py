"""Quality of ONNX variants: ONNX Runtime runs the graphs on the same encoded eval batches PyTorch sees.

- classification: one session over the task's collated batches (logits -> softmax probabilities);
- language modelling: the decoder graph behind a callable that :func:`toolkit.eval.perplexity.perplexity` takes,
  fed without past (an empty KV cache, as ``toolkit/export/verify.py`` feeds a first step);
- seq2seq: optimum's ``ORTModelForSeq2SeqLM`` over the encoder and merged-decoder graphs, wrapped so that
  :func:`toolkit.eval.generation.generate` drives it exactly as it drives a PyTorch model; the teacher-forced
  loss through both graphs (:func:`seq2seq_loss`), as PyTorch's is computed.

A variant with no PyTorch ancestor (an ``.onnx`` model source) is encoded by its task from the bundle files beside its
graph (tokenizer, preprocess.json, labels.json; ``Task.encode_bundle``). A classifier that is only an ExecuTorch
program (a PT2E INT8 step's result) runs in ExecuTorch (:func:`pte_classification_probs`).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from toolkit import onnxrt
from toolkit.errors import UserError


def onnx_params(paths: Sequence[Path]) -> int:
    """Elements of the graphs' initializers (weights; an INT8 weight counts once, its scales and zero points too)."""
    import onnx

    total = 0
    for p in paths:
        model = onnx.load(str(p), load_external_data=False)
        for t in model.graph.initializer:
            total += int(np.prod(t.dims)) if len(t.dims) else 1
    return total


def classification_probs(path: Path, dataset: Sequence[Any], collate: Callable[[list[Any]], dict[str, Any]],
                         batch_size: int) -> dict[str, np.ndarray]:
    """Class probabilities of an ONNX classifier on ``dataset``, batched with the task's ``collate``.

    Returns: {"probs": (N, K) float64, "labels": (N,) int64}, as ``task.predict`` returns them.
    """
    session = onnxrt.open_session(path)
    name = onnxrt.output_name(session)
    probs, labels = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        values = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in batch.items()
                  if k != "labels"}
        logits = session.run([name], onnxrt.feed(session, values, path))[0].astype(np.float64)  # (B, K)
        logits -= logits.max(-1, keepdims=True)
        e = np.exp(logits)
        probs.append(e / e.sum(-1, keepdims=True))
        labels.append(np.asarray(batch["labels"]))
    return {"probs": np.concatenate(probs), "labels": np.concatenate(labels).astype(np.int64)}


class OnnxCausalLM:
    """A causal LM's ONNX graph as the callable :func:`toolkit.eval.perplexity.perplexity` takes.

    ``model(input_ids)`` (a (1, T) tensor) runs the graph with an all-ones mask and no past and returns
    ``(logits,)`` as a float32 tensor (1, T, V).
    """

    def __init__(self, path: Path, positions: int | None):
        self.path = Path(path)
        self.session = onnxrt.open_session(self.path)
        self._out = onnxrt.output_name(self.session)
        self.config = SimpleNamespace(n_positions=positions)

    def __call__(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        ids = input_ids.cpu().numpy().astype(np.int64)
        values = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        logits = self.session.run([self._out], onnxrt.feed(self.session, values, self.path))[0]
        return (torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)),)


class _GenerateAdapter:
    """What :func:`toolkit.eval.generation.generate` uses of a PyTorch model, over an optimum ORT model."""

    training = False

    def __init__(self, model: Any):
        self._model = model
        self.config = model.config
        self.generation_config = model.generation_config

    def parameters(self):  # generation.generate asks the first parameter where inputs go: the CPU
        yield torch.zeros(0)

    def eval(self) -> "_GenerateAdapter":
        return self

    def train(self, mode: bool = True) -> "_GenerateAdapter":
        return self

    def generate(self, **kwargs: Any) -> torch.Tensor:
        return self._model.generate(**kwargs)


def ort_seq2seq(encoder: Path, decoder: Path, config_dir: Path | None) -> _GenerateAdapter:
    """optimum's ORTModelForSeq2SeqLM over the two graphs, ready for ``generation.generate``.

    ``config_dir``: where config.json / generation_config.json are when the graphs' folder has none (the
    ancestor's model folder).
    """
    from transformers import AutoConfig, GenerationConfig

    try:
        from optimum.onnxruntime import ORTModelForSeq2SeqLM
    except ImportError as e:  # optimum-onnx is a core dependency; a broken install is the user's to fix
        raise UserError(f"evaluating ONNX seq2seq variants needs optimum-onnx ({e}); pip install optimum-onnx") from e
    folder = Path(encoder).parent
    source = folder if (folder / "config.json").is_file() else config_dir
    if source is None or not (Path(source) / "config.json").is_file():
        raise UserError(f"{folder}: no config.json beside the seq2seq graphs (the export writes one); "
                        f"re-export the variant with `python -m toolkit export`")
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    kwargs: dict[str, Any] = {}
    if (Path(source) / "generation_config.json").is_file():
        kwargs["generation_config"] = GenerationConfig.from_pretrained(source, local_files_only=True)
    if "merged" in Path(decoder).name:
        # optimum finds the merged decoder by its name pattern; naming it would make it look for the unmerged
        # pair (decoder + decoder_with_past) instead
        files = {"use_merged": True, "use_cache": True}
    else:
        files = {"use_merged": False, "use_cache": False, "decoder_file_name": Path(decoder).name}
    model = ORTModelForSeq2SeqLM.from_pretrained(folder, config=config, encoder_file_name=Path(encoder).name,
                                                 local_files_only=True, **files, **kwargs)
    return _GenerateAdapter(model)


def seq2seq_loss(encoder: Path, decoder: Path, task: Any, dataset: Sequence[Any],
                 collate: Callable[[list[Any]], dict[str, Any]], config: dict[str, Any],
                 batch_size: int) -> dict[str, float]:
    """Teacher-forced loss and perplexity of an encoder-decoder's two graphs on encoded examples (labels shifted
    right behind the config's decoder_start_token_id), token-weighted as ``task.evaluate`` computes them in PyTorch.

    Returns: {"loss", "perplexity", "tokens"}.
    """
    enc, dec = onnxrt.open_session(encoder), onnxrt.open_session(decoder)
    ids = onnxrt.decoder_ids(config, f"{Path(encoder).parent}/config.json")
    pairs = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        pairs.append((onnxrt.seq2seq_logits(enc, dec, batch, *ids, decoder), batch))
    return task.metric_from_logits(pairs)


# --- bundle encoding (no PyTorch ancestor) -------------------------------------------------------------------

def bundle_dir(variant_dir: Path, source: str | None) -> Path | None:
    """The folder with the variant's tokenizer/preprocess files: beside its graph, else beside the ONNX model
    it was made from (``info["source"]`` of an ``.onnx`` model source)."""
    for folder in (Path(variant_dir), Path(source).parent if source else None):
        if folder is not None and ((folder / "preprocess.json").is_file() or (folder / "tokenizer.json").is_file()
                                   or (folder / "tokenizer_config.json").is_file()):
            return folder
    return None


def read_bundle(folder: Path | None) -> tuple[dict[str, Any], list[str] | None]:
    """(preprocess.json, labels.json) of a bundle folder; empty/None where absent."""
    if folder is None:
        return {}, None
    from toolkit.models.pretrained import read_labels, read_preprocess

    return read_preprocess(folder) or {}, read_labels(folder)


def read_config(folder: Path | None) -> dict[str, Any]:
    """A folder's config.json (the Hugging Face config a bundle carries), {} when there is none."""
    if folder is None or not (Path(folder) / "config.json").is_file():
        return {}
    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


def positions_in(config: dict[str, Any]) -> int | None:
    """n_positions / max_position_embeddings / n_ctx of a config dict, when it has one."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def config_positions(folder: Path | None) -> int | None:
    """n_positions / max_position_embeddings from a folder's config.json, when there is one."""
    return positions_in(read_config(folder))


# --- ExecuTorch programs (a PT2E INT8 variant is a .pte only) ---------------------------------------------------

def pte_input_sizes(path: Path) -> list[tuple[int, ...]]:
    """The sizes of each input of a .pte's ``forward`` (for a bounded dynamic input: its largest sizes)."""
    from toolkit.export.executorch import load_method

    md = load_method(path).metadata
    return [tuple(int(d) for d in md.input_tensor_meta(i).sizes()) for i in range(md.num_inputs())]


def pte_classification_probs(path: Path, dataset: Sequence[Any], collate: Callable[[list[Any]], dict[str, Any]],
                             batch_size: int) -> dict[str, np.ndarray]:
    """Class probabilities of an ExecuTorch classifier, one example per call.

    Each row goes in at the program's own shape: token inputs right-padded (attention mask 0) to its length,
    a fixed batch filled with copies of the row, so static and bounded-dynamic programs alike run every example
    exactly as a device would. Rows longer than a static program's length are cut to it.
    """
    from toolkit.export.executorch import load_method

    method = load_method(path)
    md = method.metadata
    metas = [md.input_tensor_meta(i) for i in range(md.num_inputs())]
    sizes = [tuple(int(d) for d in m.sizes()) for m in metas]
    dtypes = [torch.float32 if m.dtype() == 6 else torch.long for m in metas]  # ExecuTorch codes: 6 float, 4 long
    probs, labels = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        names = (["pixel_values"] if "pixel_values" in batch
                 else ["input_ids", "attention_mask", "token_type_ids"][: len(sizes)])
        for r in range(batch["labels"].shape[0]):
            tensors = []
            for name, size, dtype in zip(names, sizes, dtypes):
                t = batch[name][r:r + 1] if name in batch else torch.zeros_like(batch["input_ids"][r:r + 1])
                if t.dim() == 2:  # (1, T) token input: to the program's length
                    t = torch.nn.functional.pad(t[:, : size[1]], (0, max(0, size[1] - t.shape[1])), value=0)
                t = t.expand(size[0], *t.shape[1:]) if size and size[0] > 1 else t
                tensors.append(t.to(dtype).contiguous())
            logits = method.execute(tensors)[0][:1].double().numpy()  # (1, K)
            logits -= logits.max(-1, keepdims=True)
            e = np.exp(logits)
            probs.append(e / e.sum(-1, keepdims=True))
        labels.append(np.asarray(batch["labels"]))
    return {"probs": np.concatenate(probs), "labels": np.concatenate(labels).astype(np.int64)}
