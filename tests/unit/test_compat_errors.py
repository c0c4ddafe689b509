"""Errors of the OpenAI- and Cohere-compatible routes (semflow.serving.compat): a bug's text
never reaches the client in either peer's shape, and a client error keeps its sentence."""

from __future__ import annotations

import logging

import pytest

from semflow.errors import IndexError_
from semflow.serving.compat import RERANK_PATH, error_response
from semflow.serving.errors import INTERNAL_ERROR, ApiError


class Bug(RuntimeError):
    code = "secret-code"  # attributes a library's exception may carry; never answered
    param = "secret-param"


@pytest.mark.parametrize("path", ["/v1/embeddings", RERANK_PATH])
def test_a_bug_is_answered_with_a_pointer_to_the_log_only(path, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        status, body = error_response(path, Bug("password=hunter2 in /srv/secret.conf"))
    assert status == 500
    assert "hunter2" not in str(body) and "secret" not in str(body)
    if path == RERANK_PATH:
        assert body == {"message": INTERNAL_ERROR}
    else:
        assert body["error"]["message"] == INTERNAL_ERROR
        assert body["error"]["type"] == "server_error"
    assert "hunter2" in caplog.text  # the whole error is in the server's log


def test_client_and_unavailable_errors_keep_their_sentence() -> None:
    status, body = error_response("/v1/embeddings", ApiError("input must not be empty", 422))
    assert status == 422 and body["error"]["message"] == "input must not be empty"
    status, body = error_response("/v1/embeddings", IndexError_("the index is being rebuilt"))
    assert status == 503 and body["error"]["message"] == "the index is being rebuilt"
