"""Quality of ONNX variants: ONNX Runtime runs the graphs on the same encoded eval batches PyTorch sees.

- classification: one session over the task's collated batches (logits -> softmax probabilities);
- language modelling: the decoder graph behind a callable that :func:`toolkit.eval.perplexity.perplexity` takes,
  fed without past (an empty KV cache, as ``toolkit/export/verify.py`` feeds a first step);
- seq2seq: optimum's ``ORTModelForSeq2SeqLM`` over the encoder and merged-decoder graphs, wrapped so that
  :func:`toolkit.eval.generation.generate` drives it exactly as it drives a PyTorch model.

A variant with no PyTorch ancestor (an ``.onnx`` model source) is encoded with the bundle files beside its graph
(tokenizer, preprocess.json, labels.json): :func:`bundle_prepared` mirrors the tasks' own encoding. A classifier that
is only an ExecuTorch program (a PT2E INT8 step's result) runs in ExecuTorch (:func:`pte_classification_probs`).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from toolkit.errors import UserError

_NP = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
       "tensor(float16)": np.float16, "tensor(bool)": np.bool_, "tensor(double)": np.float64}


def graph_files(folder: Path, task: str, onnx: Path | None = None) -> dict[str, Path]:
    """The ONNX graphs of a variant folder by role: {"model": ...} or, seq2seq, {"encoder": ..., "decoder": ...}.

    ``onnx`` (Variant.onnx) wins for the main graph; quantized graphs may carry a suffix
    (``encoder_model_quantized.onnx``), so names are matched by prefix.
    """
    folder = Path(folder)
    if task == "seq2seq":
        enc = _first(folder, "encoder_model", onnx)
        dec = _first(folder, "decoder_model_merged") or _first(folder, "decoder_model")
        return {k: v for k, v in (("encoder", enc), ("decoder", dec)) if v is not None}
    if onnx is not None and Path(onnx).is_file():
        return {"model": Path(onnx)}
    main = folder / "model.onnx"
    if main.is_file():
        return {"model": main}
    others = sorted(p for p in folder.glob("*.onnx") if p.is_file())
    return {"model": others[0]} if others else {}


def _first(folder: Path, prefix: str, hint: Path | None = None) -> Path | None:
    if hint is not None and Path(hint).name.startswith(prefix) and Path(hint).is_file():
        return Path(hint)
    hits = sorted(p for p in folder.glob(f"{prefix}*.onnx") if p.is_file()
                  and not (prefix == "decoder_model" and "with_past" in p.name))
    return hits[0] if hits else None


def onnx_params(paths: Sequence[Path]) -> int:
    """Elements of the graphs' initializers (weights; an INT8 weight counts once, its scales and zero points too)."""
    import onnx

    total = 0
    for p in paths:
        model = onnx.load(str(p), load_external_data=False)
        for t in model.graph.initializer:
            total += int(np.prod(t.dims)) if len(t.dims) else 1
    return total


def _session(path: Path):
    from toolkit.export.ort import open_session

    return open_session(path)


def _feed(session: Any, values: dict[str, np.ndarray], where: Path) -> dict[str, np.ndarray]:
    """The session's inputs from ``values``; token types, positions and an empty past filled in."""
    ids = values.get("input_ids")
    feed = {}
    for i in session.get_inputs():
        dtype = _NP.get(i.type, np.float32)
        if i.name in values:
            value = values[i.name]
        elif i.name == "token_type_ids":
            value = np.zeros(ids.shape)
        elif i.name == "position_ids":
            mask = values.get("attention_mask", np.ones(ids.shape, dtype=np.int64))
            value = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)  # optimum's rule (skips left padding)
        elif i.name == "use_cache_branch":
            value = np.array([False])
        elif i.name.startswith("past_key_values"):
            # no past: every symbolic axis but the batch is 0 long
            value = np.zeros([ids.shape[0] if "batch" in str(d) else (d if isinstance(d, int) else 0)
                              for d in i.shape])
        else:
            raise UserError(f"{where}: the graph takes input '{i.name}', which evaluation cannot feed "
                            f"(it feeds {sorted(values)}); re-export the variant with `python -m toolkit export`")
        feed[i.name] = np.asarray(value).astype(dtype)
    return feed


