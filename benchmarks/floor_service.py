"""The HTTP floor for `benchmarks/serve.py`: one trivial BentoML API behind the same guard
middleware and traffic settings as the semflow service, and no model.

What a request costs here (HTTP, the API-key check, BentoML's dispatch) is the least any
semflow endpoint can cost, so it stays out of the production service.
"""

from __future__ import annotations

import bentoml

from semflow.config import get_settings
from semflow.serving.http import GuardMiddleware

_S = get_settings()


@bentoml.service(
    name="semflow-floor",
    workers=1,
    threads=4,
    traffic={"timeout": _S.request_timeout_s, "max_concurrency": _S.max_concurrency},
)
class Floor:
    @bentoml.api
    def echo(self, text: str) -> str:
        """Return the text unchanged."""
        return text


Floor.add_asgi_middleware(GuardMiddleware)
