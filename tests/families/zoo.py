"""Tiny random models of many Hugging Face families, saved with ``save_pretrained`` beside a tokenizer trained here
(or, for image models, their image processor), and small slices of the shared data sets: what a user brings, at a
size a test can train in seconds.

No download: the tokenizers are trained with the toolkit's own ``train_tokenizer`` (the ``tokenizers`` library) on
the data slice; each model's vocabulary and special token ids come from its tokenizer. Image models are built from
configs by ``tests/arch/vision_families.py``; their data are scikit-learn's digits written as 32x32 PNG folders.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGES = "image-classification"
WIDTH, FFN, HEADS, LAYERS = 32, 64, 4, 2


@dataclass(frozen=True)
class Family:
    name: str
    task: str
    tokenizer: str
    """the toolkit tokenizer kind: bert | gpt2 | bart ("" for image models)"""
    config: Callable[[dict[str, int]], Any]
    """special token ids + vocab size -> the transformers config"""
    named: bool = True
    """named in issue 13's list (False: a family that must work without the toolkit knowing it)"""


def _t(**kw: Any) -> Callable[[dict[str, int]], Any]:
    return lambda ids: kw


def families() -> dict[str, Family]:
    import transformers as T

    w, f, h, n = WIDTH, FFN, HEADS, LAYERS

    def enc(cls: Any, **extra: Any) -> Callable[[dict[str, int]], Any]:
        return lambda ids: cls(vocab_size=ids["vocab"], hidden_size=w, num_hidden_layers=n, num_attention_heads=h,
                               intermediate_size=f, max_position_embeddings=128, pad_token_id=ids["pad"], **extra)

    def dec(cls: Any, **extra: Any) -> Callable[[dict[str, int]], Any]:
        return lambda ids: cls(vocab_size=ids["vocab"], hidden_size=w, num_hidden_layers=n, num_attention_heads=h,
                               intermediate_size=f, max_position_embeddings=128, pad_token_id=ids["pad"],
                               bos_token_id=ids["bos"], eos_token_id=ids["eos"], tie_word_embeddings=True, **extra)

    def bart_like(cls: Any, **extra: Any) -> Callable[[dict[str, int]], Any]:
        return lambda ids: cls(vocab_size=ids["vocab"], d_model=w, encoder_layers=n, decoder_layers=n,
                               encoder_attention_heads=h, decoder_attention_heads=h, encoder_ffn_dim=f,
                               decoder_ffn_dim=f, max_position_embeddings=128, pad_token_id=ids["pad"],
                               bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                               decoder_start_token_id=ids["eos"], forced_eos_token_id=ids["eos"], **extra)

    out = [
        Family("bert", "text-classification", "bert", enc(T.BertConfig)),
        Family("distilbert", "text-classification", "bert",
               lambda ids: T.DistilBertConfig(vocab_size=ids["vocab"], dim=w, n_layers=n, n_heads=h, hidden_dim=f,
                                              max_position_embeddings=128, pad_token_id=ids["pad"])),
        Family("roberta", "text-classification", "bert", enc(T.RobertaConfig)),
        Family("xlm-roberta", "text-classification", "bert", enc(T.XLMRobertaConfig)),
        Family("electra", "text-classification", "bert", enc(T.ElectraConfig, embedding_size=w)),
        Family("deberta-v2", "text-classification", "bert", enc(T.DebertaV2Config)),
        Family("mobilebert", "text-classification", "bert",
               enc(T.MobileBertConfig, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16,
                   num_feedforward_networks=2)),
        Family("gpt2", "language-modeling", "gpt2",
               lambda ids: T.GPT2Config(vocab_size=ids["vocab"], n_embd=w, n_layer=n, n_head=h, n_inner=f,
                                        n_positions=128, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                                        pad_token_id=ids["pad"])),
        Family("llama", "language-modeling", "gpt2", dec(T.LlamaConfig, num_key_value_heads=2)),
        Family("qwen2", "language-modeling", "gpt2", dec(T.Qwen2Config, num_key_value_heads=2)),
        Family("mistral", "language-modeling", "gpt2", dec(T.MistralConfig, num_key_value_heads=2)),
        Family("phi3", "language-modeling", "gpt2", dec(T.Phi3Config, num_key_value_heads=2)),
        Family("gemma", "language-modeling", "gpt2", dec(T.GemmaConfig, num_key_value_heads=1, head_dim=8)),
        Family("bart", "seq2seq", "bart", bart_like(T.BartConfig)),
        Family("mbart", "seq2seq", "bart", bart_like(T.MBartConfig)),
        Family("marian", "seq2seq", "bart",
               lambda ids: T.MarianConfig(vocab_size=ids["vocab"], decoder_vocab_size=ids["vocab"], d_model=w,
                                          encoder_layers=n, decoder_layers=n, encoder_attention_heads=h,
                                          decoder_attention_heads=h, encoder_ffn_dim=f, decoder_ffn_dim=f,
                                          max_position_embeddings=128, pad_token_id=ids["pad"],
                                          eos_token_id=ids["eos"], decoder_start_token_id=ids["pad"],
                                          forced_eos_token_id=ids["eos"], share_encoder_decoder_embeddings=True)),
        Family("t5", "seq2seq", "bart",
               lambda ids: T.T5Config(vocab_size=ids["vocab"], d_model=w, d_kv=w // h, d_ff=f, num_layers=n,
                                      num_decoder_layers=n, num_heads=h, pad_token_id=ids["pad"],
                                      eos_token_id=ids["eos"], decoder_start_token_id=ids["pad"])),
        # not in the list: they must work without the toolkit naming them
        Family("opt", "language-modeling", "gpt2",
               lambda ids: T.OPTConfig(vocab_size=ids["vocab"], hidden_size=w, num_hidden_layers=n,
                                       num_attention_heads=h, ffn_dim=f, word_embed_proj_dim=w,
                                       max_position_embeddings=128, pad_token_id=ids["pad"],
                                       bos_token_id=ids["bos"], eos_token_id=ids["eos"]), named=False),
        # vision: configs in tests/arch/vision_families.py
        *(Family(name, IMAGES, "", lambda ids: None) for name in
          ("vit", "deit", "resnet", "mobilenet_v2", "convnext", "efficientnet", "mobilevit")),
        Family("regnet", IMAGES, "", lambda ids: None, named=False),
    ]
    return {fam.name: fam for fam in out}


