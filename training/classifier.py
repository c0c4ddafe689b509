"""DVC stage `classifier`: see `semflow.training.stages.classifier`."""

from __future__ import annotations

import sys

from semflow.training import stage_main


def main() -> int:
    return stage_main("classifier")


if __name__ == "__main__":
    sys.exit(main())
