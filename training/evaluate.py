"""DVC stage `evaluate`: see `semflow.training.stages.evaluate`."""

from __future__ import annotations

import sys

from semflow.training import stage_main


def main() -> int:
    return stage_main("evaluate")


if __name__ == "__main__":
    sys.exit(main())
