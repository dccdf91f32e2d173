"""Built-in small models, trained from scratch: bert-tiny, gpt2-tiny, bart-tiny (Hugging Face configs) and
cnn-small (our CNN). ``model.hidden_size / layers / heads`` override the defaults when > 0; the dropout
comes from ``train.dropout``; attention is "eager" so the models export to ONNX and ExecuTorch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.config import Recipe
from toolkit.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Builtin:
    name: str
    tokenizer: str | None
    """tokenizer kind trained for it (toolkit.models.tokenizer.KINDS), None for images"""
    hidden: int
    layers: int


BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("bert-tiny", "bert", hidden=128, layers=2),
    Builtin("gpt2-tiny", "gpt2", hidden=128, layers=2),
    # a Llama-shaped decoder (grouped-query attention, RoPE, SwiGLU, RMSNorm, tied embeddings): the shape of the
    # small LMs people ship (SmolLM, Qwen, Gemma), a few million parameters at the defaults
    Builtin("llama-small", "gpt2", hidden=256, layers=4),
    Builtin("bart-tiny", "bart", hidden=128, layers=2),
    # cnn-small: hidden is the last block's width, layers the number of depthwise-separable blocks.
    Builtin("cnn-small", None, hidden=64, layers=2),
)}
"""the built-in models; which task each serves is the task's to say (``Task.builtins``)"""
# Positions are at least this, so a latency run at the usual seq_len fits even with a short max_length.
MIN_POSITIONS = 128


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: a built-in (by name) or a local folder."""

    kind: str
    """"builtin" | "dir" """
    name: str
    """the built-in's name, or the folder as a string"""
    path: Path | None = None

    def __str__(self) -> str:
        return f"builtin:{self.name}" if self.kind == "builtin" else self.name


def resolve_source(recipe: Recipe) -> ModelSource:
    """``recipe.model.source`` as a ModelSource (empty: the task's built-in).

    Raises:
        UserError: an unknown built-in, a built-in of another task, or an .onnx file.
    """
    from toolkit.registry import TASKS

    fitting = TASKS.get(recipe.task, "task").builtins
    src = recipe.model.source.strip()
    if not src:
        return ModelSource("builtin", fitting[0])
    if src.startswith("builtin:"):
        name = src.split(":", 1)[1]
        if name not in BUILTINS:
            raise UserError(f"model.source = '{src}': no such built-in model{did_you_mean(name, list(BUILTINS))}")
        if name not in fitting:
            serves = next((t for t, task in TASKS.items() if name in task.builtins), "another task")
            raise UserError(f"model.source = '{src}' is a {serves} model; for task '{recipe.task}' "
                            f"use builtin:{fitting[0]} or a folder")
        return ModelSource("builtin", name)
    path = recipe.resolve_path(src)
    if path.suffix.lower() == ".onnx":
        raise UserError(f"model.source = '{src}': an .onnx file has no PyTorch weights to train or evaluate here; "
                        f"point model.source at a Hugging Face folder (save_pretrained) or a builtin:<name>")
    return ModelSource("dir", str(path), path)


