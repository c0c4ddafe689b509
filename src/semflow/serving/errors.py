"""HTTP status of every error the service can raise, with a sentence for the client."""

from __future__ import annotations

import logging

from semflow.errors import (
    FilterError,
    IndexError_,
    IndexLockedError,
    ModelMismatchError,
    SearchModeError,
    SemflowError,
    SettingsError,
)

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal error; see the server log"


class ApiError(SemflowError):
    """An error with an HTTP status; `str(err)` is what the client reads.

    A subclass names its status in its header, `class NotFound(ApiError, status=404)`;
    one instance may override it with `status=`.
    """

    status = 400

    def __init_subclass__(cls, status: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class Unauthorized(ApiError, status=401): ...


class Forbidden(ApiError, status=403): ...


class NotFound(ApiError, status=404): ...


class Conflict(ApiError, status=409): ...


class TooManyRequests(ApiError, status=429): ...


class PayloadTooLarge(ApiError, status=413): ...


class Unprocessable(ApiError, status=422): ...


class Unavailable(ApiError, status=503): ...


def status_for(err: BaseException) -> int:
    """Map an exception to an HTTP status (500 only for genuine bugs)."""

    if isinstance(err, ApiError):
        return err.status
    if isinstance(err, (ModelMismatchError, SearchModeError)):
        return 409
    if isinstance(err, (FilterError, SettingsError)):
        return 422
    if isinstance(err, (IndexError_, IndexLockedError)):
        return 503
    if isinstance(err, SemflowError):
        return 400
    return 500


def is_bug(status: int) -> bool:
    """Whether an error of this status is a bug (a 5xx other than "unavailable"): its text
    can hold internals, so it is logged whole and never answered."""
    return status >= 500 and status != 503


def error_answer(err: BaseException) -> tuple[int, dict[str, str]]:
    """(status, `{"error": sentence}`) of an error; a bug is logged whole and only a pointer
    to the log is answered."""
    status = status_for(err)
    if is_bug(status):
        log.exception("unexpected error", exc_info=err)
        return status, {"error": INTERNAL_ERROR}
    return status, {"error": str(err)}
