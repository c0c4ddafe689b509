"""DVC stage `ranker`: see `semflow.training.stages.ranker`."""

from __future__ import annotations

import sys

from semflow.training import stage_main


def main() -> int:
    return stage_main("ranker")


if __name__ == "__main__":
    sys.exit(main())