VISION_WIDER: dict[str, dict[str, Any]] = {
    "vit": {"hidden_size": WIDTH, "intermediate_size": FFN}, "deit": {"hidden_size": WIDTH, "intermediate_size": FFN},
    "resnet": {"hidden_sizes": [32, 64], "embedding_size": 16}, "regnet": {"hidden_sizes": [32, 64], "embedding_size": 16},
    "convnext": {"hidden_sizes": [32, 64]},
}
AUTO = {"text-classification": "AutoModelForSequenceClassification", "language-modeling": "AutoModelForCausalLM",
        "seq2seq": "AutoModelForSeq2SeqLM"}


def vision() -> Any:
    """tests/arch/vision_families.py (imported by path: the test folders are not packages)."""
    path = Path(__file__).resolve().parents[1] / "arch" / "vision_families.py"
    spec = importlib.util.spec_from_file_location("vision_families", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digit_folders(root: Path, rows: int) -> dict[str, Any]:
    """scikit-learn's 8x8 digits of classes 0-4 as 32x32 PNGs in class folders, every other one RGB."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    picked = [(img, y) for img, y in zip(d.images, d.target) if y < 5][:rows]
    for i, (img, y) in enumerate(picked):
        im = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR)
        (root / str(y)).mkdir(exist_ok=True)
        (im.convert("RGB") if i % 2 else im).save(root / str(y) / f"{i}.png")
    return {"train": str(root), "split": [0.8, 0.1, 0.1]}


def data_files(root: Path, task: str, rows: int = 300) -> dict[str, Any]:
    """A slice of the shared data for ``task`` written under ``root``: the recipe's [data] table."""
    root.mkdir(parents=True, exist_ok=True)
    if task == IMAGES:
        return digit_folders(root, rows)
    if task == "text-classification":
        lines = (SHARED / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
        (root / "train.tsv").write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
        return {"train": str(root / "train.tsv"), "text_column": "sentence", "label_column": "label",
                "split": [0.8, 0.1, 0.1]}
    if task == "language-modeling":
        text = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").splitlines()
        (root / "text.txt").write_text("\n".join(line for line in text[: rows * 2] if line.strip()) + "\n",
                                       encoding="utf-8")
        return {"train": str(root / "text.txt"), "split": [0.8, 0.1, 0.1], "max_length": 32}
    src = (SHARED / "multi30k" / "train.en").read_text(encoding="utf-8").splitlines()[:rows]
    tgt = (SHARED / "multi30k" / "train.de").read_text(encoding="utf-8").splitlines()[:rows]
    (root / "train.en").write_text("\n".join(src) + "\n", encoding="utf-8")
    (root / "train.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return {"train": [str(root / "train.en"), str(root / "train.de")], "split": [0.8, 0.1, 0.1], "max_length": 32}


def texts_of(data: dict[str, Any]) -> list[str]:
    train = data["train"]
    if isinstance(train, list):
        return [line for p in train for line in Path(p).read_text(encoding="utf-8").splitlines()]
    lines = Path(train).read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in lines[1:]] if train.endswith(".tsv") else lines


def build(family: Family, folder: Path, data: dict[str, Any], vocab: int = 400, seed: int = 0) -> Path:
    """Save a tiny random model of ``family`` and its tokenizer (or image processor) into ``folder``."""
    import torch
    import transformers

    from toolkit.models.tokenizer import train_tokenizer

    if family.task == IMAGES:
        # wider than tests/arch builds them: with a few thousand weights, INT8's scales outweigh its savings
        wider = VISION_WIDER.get(family.name, {})
        return vision().save_folder(family.name, folder, num_labels=5, seed=seed, **wider)

    tokenizer = train_tokenizer(texts_of(data), family.tokenizer, vocab)
    ids = {"vocab": len(tokenizer), "pad": tokenizer.pad_token_id,
           "bos": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
           "eos": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id}
    if ids["eos"] is None:  # a WordPiece tokenizer: [SEP] ends a sequence
        ids["eos"] = tokenizer.sep_token_id
    config = family.config(ids)
    if family.task == "text-classification":
        config.num_labels = 2
    torch.manual_seed(seed)
    model = getattr(transformers, AUTO[family.task]).from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