def classification_probs(path: Path, dataset: Sequence[Any], collate: Callable[[list[Any]], dict[str, Any]],
                         batch_size: int) -> dict[str, np.ndarray]:
    """Class probabilities of an ONNX classifier on ``dataset``, batched with the task's ``collate``.

    Returns: {"probs": (N, K) float64, "labels": (N,) int64}, as ``task.predict`` returns them.
    """
    session = _session(path)
    outputs = [o.name for o in session.get_outputs()]
    name = "logits" if "logits" in outputs else outputs[0]
    probs, labels = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        values = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in batch.items()
                  if k != "labels"}
        logits = session.run([name], _feed(session, values, path))[0].astype(np.float64)  # (B, K)
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
        self.session = _session(self.path)
        outputs = [o.name for o in self.session.get_outputs()]
        self._out = "logits" if "logits" in outputs else outputs[0]
        self.config = SimpleNamespace(n_positions=positions)

    def __call__(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        ids = input_ids.cpu().numpy().astype(np.int64)
        values = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        logits = self.session.run([self._out], _feed(self.session, values, self.path))[0]
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


def bundle_prepared(task: str, folder: Path | None, max_length: int, split_labels: list[str],
                    examples: Sequence[dict[str, Any]]) -> SimpleNamespace:
    """Eval batches for a classifier from bundle files, encoded as the task encodes them.

    Returns: an object with ``eval_set``, ``collate``, ``labels``, ``tokenizer``, ``preprocess`` (the parts of a
    ``Prepared`` that evaluation uses).

    Raises:
        UserError: a text task without tokenizer files.
    """
    from toolkit.tasks.common import label_ids, pad_with_mask

    preprocess, labels = read_bundle(folder)
    labels = list(preprocess.get("labels") or labels or split_labels)
    label2id = {n: i for i, n in enumerate(labels)}
    ys = label_ids(examples, label2id, "eval")
    if task == "image-classification":
        from toolkit.tasks.image_classification import to_chw

        items = [{"pixel_values": to_chw(ex["image"]), "labels": y} for ex, y in zip(examples, ys)]

        def collate_images(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            return {"pixel_values": torch.stack([it["pixel_values"] for it in batch]),  # (B, C, H, W)
                    "labels": torch.tensor([it["labels"] for it in batch], dtype=torch.long)}

        return SimpleNamespace(eval_set=items, collate=collate_images, labels=labels, tokenizer=None,
                               preprocess=preprocess)
    if folder is None:
        raise UserError("an ONNX text classifier without a PyTorch ancestor needs its tokenizer: put tokenizer.json "
                        "(and preprocess.json, labels.json) beside the .onnx model source")
    from toolkit.models.pretrained import load_tokenizer

    tokenizer = load_tokenizer(folder)
    length = int(preprocess.get("max_length") or max_length)
    pad_id = preprocess.get("pad_token_id", tokenizer.pad_token_id)
    pad_id = 0 if pad_id is None else int(pad_id)
    ids = tokenizer([str(ex["text"]) for ex in examples], truncation=True, max_length=length,
                    return_token_type_ids=False, return_attention_mask=False)["input_ids"] if examples else []
    items = [{"input_ids": i, "labels": y} for i, y in zip(ids, ys)]

    def collate_text(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_with_mask([it["input_ids"] for it in batch], pad_id, cap=length)  # (B, T)
        return {"input_ids": input_ids, "attention_mask": mask,
                "labels": torch.tensor([it["labels"] for it in batch], dtype=torch.long)}

    return SimpleNamespace(eval_set=items, collate=collate_text, labels=labels, tokenizer=tokenizer,
                           preprocess={**preprocess, "max_length": length, "pad_token_id": pad_id})


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
