"""Regenerate the README's recipe reference from toolkit/config.py (run: make readme)."""
from __future__ import annotations

import re
from pathlib import Path

from toolkit.config import reference_markdown

START, END = "<!-- recipe-reference:start -->", "<!-- recipe-reference:end -->"
readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
block = f"{START}\n{reference_markdown().strip()}\n{END}"
text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: block, text, flags=re.S)
readme.write_text(text)
