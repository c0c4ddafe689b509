"""DVC stage `validate`: see `semflow.training.stages.validate`."""

from __future__ import annotations

import sys

from semflow.training import stage_main


def main() -> int:
    return stage_main("validate")


if __name__ == "__main__":
    sys.exit(main())
