"""DVC stage `embed`: see `semflow.training.stages.embed`."""

from __future__ import annotations

import sys

from semflow.training import stage_main


def main() -> int:
    return stage_main("embed")


if __name__ == "__main__":
    sys.exit(main())
