"""Models and tokenizers from a local Hugging Face folder (``model.source = "/path/to/dir"``).

Everything is checked before transformers gets to it, so a folder that is not a model is a one-line
``UserError`` naming the folder and what is missing, not a traceback from deep inside ``from_pretrained``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import toolkit.models.reshaped  # noqa: F401  (registers edge-reshaped with the Auto classes: pruned CNNs reload)
from toolkit.errors import UserError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
# Dropout settings by config attribute name, across the architectures we meet (BERT-likes, GPT-2, BART/T5).
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop",
                "attn_pdrop", "dropout", "attention_dropout", "dropout_rate")
_FIX = "point model.source at a folder written by save_pretrained (or use builtin:<name>)"


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_model_dir(path: Path) -> Any:
    """Check that ``path`` is a model folder and return its loaded ``PretrainedConfig``.

    Raises:
        UserError: the folder is missing, is a file, has no config.json, a config.json that does not
            load, or no weights file.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import toolkit.models.cnn  # noqa: F401  (registers edge-cnn with AutoConfig)

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such folder: {_FIX}")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a model folder: {_FIX}")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json: {_FIX}")
    cfg_file = path / "config.json"
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_file} does not load (not valid JSON: {_first_line(e)}): {_FIX}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{cfg_file} does not load (not a JSON object): {_FIX}")
    model_type = raw.get("model_type")
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:
        import transformers

        raise UserError(f"{cfg_file} does not load (model_type '{model_type}' is unknown to transformers "
                        f"{transformers.__version__}): {_FIX}")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise UserError(f"{path / 'config.json'} does not load ({_first_line(e)}): {_FIX}") from None
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"{path} has no weights (model.safetensors or pytorch_model.bin): {_FIX}")
    return config


def read_preprocess(path: Path) -> dict[str, Any] | None:
    """The folder's preprocess.json (written by ``Prepared.save``), or None."""
    p = Path(path) / "preprocess.json"
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p} does not load ({_first_line(e)}): delete it or save the model again") from None
    return data if isinstance(data, dict) else None


def read_labels(path: Path, config: Any = None) -> list[str] | None:
    """Class names of a saved classifier: labels.json, else a config's id2label unless it is the
    placeholder LABEL_0, LABEL_1… that transformers fills in."""
    p = Path(path) / "labels.json"
    if p.is_file():
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{p} does not load ({_first_line(e)}): delete it or save the model again") from None
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return data
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)]
    if names and names != [f"LABEL_{i}" for i in range(len(names))]:
        return [str(n) for n in names]
    return None


def apply_dropout(config: Any, p: float) -> list[str]:
    """Set every dropout probability the config has to ``p``; returns the keys that were set."""
    keys = [k for k in DROPOUT_KEYS if isinstance(getattr(config, k, None), (int, float))]
    for k in keys:
        setattr(config, k, p)
    return keys


def load_tokenizer(path: Path):
    """The tokenizer saved in a model folder (``AutoTokenizer``; fast when there is one).

    Raises:
        UserError: the folder has no tokenizer files.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{path} has no tokenizer files (tokenizer.json, vocab.txt, …): save the tokenizer beside "
                        f"the model (tokenizer.save_pretrained) or use a builtin:<name> model")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} has no usable tokenizer ({_first_line(e)}): save the tokenizer beside the "
                        f"model (tokenizer.save_pretrained) or use a builtin:<name> model") from None
    if tok is None or isinstance(tok, bool):
        raise UserError(f"{path} has no tokenizer files (tokenizer.json or vocab files): save the tokenizer "
                        f"beside the model (tokenizer.save_pretrained)")
    return tok


def load_image_processor(path: Path) -> Any:
    """The image processor saved in a model folder (``AutoImageProcessor``: preprocessor_config.json).

    Raises:
        UserError: the folder has no preprocessor_config.json, or one that does not load.
    """
    from transformers import AutoImageProcessor

    path = Path(path)
    file = path / "preprocessor_config.json"
    if not file.is_file():
        raise UserError(f"{path} has no preprocessor_config.json, which says how images are resized and normalised "
                        f"for this model: save the image processor it was trained with beside it "
                        f"(AutoImageProcessor.from_pretrained(<its hub name>).save_pretrained(folder))")
    try:
        return AutoImageProcessor.from_pretrained(path, use_fast=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise UserError(f"{file} does not load ({_first_line(e)}): save the image processor again "
                        f"(image_processor.save_pretrained(folder))") from None


def load_model(path: Path, auto_class: str, purpose: str, config_updates: dict[str, Any] | None = None,
               dropout: float | None = None, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a model folder with ``transformers.<auto_class>.from_pretrained``. A pruned CNN's folder
    (model_type edge-reshaped, see ``toolkit.models.reshaped``) is rebuilt at its recorded sizes, then loaded
    strictly from its safetensors.

    Args:
        path: the folder (checked with :func:`check_model_dir`).
        auto_class: e.g. "AutoModelForSequenceClassification".
        purpose: words for the error message, e.g. "a sequence-classification".
        config_updates: set on the config before loading (num_labels, id2label, ...).
        dropout: set every dropout probability of the config to this.
        kwargs: passed to from_pretrained (ignore_mismatched_sizes, attn_implementation).

    Returns:
        (model, {"newly_initialized": [...], "mismatched": [...], "dropout_keys": [...]})
    Raises:
        UserError: not a model folder, or a model of an architecture without the needed head.
    """
    import transformers

    config = check_model_dir(path)
    for k, v in (config_updates or {}).items():
        setattr(config, k, v)
    dropout_keys = apply_dropout(config, dropout) if dropout is not None else []
    cls = getattr(transformers, auto_class)
    try:
        model, loading = cls.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise UserError(f"{path} holds a '{config.model_type}' model, which has no {purpose} head: "
                            f"point model.source at a {purpose} model") from None
        raise UserError(f"{path}: the model does not load ({_first_line(e)}): {_FIX}") from None
    except (OSError, RuntimeError, KeyError) as e:
        raise UserError(f"{path}: the weights do not load ({_first_line(e)}): {_FIX}") from None
    info = {"newly_initialized": sorted(loading.get("missing_keys", [])),
            "mismatched": sorted(k if isinstance(k, str) else k[0] for k in loading.get("mismatched_keys", [])),
            "dropout_keys": dropout_keys}
    return model, info