def dims(recipe: Recipe, name: str) -> tuple[int, int, int]:
    """(hidden, layers, heads) of a built-in, with the recipe's overrides. Heads default to hidden / 64
    (at least 2)."""
    b, m = BUILTINS[name], recipe.model
    hidden = m.hidden_size if m.hidden_size > 0 else b.hidden
    layers = m.layers if m.layers > 0 else b.layers
    heads = m.heads if m.heads > 0 else max(2, hidden // 64)
    if b.tokenizer is not None and hidden % heads:
        raise UserError(f"model.hidden_size = {hidden} is not divisible by model.heads = {heads}: "
                        f"pick a width that is a multiple of the head count")
    return hidden, layers, heads


def max_positions(recipe: Recipe) -> int:
    return max(recipe.data.max_length, MIN_POSITIONS)


def bert_tiny(recipe: Recipe, tokenizer: Any, labels: list[str]):
    """BertForSequenceClassification: 2 layers, hidden 128, intermediate 4 x hidden by default."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    hidden, layers, heads = dims(recipe, "bert-tiny")
    p = recipe.train.dropout
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=max_positions(recipe), type_vocab_size=2,
        hidden_dropout_prob=p, attention_probs_dropout_prob=p, pad_token_id=tokenizer.pad_token_id,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")


def gpt2_tiny(recipe: Recipe, tokenizer: Any):
    """GPT2LMHeadModel: 2 layers, 128 wide by default; <|endoftext|> is bos, eos and pad."""
    from transformers import AutoModelForCausalLM, GPT2Config

    hidden, layers, heads = dims(recipe, "gpt2-tiny")
    p = recipe.train.dropout
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=max_positions(recipe), n_embd=hidden, n_layer=layers, n_head=heads,
        n_inner=4 * hidden, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, bos_token_id=eos, eos_token_id=eos,
        pad_token_id=eos)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def llama_small(recipe: Recipe, tokenizer: Any):
    """LlamaForCausalLM: 4 layers, 256 wide, 4 query heads sharing 2 key/value heads (``model.kv_heads``), SwiGLU
    MLP 704 wide (8/3 × hidden rounded up to a multiple of 64, as Llama rounds to ``multiple_of``: 4-bit groups of
    32 or 64 then divide every layer's input width), RoPE, tied embeddings; byte-level BPE as GPT-2's."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, layers, heads = dims(recipe, "llama-small")
    kv_heads = recipe.model.kv_heads if recipe.model.kv_heads > 0 else max(1, heads // 2)
    if heads % kv_heads:
        raise UserError(f"model.kv_heads = {kv_heads} does not divide model.heads = {heads}: grouped-query attention "
                        f"shares each key/value head among an equal number of query heads")
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=-(-hidden * 8 // 3 // 64) * 64,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions(recipe), rms_norm_eps=1e-5, rope_theta=10000.0,
        attention_dropout=recipe.train.dropout, tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos,
        pad_token_id=eos)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def causal_lm(name: str, recipe: Recipe, tokenizer: Any):
    """The built-in decoder called ``name`` (the language-modelling task's built-ins)."""
    return {"gpt2-tiny": gpt2_tiny, "llama-small": llama_small}[name](recipe, tokenizer)


def bart_tiny(recipe: Recipe, tokenizer: Any):
    """BartForConditionalGeneration: 2 encoder + 2 decoder layers, d_model 128 by default."""
    from transformers import AutoModelForSeq2SeqLM, BartConfig

    hidden, layers, heads = dims(recipe, "bart-tiny")
    p = recipe.train.dropout
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=hidden, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * hidden,
        decoder_ffn_dim=4 * hidden, max_position_embeddings=max_positions(recipe), dropout=p,
        attention_dropout=p, activation_dropout=0.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        forced_bos_token_id=None)
    return AutoModelForSeq2SeqLM.from_config(config, attn_implementation="eager")


def cnn_widths(recipe: Recipe) -> list[int]:
    """Stem width then one width per block, doubling up to model.hidden_size (default 16, 32, 64)."""
    hidden, blocks, _ = dims(recipe, "cnn-small")
    return [max(8, hidden >> (blocks - i)) for i in range(blocks + 1)]


def cnn_small(recipe: Recipe, in_channels: int, image_size: list[int], labels: list[str]):
    """EdgeCNNForImageClassification sized for ``image_size`` (H, W)."""
    from toolkit.models.cnn import EdgeCNNConfig, EdgeCNNForImageClassification, default_strides

    widths = cnn_widths(recipe)
    config = EdgeCNNConfig(
        in_channels=in_channels, widths=widths, strides=default_strides(min(image_size), len(widths)),
        image_size=list(image_size), dropout=recipe.train.dropout, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    return EdgeCNNForImageClassification(config)
