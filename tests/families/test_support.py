"""The README's support matrix is made from support.py (`make readme`), which the family matrix test checks cell by
cell: the README never claims more than the test shows."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import support  # noqa: E402
import zoo  # noqa: E402


def test_every_family_of_the_zoo_has_a_row_and_every_cell():
    assert set(support.SUPPORT) == set(zoo.families())
    for name, cells in support.SUPPORT.items():
        assert set(cells) == set(support.CELLS), name
        assert all(support.status(cells[c]) != "no" for c in ("train", "eval", "report")), name


def test_the_readme_shows_this_matrix():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"
    assert start in readme and end in readme, "README.md has no support matrix; run `make readme`"
    shown = readme.split(start)[1].split(end)[0].strip()
    assert shown == support.markdown(zoo.families()).strip(), "README.md's support matrix is stale; run `make readme`"
