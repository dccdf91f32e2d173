"""Tokenizers for the built-in text models, trained on the training split with the ``tokenizers`` library.

Three kinds: ``bert`` (WordPiece with BERT normalisation, [CLS] x [SEP]), ``gpt2`` (byte-level BPE,
<|endoftext|> as bos/eos/pad) and ``bart`` (byte-level BPE, <s> x </s>). Training is deterministic: the same
texts, kind and vocabulary size give byte-identical ``tokenizer.json`` in any process, so a resumed run
rebuilds (or reuses from the cache) exactly the tokenizer its checkpoint was trained with.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from toolkit.errors import UserError

KINDS = ("bert", "gpt2", "bart")
# Bump when training changes in a way that changes the files, so old caches are not reused.
TOKENIZER_VERSION = 1

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT2_SPECIALS = ["<|endoftext|>"]
# The order gives BART's usual ids: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4.
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# WordPiece keeps these even when the training text lacks them, so common ASCII never becomes [UNK].
_BASE_ALPHABET = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))


def texts_fingerprint(texts: Iterable[str]) -> str:
    """sha256 of the texts, in order (what the tokenizer is trained on)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def cache_key(fingerprint: str, kind: str, vocab_size: int) -> str:
    blob = json.dumps({"texts": fingerprint, "kind": kind, "vocab_size": vocab_size,
                       "version": TOKENIZER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _is_punct(c: str) -> bool:
    import unicodedata

    return c in string.punctuation or unicodedata.category(c).startswith("P")


def _train_wordpiece(texts: Sequence[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    # The WordPiece trainer gives the '##c' continuation pieces ids in hash-map order (random per
    # process), and merge ties are broken by id: listing every '##c' up front, sorted, fixes their ids
    # and makes training reproducible. They are plain vocabulary entries in the tokenizer built below.
    chars = set(_BASE_ALPHABET)
    for t in texts:
        chars.update(c for c in normalizer.normalize_str(t) if not c.isspace())
    # BERT's pre-tokenizer isolates punctuation, so it never continues a word.
    continuation = ["##" + c for c in sorted(chars) if not _is_punct(c)]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS + continuation,
                                        initial_alphabet=_BASE_ALPHABET, show_progress=False)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    vocab = tok.get_vocab(with_added_tokens=False)

    out = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    out.normalizer = normalizer
    out.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    out.add_special_tokens(BERT_SPECIALS)
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    out.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    out.decoder = decoders.WordPiece(prefix="##")
    return out


def _train_byte_bpe(texts: Sequence[str], vocab_size: int, specials: list[str], template: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer, length=len(texts))
    if template:  # BART: <s> x </s>
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", bos), ("</s>", eos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(texts: Sequence[str], kind: str, vocab_size: int):
    """Train a tokenizer of ``kind`` (bert | gpt2 | bart) on ``texts``.

    Returns:
        a ``transformers.PreTrainedTokenizerFast`` with the kind's special tokens set.
    Raises:
        UserError: no text to train on.
    """
    from transformers import PreTrainedTokenizerFast

    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
    texts = [t for t in texts if t and not t.isspace()]
    if not texts:
        raise UserError("the training split has no text to train a tokenizer on: check data.train and data.text_column")
    if kind == "bert":
        return PreTrainedTokenizerFast(
            tokenizer_object=_train_wordpiece(texts, vocab_size), unk_token="[UNK]", sep_token="[SEP]",
            pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
            model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    if kind == "gpt2":
        eos = GPT2_SPECIALS[0]
        return PreTrainedTokenizerFast(
            tokenizer_object=_train_byte_bpe(texts, vocab_size, GPT2_SPECIALS, template=False),
            bos_token=eos, eos_token=eos, pad_token=eos, unk_token=eos,
            model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_byte_bpe(texts, vocab_size, BART_SPECIALS, template=True),
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
        pad_token="<pad>", mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False)


def cached_tokenizer(texts: Sequence[str], kind: str, vocab_size: int, cache_root: Path):
    """The tokenizer for these texts, from ``cache_root/<kind>-<key>/`` or trained and saved there.

    The key hashes (texts fingerprint, vocabulary size, kind). The tokenizer is always returned as loaded
    from the cache folder, so a first run and a resumed run see the same object.

    Returns:
        (tokenizer, its folder)
    """
    from transformers import PreTrainedTokenizerFast

    folder = Path(cache_root) / f"{kind}-{cache_key(texts_fingerprint(texts), kind, vocab_size)}"
    if not (folder / "tokenizer.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tok = train_tokenizer(texts, kind, vocab_size)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            tok.save_pretrained(tmp)
            try:
                os.rename(tmp, folder)  # atomic; fails if another process (a DDP rank) got there first
            except OSError:
                if not (folder / "tokenizer.json").is_file():
                    shutil.rmtree(folder, ignore_errors=True)  # a broken leftover: replace it
                    os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(folder), folder
