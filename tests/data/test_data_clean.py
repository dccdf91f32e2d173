"""Each cleaning step on hand-checked strings, PII masking on tricky cases, and cleaning inside the stage."""
from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.data import load_splits
from toolkit.data.clean import (clean_examples, collapse_whitespace, mask_pii, strip_control, strip_html,
                                strip_punct)


@pytest.mark.parametrize("raw, clean", [
    ("<b>boring</b> &amp; long", "boring & long"),
    ("<p>Hello</p><p>World</p>", " Hello  World "),  # block tags leave a space: words stay apart
    ("a<br/>b", "a b"),
    ("x<script>alert(1)</script>y<style>p{}</style>", "xy"),
    ("3 < 5 and 6 > 2", "3 < 5 and 6 > 2"),  # not tags
    ("caf&eacute; &#8212; &lt;tag&gt;", "café — <tag>"),
    ("no markup", "no markup"),
])
def test_html(raw, clean):
    assert strip_html(raw) == clean


def test_control_keeps_newline_tab_and_joiners():
    assert strip_control("a\x00b\tc\nd\x7fe\x1b[0m\u200bf\ufeff\r") == "ab\tc\nde[0mf"
    assert strip_control("👩\u200d💻") == "👩\u200d💻"  # the zero-width joiner makes one emoji


def test_whitespace():
    assert collapse_whitespace("  a \t b\n\n c\u00a0 d\u3000e  ") == "a b c d e"


def test_punct_is_unicode_aware_and_keeps_symbols():
    assert strip_punct("«Bonjour», ¿qué? don't — 1,000 $5 <EMAIL> a_b 「日本」。") == "Bonjour qué dont  1000 $5 <EMAIL> ab 日本"


@pytest.mark.parametrize("raw, masked", [
    ("mail a.b@c.org or call +1 415-555-0100 from 10.0.0.1 see https://x.y/z",
     "mail <EMAIL> or call <PHONE> from <IP> see <URL>"),
    # e-mail
    ("first.last+tag@sub.example.co.uk, x@müller.de.", "<EMAIL>, <EMAIL>."),
    ("user@localhost and @handle", "user@localhost and @handle"),
    # URLs: trailing sentence punctuation stays outside; a URL's own parentheses stay inside
    ("(see https://en.wikipedia.org/wiki/Foo_(bar)) and www.example.com.", "(see <URL>) and <URL>."),
    ("http://[2001:db8::1]:8080/x?u=a@b.com", "<URL>"),
    # IPv4: ports and sentence ends; not versions or out-of-range numbers
    ("10.0.0.1:8080 and 192.168.1.255.", "<IP>:8080 and <IP>."),
    ("version 1.2.3 and 300.1.1.1", "version 1.2.3 and 300.1.1.1"),
    # IPv6: compressed, zone, loopback, IPv4-mapped, full; not times or C++ names
    ("2001:db8::1, fe80::1%eth0 ::1 ::ffff:192.0.2.1", "<IP>, <IP> <IP> <IP>"),
    ("2001:0db8:0000:0000:0000:ff00:0042:8329", "<IP>"),
    ("at 10:30 or 12:30:45 use std::vector", "at 10:30 or 12:30:45 use std::vector"),
    # phones in several national forms
    ("(415) 555-0100, 415.555.0100, 415 555 0100", "<PHONE>, <PHONE>, <PHONE>"),
    ("+44 20 7946 0958 or 020 7946 0958 or +49 (30) 123456", "<PHONE> or <PHONE> or <PHONE>"),
    # numbers that are not phones
    ("on 2024-01-15 in 1990 2000 2010 for 1,000,000 ISBN 978-3-16-148410-0 pi 3.14159 code 12345",
     "on 2024-01-15 in 1990 2000 2010 for 1,000,000 ISBN 978-3-16-148410-0 pi 3.14159 code 12345"),
])
def test_pii(raw, masked):
    assert mask_pii(raw) == masked


def test_steps_run_in_order_and_dedup_keeps_the_first():
    examples = [{"text": "Hello,  World!", "label": "a"}, {"text": "hello world", "label": "b"},
                {"text": "<i></i>", "label": "a"}, {"text": "other", "label": "b"}]
    kept, out, dropped = clean_examples(examples, ["html", "punct", "whitespace", "lower", "dedup"])
    assert kept == [0, 3]
    assert out == [{"text": "hello world", "label": "a"}, {"text": "other", "label": "b"}]
    assert dropped == {"dedup": 1, "empty": 1}
    assert examples[0]["text"] == "Hello,  World!"  # the input is not changed
    # dedup before lower: the two differ, so both stay
    assert clean_examples(examples[:2], ["dedup", "lower"])[0] == [0, 1]


def test_dedup_compares_all_text_fields_of_seq2seq():
    examples = [{"source": "a", "target": "x"}, {"source": "a", "target": "y"}, {"source": "a", "target": "x"}]
    assert clean_examples(examples, ["dedup"])[0] == [0, 1]


def test_labels_are_not_cleaned(make_recipe, tmp_path: Path):
    (tmp_path / "t.csv").write_text("text,label\nGood!,POS\ngood,POS\n<br>,NEG\nBad.,NEG\n", encoding="utf-8")
    path = tmp_path / "t.csv"
    s = load_splits(make_recipe(train=path, validation=path, eval=path, clean=["html", "lower", "punct", "dedup"]))
    assert s.train == [{"text": "good", "label": "POS"}, {"text": "bad", "label": "NEG"}]
    assert f"{path}: dedup dropped 1 duplicate train examples (the first of each kept)" in s.notes
    assert f"{path}: cleaning (html, lower, punct, dedup) left 1 train examples empty; dropped" in s.notes


def test_lines_survive_cleaning_for_error_messages(make_recipe, tmp_path: Path):
    """After rows are dropped, an unknown label still points at its own line."""
    from toolkit.errors import UserError

    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    (tmp_path / "eval.csv").write_text("text,label\na,x\na,x\n<p></p>,x\nc,z\n", encoding="utf-8")
    recipe = make_recipe(train=tmp_path / "train.csv", eval=tmp_path / "eval.csv", clean=["html", "dedup"])
    with pytest.raises(UserError, match=r"unknown label 'z' in eval data \(line 5\)"):
        load_splits(recipe)
