"""The semflow Bento. In a built Bento the library lies under `src/` beside this package
(bentofile.yaml includes it rather than installing it), so put it on the path there."""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if (_SRC / "semflow").is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))
