"""Model builders: Hugging Face models from a local folder, built-in small configs, tokenizer training, the CNN.

Importing this package registers the CNN (``model_type = "edge-cnn"``) with transformers' Auto classes, so
``AutoModelForImageClassification.from_pretrained`` loads its folders.
"""
from toolkit.models.builtin import (BUILTINS, Builtin, ModelSource, bart_tiny, bert_tiny,
                                    cnn_small, cnn_widths, gpt2_tiny, resolve_source)
from toolkit.models.cnn import (EdgeCNNConfig, EdgeCNNForImageClassification, param_count_formula,
                                register_auto_classes)
from toolkit.models.pretrained import (apply_dropout, check_model_dir, load_model, load_tokenizer, read_labels,
                                       read_preprocess)
from toolkit.models.tokenizer import cached_tokenizer, texts_fingerprint, train_tokenizer

__all__ = [
    "BUILTINS", "Builtin", "ModelSource", "resolve_source", "bert_tiny", "gpt2_tiny",
    "bart_tiny", "cnn_small", "cnn_widths", "EdgeCNNConfig", "EdgeCNNForImageClassification",
    "param_count_formula", "register_auto_classes", "check_model_dir", "load_model", "load_tokenizer",
    "read_labels", "read_preprocess", "apply_dropout", "cached_tokenizer", "texts_fingerprint",
    "train_tokenizer", "count_params", "unwrap",
]


def count_params(model) -> int:
    """Parameters of a model (shared/tied tensors counted once)."""
    return sum(p.numel() for p in unwrap(model).parameters())


def unwrap(model):
    """The model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif type(model).__name__ == "DistributedDataParallel" and hasattr(model, "module"):
            model = model.module
        else:
            return model
