"""BentoML services. In a built Bento, `semflow` sits in src/semflow beside this package
rather than being installed, so it is put on the path here (a no-op in the repo)."""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if (_SRC / "semflow").is_dir() and str(_SRC) not in sys.path:
    sys.path.append(str(_SRC))
