"""DVC stage `snapshot`: see `semflow.training.stages.snapshot`."""

from __future__ import annotations

import sys

from semflow.training import stage_main


def main() -> int:
    return stage_main("snapshot")


if __name__ == "__main__":
    sys.exit(main())
