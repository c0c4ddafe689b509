"""DVC stage `prepare`: see `semflow.training.stages.prepare`."""

from __future__ import annotations

import sys

from semflow.training import stage_main


def main() -> int:
    return stage_main("prepare")


if __name__ == "__main__":
    sys.exit(main())
