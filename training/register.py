"""DVC stage `register`: see `semflow.training.stages.register`."""

from __future__ import annotations

import sys

from semflow.training import stage_main


def main() -> int:
    return stage_main("register")


if __name__ == "__main__":
    sys.exit(main())
