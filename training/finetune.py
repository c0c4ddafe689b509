"""DVC stage `finetune`: see `semflow.training.stages.finetune`."""

from __future__ import annotations

import sys

from semflow.training import stage_main


def main() -> int:
    return stage_main("finetune")


if __name__ == "__main__":
    sys.exit(main())
