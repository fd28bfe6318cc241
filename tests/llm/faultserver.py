"""A fault-injecting HTTP server that speaks just enough of OpenAI's ``POST
/v1/chat/completions`` and Anthropic's ``POST /v1/messages`` for the real SDKs to talk to it.

Each test queues scripted answers (:class:`Reply`: a status, a JSON body, headers, a delay, or
a cut connection) and reads back every request that reached the server (:class:`Received`),
so it can assert what the SDK sent and that it sent exactly one request per adapter call.

Use it as a context manager (``with FaultServer() as server: ...``) or through the
``fault_server`` fixture of ``tests/llm/test_adapters_http.py``; either way it always shuts
down, delayed answers included (their waits end at once).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

#: The paths the server answers on (anything else gets a 404 that names the path).
PATHS = ("/v1/chat/completions", "/v1/messages")


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    Attributes:
        status: the HTTP status.
        body: the JSON body (dict) or raw bytes.
        headers: extra response headers.
        delay_s: seconds to wait before answering (or before cutting).
        cut: close the connection without answering at all.
    """

    status: int = 200
    body: dict[str, Any] | bytes = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    cut: bool = False


@dataclass(frozen=True)
class Received:
    """One request that reached the server."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, owner: FaultServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("content-length") or 0)
        data = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(data) if data else None
        except ValueError:
            body = data
        owner._record(
            Received(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                at=time.monotonic(),
            )
        )
        path = self.path.split("?", 1)[0]
        if path not in PATHS:
            reply = Reply(404, {"error": {"message": f"faultserver: no route {path}"}})
        else:
            reply = owner._next()
        if reply.delay_s and owner._stopping.wait(reply.delay_s):
            self._cut()
            return
        if reply.cut:
            self._cut()
            return
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client gave up (a timeout): nothing to answer
            self.close_connection = True

    def _cut(self) -> None:
        """Close the connection at once, before any status line (linger 0: a reset)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.connection.close()


class FaultServer:
    """The server on ``127.0.0.1`` at a free port, in a thread.

    Attributes:
        port: where it listens.
        requests: every request received, in order.
    """

    #: What an unscripted request gets: loud, so a test that forgot a reply fails clearly.
    UNSCRIPTED = Reply(599, {"error": {"message": "faultserver: no scripted reply left"}})

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self._requests: list[Received] = []
        self._stopping = threading.Event()
        self._server = _Server(self)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def queue(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        with self._lock:
            self._replies.extend(replies)

    def reply(
        self,
        status: int = 200,
        body: dict[str, Any] | bytes | None = None,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Queue one answer."""
        self.queue(Reply(status, body if body is not None else {}, headers or {}, delay_s))

    def cut(self, delay_s: float = 0.0) -> None:
        """Queue a connection closed without an answer."""
        self.queue(Reply(cut=True, delay_s=delay_s))

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """Scripted replies not used yet."""
        with self._lock:
            return len(self._replies)

    def _record(self, request: Received) -> None:
        with self._lock:
            self._requests.append(request)

    def _next(self) -> Reply:
        with self._lock:
            return self._replies.popleft() if self._replies else self.UNSCRIPTED

    def close(self) -> None:
        """Stop serving; delayed answers stop waiting. Idempotent."""
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- provider-shaped bodies -------------------------------------------------------------------


def openai_completion(
    text: str | None = "hello",
    *,
    finish_reason: str = "stop",
    model: str = "gpt-test-2024",
    usage: dict[str, Any] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    id: str = "chatcmpl-123",
) -> dict[str, Any]:
    """A chat completion as OpenAI returns it."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": id,
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "system_fingerprint": "fp_test",
    }


def anthropic_message(
    content: list[dict[str, Any]] | None = None,
    *,
    stop_reason: str = "end_turn",
    model: str = "claude-x-20250101",
    usage: dict[str, Any] | None = None,
    id: str = "msg_123",
) -> dict[str, Any]:
    """A message as Anthropic returns it."""
    return {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content if content is not None else [{"type": "text", "text": "hello"}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 12, "output_tokens": 3},
    }


def openai_error(
    message: str, *, code: str | None = None, type: str = "invalid_request_error"
) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


def anthropic_error(message: str, *, type: str = "invalid_request_error") -> dict[str, Any]:
    """Anthropic's error body."""
    return {"type": "error", "error": {"type": type, "message": message}}
