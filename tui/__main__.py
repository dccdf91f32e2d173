"""``python -m tui [RUN_DIR]``: the same as ``python -m toolkit tui [RUN_DIR]``."""
from __future__ import annotations

import sys

from toolkit.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["tui", *sys.argv[1:]]))
