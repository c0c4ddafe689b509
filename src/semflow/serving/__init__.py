"""Serving logic behind the semflow Bento: request models, auth, index watching, the engine.

Nothing here imports bentoml: `bentos/service.py` only wires these pieces to HTTP.
"""

from __future__ import annotations

from semflow.serving.engine import Engine
from semflow.serving.errors import ApiError, error_answer, status_for

__all__ = ["ApiError", "Engine", "error_answer", "status_for"]
