"""Tiny models of each task, saved as a trained model directory would be (weights, tokenizer, labels, preprocess).

Module-scoped: exporting is the slow part, so each test module exports a model once and asserts on the files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = ("the a cat dog sat ran on mat far away today good bad film plot was very not it is and but so "
         "of to in with this that movie story actor").split()
SENTENCES = ["the cat sat on the mat", "a dog ran far away today", "good film", "the plot was not very good but",
             "it is a bad movie", "this story and that actor"]


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")


@pytest.fixture(scope="session")
def text_samples() -> list[dict[str, np.ndarray]]:
    """Two padded batches of real sentences (different lengths, padding on the right)."""
    tok = tokenizer()
    return [dict(tok(SENTENCES[:3], padding=True, return_tensors="np")),
            dict(tok(SENTENCES[3:], padding=True, return_tensors="np"))]


def _save(model, path: Path, labels: list[str] | None = None) -> Path:
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    if labels:
        (path / "labels.json").write_text(json.dumps(labels))
    (path / "preprocess.json").write_text(json.dumps({"max_length": 32, "lowercase": True}))
    return path


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    model = BertForSequenceClassification(cfg).eval()
    return _save(model, tmp_path_factory.mktemp("bert"), labels=["negative", "neutral", "positive"])


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return _save(GPT2LMHeadModel(cfg).eval(), tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def bart_dir(tmp_path_factory) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                     pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3)
    return _save(BartForConditionalGeneration(cfg).eval(), tmp_path_factory.mktemp("bart"))


class TinyCNN(torch.nn.Module):
    """MobileNet-style: conv-bn-relu, a depthwise-separable block, global pool, linear head."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
            torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
            torch.nn.Conv2d(8, 16, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU6(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(16, classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, classes)
        return self.head(self.features(pixel_values))


@pytest.fixture(scope="session")
def cnn() -> TinyCNN:
    torch.manual_seed(0)
    model = TinyCNN()
    for m in model.modules():  # non-trivial running stats, so a folded BatchNorm is actually tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="session")
def image_samples() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"pixel_values": rng.standard_normal((3, 3, 16, 16)).astype(np.float32)},
            {"pixel_values": rng.standard_normal((5, 3, 16, 16)).astype(np.float32)}]


@pytest.fixture(scope="session")
def cnn_example() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.zeros(2, 3, 16, 16)}
