"""semflow: sync application text into a vector index, train, register and serve models."""

from __future__ import annotations

__version__ = "0.1.0"
