"""Jobs across a Bento's worker processes.

A job lives in the memory of the worker that runs it (its result is never written anywhere),
and its id starts with that worker's tag. A status, get or cancel that reaches another worker
(BentoML's workers share one socket, so any call can land on any of them) is relayed to the
owner over a Unix socket in a private directory, and the owner's answer comes back unchanged:
a client may poll a job from any connection. A job whose worker has stopped is gone (404),
as after a restart.

Frames are length-prefixed bytes: the request is JSON, the answer a 2-byte HTTP status and
the owner's JSON body. Nothing is unpickled; the directory is the service user's alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from semflow.errors import SettingsError
from semflow.serving.errors import ApiError, NotFound

log = logging.getLogger(__name__)

_LEN = struct.Struct("!Q")
_STATUS = struct.Struct("!H")
_TAG = re.compile(r"^[0-9a-f]{8}$")
MAX_REQUEST_BYTES = 64 * 1024  # a request names a job; anything longer is not one of ours
MAX_ID_CHARS = 64  # a job id is a tag, a dash and 32 hex digits

# What the owner runs for a relayed call: (kind, action, task_id, owner) -> (status, body).
Handler = Callable[[str, str, str, str], tuple[int, bytes]]


def private_dir(path: Path) -> Path:
    """`path`, created 0700, refused unless this user owns it and no one else may enter it
    (another user's directory in a shared /tmp must never receive our sockets)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise SettingsError(
            f"the job relay directory {path} must belong to this user with mode 0700 "
            f"(it has owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})"
        )
    return path


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        buf += chunk
    return bytes(buf)


def _send_frame(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(_LEN.pack(len(payload)) + payload)


def _recv_frame(conn: socket.socket, limit: int | None = None) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(conn, _LEN.size))
    if limit is not None and n > limit:
        raise ConnectionError(f"a relay frame of {n} bytes is over the {limit}-byte limit")
    return _recv_exact(conn, n)


class JobRelay:
    """This worker's end of the relay: it answers other workers' calls for its own jobs
    (`handler`) and relays calls for theirs (`ask`)."""

    def __init__(self, directory: Path, handler: Handler, timeout_s: float) -> None:
        self.directory = private_dir(directory)
        self.tag = secrets.token_hex(4)
        self.id_prefix = f"{self.tag}-"  # what this worker's job ids start with
        self.timeout_s = timeout_s
        self._handler = handler
        self.path = self.directory / f"{self.tag}.sock"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(64)
        threading.Thread(target=self._serve, name="semflow-job-relay", daemon=True).start()

    def owns(self, task_id: str) -> bool:
        return task_id.startswith(self.id_prefix)

    # -- the owner's side ------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.timeout_s)
            try:
                req = orjson.loads(_recv_frame(conn, MAX_REQUEST_BYTES))
                args = (req["kind"], req["action"], req["task_id"], req["owner"])
                if not all(isinstance(a, str) for a in args):
                    raise ValueError("relay request fields must be strings")
                status, body = self._handler(*args)
                _send_frame(conn, _STATUS.pack(status) + body)
            except Exception as err:  # a broken peer must not take the relay down
                log.warning("job relay: dropped a call (%s)", err)

    # -- the asking side -------------------------------------------------------------
    def ask(self, kind: str, action: str, task_id: str, owner: str) -> bytes:
        """The owner worker's JSON answer for `task_id`; its error as an ApiError; 404 when
        the id names no worker that is running."""
        tag = task_id.split("-", 1)[0]
        missing = NotFound(f"no {kind} task {task_id!r}")
        if len(task_id) > MAX_ID_CHARS or not _TAG.match(tag) or tag == self.tag:
            raise missing
        req = orjson.dumps({"kind": kind, "action": action, "task_id": task_id, "owner": owner})
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(self.timeout_s)
                conn.connect(str(self.directory / f"{tag}.sock"))
                _send_frame(conn, req)
                answer = _recv_frame(conn)
        except (FileNotFoundError, ConnectionRefusedError):
            raise missing from None  # that worker stopped: its jobs went with it
        except OSError as err:  # includes a timeout and a dropped connection
            raise ApiError(
                f"the worker holding task {task_id!r} did not answer ({err})", 503
            ) from err
        (status,) = _STATUS.unpack(answer[: _STATUS.size])
        body = answer[_STATUS.size :]
        if status >= 400:
            raise ApiError(_error_sentence(body), status)
        return body

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept loop (close alone may not)
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self.path.unlink(missing_ok=True)


def _error_sentence(body: bytes) -> str:
    try:
        data: Any = orjson.loads(body)
        return str(data["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "the worker holding the task failed; see the server log"
