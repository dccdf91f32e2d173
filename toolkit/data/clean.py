"""Text cleaning steps (``data.clean``), applied in the order the recipe gives, to text fields only.

- ``html``: strip tags (the text of <script>/<style> goes too) and unescape entities, with the stdlib parser;
  block tags (<p>, <br>, <li>, …) leave a space so that words on both sides stay apart.
- ``control``: remove control characters (Unicode Cc) except newline and tab, plus the invisible BOM and
  zero-width space; other format characters (joiners used by emoji and Persian) are kept.
- ``whitespace``: collapse runs of any Unicode whitespace to one space and strip the ends.
- ``lower``: lower-case.
- ``punct``: remove punctuation (every Unicode category P*, so « » ¿ 、 go too); symbols such as $ + < > stay,
  which keeps the ``pii`` placeholders intact. Nothing is put in its place: "don't" becomes "dont".
- ``dedup``: drop examples whose text fields equal an earlier example's (the first is kept).
- ``pii``: replace URLs with <URL>, e-mail addresses with <EMAIL>, IPv6/IPv4 addresses with <IP> and phone
  numbers with <PHONE>, in that order (a URL may hold an address; an IPv6 address may end in an IPv4 one).
  Phone numbers are matched conservatively (an international +prefix, a (area) code, the 3-3-4 North American
  form, or a national number starting with 0), so dates, years and amounts are left alone.

Examples whose text becomes empty are dropped; every drop is counted in the notes.
"""
from __future__ import annotations

import functools
import re
import sys
import unicodedata
from html import unescape
from html.parser import HTMLParser
from typing import Callable

from toolkit.data.types import Example

TEXT_FIELDS = ("text", "source", "target")

# ---- html --------------------------------------------------------------------------------------------------

