"""Tokenizers trained on the training split: deterministic, cached, with the right special tokens."""
from __future__ import annotations

import random

import pytest

from toolkit.errors import UserError
from toolkit.models import cached_tokenizer, texts_fingerprint, train_tokenizer
from toolkit.models import tokenizer as tokmod

WORDS = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega naïve Élan café "
         "tomorrow yesterday running jumped quickly slowly").split()


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) + rng.choice(["", "s", "ed", "ing", ","]) for _ in range(rng.randint(4, 14)))
            for _ in range(n)]


def saved_files(tok, folder) -> dict[str, bytes]:
    tok.save_pretrained(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind", tokmod.KINDS)
def test_training_is_deterministic(kind, tmp_path):
    """Same texts -> byte-identical files. (The stock WordPiece trainer is not: see _train_wordpiece.)"""
    texts = corpus()
    a = saved_files(train_tokenizer(texts, kind, 200), tmp_path / "a")
    b = saved_files(train_tokenizer(texts, kind, 200), tmp_path / "b")
    assert a == b and "tokenizer.json" in a


def test_wordpiece_has_bert_specials_and_template():
    tok = train_tokenizer(corpus(), "bert", 150)
    assert len(tok) == 150
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token) == (
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    enc = tok("Naïve KAPPAs!")["input_ids"]
    assert enc[0] == 2 and enc[-1] == 3
    assert tok.decode(enc, skip_special_tokens=True) == "naive kappas!"  # lower-cased, accents stripped
    assert "[UNK]" not in tok.convert_ids_to_tokens(tok("zq#7")["input_ids"])  # ASCII always has pieces


def test_byte_level_bpe_kinds_have_their_specials():
    gpt2 = train_tokenizer(corpus(), "gpt2", 300)
    assert len(gpt2) == 300
    eos = gpt2.convert_tokens_to_ids("<|endoftext|>")
    assert eos == 0 and gpt2.eos_token_id == gpt2.bos_token_id == gpt2.pad_token_id == eos
    text = "naïve ünïcode ≠ ascii"
    assert gpt2(text)["input_ids"] and gpt2.decode(gpt2(text)["input_ids"]) == text  # byte-level: no unknowns

    bart = train_tokenizer(corpus(), "bart", 300)
    assert bart.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    ids = bart("kappa sigma")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and bart.decode(ids, skip_special_tokens=True) == "kappa sigma"


def test_no_text_is_a_user_error():
    with pytest.raises(UserError, match="no text to train a tokenizer"):
        train_tokenizer(["", "  "], "bert", 100)


def test_cache_is_keyed_by_texts_vocab_and_kind(tmp_path, monkeypatch):
    texts = corpus(100)
    tok, folder = cached_tokenizer(texts, "gpt2", 280, tmp_path)
    assert folder.parent == tmp_path and folder.name.startswith("gpt2-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary folder left behind

    def no_training(*a, **k):
        raise AssertionError("trained again instead of reusing the cache")

    monkeypatch.setattr(tokmod, "train_tokenizer", no_training)
    again, folder2 = cached_tokenizer(texts, "gpt2", 280, tmp_path)  # a resumed run
    assert folder2 == folder and again.get_vocab() == tok.get_vocab()
    monkeypatch.undo()

    others = {cached_tokenizer(texts, "gpt2", 290, tmp_path)[1], cached_tokenizer(texts[:-1], "gpt2", 280, tmp_path)[1],
              cached_tokenizer(texts, "bart", 280, tmp_path)[1]}
    assert folder not in others and len(others) == 3


def test_fingerprint_depends_on_order_and_boundaries():
    assert texts_fingerprint(["ab", "c"]) != texts_fingerprint(["a", "bc"])
    assert texts_fingerprint(["a", "b"]) != texts_fingerprint(["b", "a"])
    assert texts_fingerprint(["a", "b"]) == texts_fingerprint(iter(["a", "b"]))
