"""Regenerate the README's recipe reference (from toolkit/config.py) and support matrix (from the family matrix
test's claims, tests/families/support.py). Run: make readme."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from toolkit.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "families"))

import support  # noqa: E402  (the family matrix test's claims)
import zoo  # noqa: E402

readme = ROOT / "README.md"
text = readme.read_text()
for (start, end), body in (
        (("<!-- recipe-reference:start -->", "<!-- recipe-reference:end -->"), reference_markdown()),
        (("<!-- support-matrix:start -->", "<!-- support-matrix:end -->"), support.markdown(zoo.families()))):
    block = f"{start}\n{body.strip()}\n{end}"
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda m, block=block: block, text, flags=re.S)
readme.write_text(text)