_BLOCK_TAGS = {"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "footer", "h1", "h2",
               "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section", "table", "td", "th",
               "tr", "ul"}


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities in the text are unescaped as it is read
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Text without HTML tags, with entities unescaped ("a<br>b &amp; c" -> "a b & c")."""
    if "<" not in text:
        return unescape(text) if "&" in text else text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


# ---- control, whitespace, punct ----------------------------------------------------------------------------

_INVISIBLE = {"\ufeff", "\u200b"}


def strip_control(text: str) -> str:
    """Text without control characters, keeping newline and tab."""
    return "".join(c for c in text if c in "\n\t" or not (unicodedata.category(c) == "Cc" or c in _INVISIBLE))


def collapse_whitespace(text: str) -> str:
    """Runs of whitespace (any Unicode space, newlines, tabs) as one space, ends stripped."""
    return " ".join(text.split())


@functools.cache
def _punct_table() -> dict[int, None]:
    # Built once (about 0.3 s): str.translate with it is far faster than a category lookup per character.
    return {i: None for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")}


def strip_punct(text: str) -> str:
    """Text without punctuation (Unicode categories P*)."""
    return text.translate(_punct_table())


# ---- pii ---------------------------------------------------------------------------------------------------

_URL = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"]+", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.%+-]+@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,}(?![\w-])")
_H = r"[0-9A-Fa-f]{1,4}"
_V4 = r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_V4}(?!\w|\.\d)")
# The forms of RFC 4291 section 2.2, longest first; a "::" or all eight groups is required, so times (10:30) and
# C++ names (std::vector) do not match.
_IPV6 = re.compile(
    r"(?<![\w:.])(?:"
    rf"(?:{_H}:){{6}}{_V4}|::(?:ffff(?::0{{1,4}})?:)?{_V4}|(?:{_H}:){{1,4}}:{_V4}|"
    rf"(?:{_H}:){{7}}{_H}|"
    rf"(?:{_H}:){{1,6}}:{_H}|"
    rf"(?:{_H}:){{1,5}}(?::{_H}){{2}}|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}|"
    rf"(?:{_H}:){{1,2}}(?::{_H}){{1,5}}|{_H}:(?::{_H}){{1,6}}|:(?::{_H}){{1,7}}|"
    rf"(?:{_H}:){{1,7}}:"
    r")(?:%[0-9A-Za-z]+)?(?![\w:])"
)
_SEP = r"[ .\-]"
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    rf"\+\d{{1,3}}(?:{_SEP}?\(\d{{1,4}}\))?(?:{_SEP}?\d{{1,5}}){{1,5}}"  # +1 415-555-0100, +44 (20) 7946 0958
    rf"|\(\d{{2,5}}\){_SEP}?\d{{3,4}}{_SEP}?\d{{3,4}}"  # (415) 555-0100, (020) 7946 0958
    rf"|\d{{3}}{_SEP}\d{{3}}{_SEP}\d{{4}}"  # 415-555-0100, 415.555.0100
    rf"|0\d{{1,4}}{_SEP}\d{{3,4}}(?:{_SEP}?\d{{3,4}})?"  # 020 7946 0958, 030 1234567
    r")(?![\w])"
)
_URL_TAIL = ".,;:!?'\")]}"


def _url(match: re.Match) -> str:
    url = match.group(0)
    # Sentence punctuation after a URL is not part of it; a ')' is, when the URL opened one (Wikipedia links).
    tail = ""
    while url and url[-1] in _URL_TAIL and not (url[-1] == ")" and url.count("(") >= url.count(")")):
        tail = url[-1] + tail
        url = url[:-1]
    return "<URL>" + tail


def _phone(match: re.Match) -> str:
    digits = sum(c.isdigit() for c in match.group(0))
    return "<PHONE>" if 7 <= digits <= 15 else match.group(0)  # E.164 allows at most 15 digits


def mask_pii(text: str) -> str:
    """Text with URLs, e-mail and IP addresses and phone numbers replaced by <URL>, <EMAIL>, <IP>, <PHONE>."""
    text = _URL.sub(_url, text)
    text = _EMAIL.sub("<EMAIL>", text)
    text = _IPV6.sub("<IP>", text)
    text = _IPV4.sub("<IP>", text)
    return _PHONE.sub(_phone, text)


# ---- applying the steps ------------------------------------------------------------------------------------

STEPS: dict[str, Callable[[str], str]] = {
    "html": strip_html, "control": strip_control, "whitespace": collapse_whitespace, "lower": str.lower,
    "punct": strip_punct, "pii": mask_pii,
}


def clean_examples(examples: list[Example], steps: list[str]) -> tuple[list[int], list[Example], dict[str, int]]:
    """Apply ``steps`` in order to the text fields of ``examples``.

    Returns:
        the indices (into ``examples``) of the kept examples, the cleaned kept examples (new dicts; the input is
        not changed), and how many were dropped by each reason ("dedup", "empty").
    """
    kept = list(range(len(examples)))
    out = [dict(e) for e in examples]
    dropped = {"dedup": 0, "empty": 0}
    fields = [f for f in TEXT_FIELDS if examples and f in examples[0]]
    for step in steps:
        if step == "dedup":
            seen: set[tuple[str, ...]] = set()
            keep = []
            for i, e in enumerate(out):
                key = tuple(e[f] for f in fields)
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
            dropped["dedup"] += len(out) - len(keep)
            kept, out = [kept[i] for i in keep], [out[i] for i in keep]
            continue
        fn = STEPS[step]
        for e in out:
            for f in fields:
                e[f] = fn(e[f])
    keep = [i for i, e in enumerate(out) if all(e[f].strip() for f in fields)]
    dropped["empty"] = len(out) - len(keep)
    return [kept[i] for i in keep], [out[i] for i in keep], dropped


def clean_text(text: str, steps: list[str]) -> str:
    """One raw input cleaned as training data was (``dedup`` compares examples, so it does not apply here)."""
    for step in steps:
        if step in STEPS:
            text = STEPS[step](text)
    return text
