"""A local fake of the Anthropic Messages API, for tests that drive the real SDK over real HTTP.

Standard library only (http.server + threading). The server listens on 127.0.0.1 on a free port
and serves a script of replies, one per ``POST /v1/messages``, in order::

    with FakeAnthropic([
        HttpError(529, "overloaded_error", "Overloaded", retry_after=0.01),
        Stream([Thinking("hmm"), Text("hi"), ToolUse("read", {"path": "a"})], stop_reason="tool_use"),
    ]) as fake:
        client = anthropic.Anthropic(api_key="fake-test-key", base_url=fake.base_url, max_retries=2)
        ...
        assert len(fake.requests) == 2

Wire format, matched to the installed SDK (anthropic 2.x, on httpx2):

* streamed replies are ``text/event-stream`` over chunked HTTP/1.1; every event carries both an
  ``event: <type>`` line and a ``data: <json>`` line (the SDK drops events that lack ``event:``);
* errors are ``{"type": "error", "error": {"type": ..., "message": ...}}`` with the status code,
  plus a ``retry-after`` header when asked for (the SDK honours it, floats included);
* a mid-stream error is ``event: error`` with that same body, after which the stream ends.

Every request (messages, count_tokens, and anything unknown) is recorded in ``fake.requests`` as
``{"method", "path", "headers" (lower-case keys), "body" (parsed JSON, or the raw text)}``.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Union

__all__ = [
    "FakeAnthropic",
    "Stream",
    "Usage",
    "Thinking",
    "Text",
    "ToolUse",
    "HttpError",
    "Hang",
    "OVERLOADED_EVENT",
]

# The body of the `event: error` sent by Stream(error_after=N).
OVERLOADED_EVENT = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


# ----------------------------------------------------------------------------------------------
# Script: blocks and replies
# ----------------------------------------------------------------------------------------------


def _chunks(s: str, n: int = 3) -> list[str]:
    """Split `s` into at most `n` non-empty, roughly equal pieces (one empty piece for "")."""
    if not s:
        return [""]
    size = max(1, -(-len(s) // n))
    return [s[i : i + size] for i in range(0, len(s), size)]


@dataclass
class Usage:
    input_tokens: int = 10
    output_tokens: int = 5
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclass
class Thinking:
    """A thinking block: `thinking_delta` chunks, then one `signature_delta`."""

    text: str
    signature: str = "sig"

    def start(self) -> dict:
        return {"type": "thinking", "thinking": "", "signature": ""}

    def deltas(self) -> list[dict]:
        out: list[dict] = [{"type": "thinking_delta", "thinking": c} for c in _chunks(self.text)]
        out.append({"type": "signature_delta", "signature": self.signature})
        return out

    def full(self) -> dict:
        return {"type": "thinking", "thinking": self.text, "signature": self.signature}


@dataclass
class Text:
    """A text block, streamed as a few `text_delta` chunks."""

    text: str

    def start(self) -> dict:
        return {"type": "text", "text": ""}

    def deltas(self) -> list[dict]:
        return [{"type": "text_delta", "text": c} for c in _chunks(self.text)]

    def full(self) -> dict:
        return {"type": "text", "text": self.text}


@dataclass
class ToolUse:
    """A tool_use block; `input` is streamed as `input_json_delta` pieces of json.dumps(input).

    `id` defaults to a fresh "toolu_..." id, fixed at construction so a test can read it.
    """

    name: str
    input: dict
    id: Optional[str] = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = "toolu_fake" + uuid.uuid4().hex[:20]

    def start(self) -> dict:
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": {}}

    def deltas(self) -> list[dict]:
        return [{"type": "input_json_delta", "partial_json": c} for c in _chunks(json.dumps(self.input))]

    def full(self) -> dict:
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.input}


Block = Union[Thinking, Text, ToolUse]


@dataclass
class Stream:
    """A successful reply: SSE when the request has "stream": true, else the equivalent Message JSON.

    error_after=N: after N SSE events, send `event: error` (overloaded_error) and end the stream.
      For a non-streaming request it is served as an HTTP 529 overloaded_error instead.
    delay: seconds to wait before the response headers; chunk_delay: seconds between SSE events.
    """

    blocks: list = field(default_factory=list)
    stop_reason: str = "end_turn"
    usage: Usage = field(default_factory=Usage)
    error_after: Optional[int] = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    model: Optional[str] = None  # default: the request's "model"


@dataclass
class HttpError:
    """An HTTP error reply, e.g. 529 overloaded_error, 429 rate_limit_error, 500 api_error."""

    status: int
    error_type: str
    message: str
    retry_after: Optional[float] = None


@dataclass
class Hang:
    """Read the request, send nothing for `seconds` (or until the fake stops), then close."""

    seconds: float


Reply = Union[Stream, HttpError, Hang, Thinking, Text, ToolUse]  # a bare block means Stream([block])


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _start_usage(u: Usage) -> dict:
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": min(1, u.output_tokens),
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
    }


def stream_events(reply: Stream, msg_id: str, model: str) -> list[dict]:
    """The SSE events of `reply`, in order (without any error)."""
    events: list[dict] = [
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _start_usage(reply.usage),
            },
        }
    ]
    for i, block in enumerate(reply.blocks):
        events.append({"type": "content_block_start", "index": i, "content_block": block.start()})
        for d in block.deltas():
            events.append({"type": "content_block_delta", "index": i, "delta": d})
        events.append({"type": "content_block_stop", "index": i})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": reply.usage.output_tokens},
        }
    )
    events.append({"type": "message_stop"})
    return events


def full_message(reply: Stream, msg_id: str, model: str) -> dict:
    u = reply.usage
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [b.full() for b in reply.blocks],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cache_creation_input_tokens": u.cache_creation_input_tokens,
            "cache_read_input_tokens": u.cache_read_input_tokens,
        },
    }


def error_body(error_type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": error_type, "message": message}}


# ----------------------------------------------------------------------------------------------
# Server
# ----------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeAnthropic"

    def handle_error(self, request, client_address) -> None:
        # A client hanging up is not news; anything else is kept for the test to inspect.
        import sys
        import traceback

        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError):
            self.fake.server_errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------------------

    def _read_body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _send_json(self, status: int, obj: Any, headers: Optional[dict] = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", self._request_id)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error(self, reply: HttpError) -> None:
        headers = {}
        if reply.retry_after is not None:
            headers["retry-after"] = repr(float(reply.retry_after))
        self._send_json(reply.status, error_body(reply.error_type, reply.message), headers)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # -- routes ---------------------------------------------------------------------------------

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        n = fake._record(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self._request_id = f"req_fake_{n:04d}"
        try:
            if method == "POST" and path == "/v1/messages":
                self._messages(fake, body if isinstance(body, dict) else {}, n)
            elif method == "POST" and path == "/v1/messages/count_tokens":
                self._send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            else:
                self._send_json(404, error_body("not_found_error", f"fake: no route {method} {path}"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _messages(self, fake: "FakeAnthropic", body: dict, n: int) -> None:
        reply = fake._next_reply()
        if isinstance(reply, (Thinking, Text, ToolUse)):
            reply = Stream([reply])
        if reply is None:
            self._send_error(HttpError(500, "api_error", "fake: no scripted reply left"))
        elif isinstance(reply, HttpError):
            self._send_error(reply)
        elif isinstance(reply, Hang):
            fake._stopping.wait(reply.seconds)
            self.close_connection = True  # close without a response
        elif isinstance(reply, Stream):
            if reply.delay:
                fake._stopping.wait(reply.delay)
            msg_id = f"msg_fake{n:04d}"
            model = reply.model or str(body.get("model", "claude-fake"))
            if body.get("stream"):
                self._stream(fake, reply, msg_id, model)
            elif reply.error_after is not None:
                self._send_error(HttpError(529, "overloaded_error", "Overloaded"))
            else:
                self._send_json(200, full_message(reply, msg_id, model))
        else:
            raise TypeError(f"fake: not a reply: {reply!r}")

    def _stream(self, fake: "FakeAnthropic", reply: Stream, msg_id: str, model: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", self._request_id)
        if reply.error_after is not None:
            self.send_header("connection", "close")
        self.end_headers()
        events = stream_events(reply, msg_id, model)
        if reply.error_after is not None:
            events = events[: reply.error_after] + [OVERLOADED_EVENT]
        for i, ev in enumerate(events):
            if i and reply.chunk_delay:
                if fake._stopping.wait(reply.chunk_delay):
                    break
            self._chunk(_sse(ev))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        if reply.error_after is not None:
            self.close_connection = True


class FakeAnthropic:
    """The fake server. Use as a context manager, or call start()/stop()."""

    def __init__(self, script: Optional[list] = None):
        self._script: list = list(script or [])
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.requests: list[dict] = []
        self.server_errors: list[str] = []  # tracebacks of unexpected exceptions in the handler
        self.base_url: str = ""

    # -- script ---------------------------------------------------------------------------------

    def add(self, *replies) -> "FakeAnthropic":
        with self._lock:
            self._script.extend(replies)
        return self

    @property
    def remaining(self) -> int:
        """How many scripted replies are still unserved."""
        with self._lock:
            return len(self._script)

    def _next_reply(self):
        with self._lock:
            return self._script.pop(0) if self._script else None

    def _record(self, method: str, path: str, headers: dict, body: Any) -> int:
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            return len(self.requests)

    @property
    def message_requests(self) -> list[dict]:
        """Only the POST /v1/messages requests."""
        return [r for r in self.requests if r["path"].split("?", 1)[0] == "/v1/messages"]

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "FakeAnthropic":
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes Hang / delays so handler threads finish promptly
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeAnthropic":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
