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
``{"method", "path", "headers" (lower-case keys), "body" (parsed JSON, or the raw text), "time"
(time.monotonic() on arrival)}``.

Like the real API, the fake rejects what the real API rejects (``validate=True``, the default),
with the real status, error type and message (tests/fake_models.py has the texts and the models):
an unknown model (404), a thinking type the model does not take, ``budget_tokens`` out of range,
``temperature``/``top_k`` with thinking, an effort level the model lacks, ``max_tokens`` over the
model's limit, a message with empty content, ``tool_result`` ids that do not answer the previous
turn's ``tool_use`` ids, an assistant turn that is not passed back exactly as it was sent (thinking
blocks with their signatures), more than 4 ``cache_control`` breakpoints, a prompt longer than the
model's context window. A rejected request does not use up a scripted reply; it is listed in
``fake.rejected``. ``GET /v1/models/{id}`` and ``GET /v1/models`` answer like the Models API
(``models_api=False``: 404 there, as from a gateway without it).

Thinking text is sent only where the model shows it: from 4.7 on the default display is
"omitted" (an empty ``thinking`` with its signature) unless the request asks for "summarized".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Union

from fake_models import MODELS, check_request, model_info

__all__ = [
    "FakeAnthropic",
    "Stream",
    "Usage",
    "Thinking",
    "Text",
    "ToolUse",
    "HttpError",
    "Hang",
    "Redacted",
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
    """A thinking block: `thinking_delta` chunks, then one `signature_delta`.

    The signature binds the text the client is shown (empty where the display is "omitted");
    by default the fake makes it (an HMAC), and a block passed back changed fails its check."""

    text: str
    signature: Optional[str] = None
    shown: bool = True  # set by the fake per request: False where the model omits thinking text

    def start(self) -> dict:
        return {"type": "thinking", "thinking": "", "signature": ""}

    def deltas(self) -> list[dict]:
        out: list[dict] = [{"type": "thinking_delta", "thinking": c} for c in _chunks(self._text())] if self._text() else []
        out.append({"type": "signature_delta", "signature": self.signature})
        return out

    def full(self) -> dict:
        return {"type": "thinking", "thinking": self._text(), "signature": self.signature}

    def _text(self) -> str:
        return self.text if self.shown else ""


@dataclass
class Redacted:
    """A redacted_thinking block (encrypted reasoning): sent whole in content_block_start."""

    data: str = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"

    def start(self) -> dict:
        return {"type": "redacted_thinking", "data": self.data}

    def deltas(self) -> list[dict]:
        return []

    def full(self) -> dict:
        return {"type": "redacted_thinking", "data": self.data}


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


Block = Union[Thinking, Redacted, Text, ToolUse]


@dataclass
class Stream:
    """A successful reply: SSE when the request has "stream": true, else the equivalent Message JSON.

    error_after=N: after N SSE events, send `event: error` (overloaded_error) and end the stream.
      For a non-streaming request it is served as an HTTP 529 overloaded_error instead.
    drop_after=N: after N SSE events the connection is closed mid-body (no end chunk): a dropped stream.
    end_after=N: after N SSE events the body ends cleanly (the end chunk), without the final events.
    stall_after=N: after N SSE events nothing more is sent for `stall` seconds (or until the fake
      stops), then the connection is closed: a stalled stream, seen by the client's read timeout.
    delay: seconds to wait before the response headers; chunk_delay: seconds between SSE events.
    stop_details: sent with a "refusal" stop, e.g. {"type": "refusal", "category": "cyber", "explanation": ...}.
    """

    blocks: list = field(default_factory=list)
    stop_reason: str = "end_turn"
    usage: Usage = field(default_factory=Usage)
    error_after: Optional[int] = None
    drop_after: Optional[int] = None
    end_after: Optional[int] = None
    stall_after: Optional[int] = None
    stall: float = 30.0
    delay: float = 0.0
    chunk_delay: float = 0.0
    model: Optional[str] = None  # default: the request's "model"
    stop_details: Optional[dict] = None


@dataclass
class HttpError:
    """An HTTP error reply, e.g. 529 overloaded_error, 429 rate_limit_error, 500 api_error.

    error_code: the body's error.details.error_code (e.g. "enforced_spend_limit_reached")."""

    status: int
    error_type: str
    message: str
    retry_after: Optional[float] = None
    error_code: Optional[str] = None


@dataclass
class Hang:
    """Read the request, send nothing for `seconds` (or until the fake stops), then close."""

    seconds: float


Reply = Union[Stream, HttpError, Hang, Thinking, Redacted, Text, ToolUse]  # a bare block means Stream([block])


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
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": None}
    if reply.stop_details is not None:
        delta["stop_details"] = reply.stop_details
    events.append({"type": "message_delta", "delta": delta, "usage": {"output_tokens": reply.usage.output_tokens}})
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
        **({"stop_details": reply.stop_details} if reply.stop_details is not None else {}),
        "usage": {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cache_creation_input_tokens": u.cache_creation_input_tokens,
            "cache_read_input_tokens": u.cache_read_input_tokens,
        },
    }


def error_body(error_type: str, message: str, error_code: Optional[str] = None) -> dict:
    err: dict = {"type": error_type, "message": message}
    if error_code is not None:
        err["details"] = {"error_code": error_code}
    return {"type": "error", "error": err}


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
        self._send_json(reply.status, error_body(reply.error_type, reply.message, reply.error_code), headers)

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
        headers = fake.requests[n - 1]["headers"]
        try:
            key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
            if not key:
                self._send_json(401, error_body("authentication_error", "x-api-key header is required"))
            elif fake.valid_keys is not None and key not in fake.valid_keys:
                self._send_json(401, error_body("authentication_error", "invalid x-api-key"))
            elif method == "POST" and path == "/v1/messages":
                self._messages(fake, body if isinstance(body, dict) else {}, n)
            elif method == "POST" and path == "/v1/messages/count_tokens":
                self._count_tokens(fake, body if isinstance(body, dict) else {})
            elif method == "GET" and fake.models_error is not None and path.startswith("/v1/models"):
                self._send_error(fake.models_error)
            elif method == "GET" and fake.models_api and path == "/v1/models":
                data = [model_info(m, info) for m, info in fake.models.items()]
                self._send_json(200, {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                      "last_id": data[-1]["id"] if data else None})
            elif method == "GET" and fake.models_api and path.startswith("/v1/models/"):
                mid = path[len("/v1/models/"):]
                if mid in fake.models:
                    self._send_json(200, model_info(mid, fake.models[mid]))
                else:
                    self._send_json(404, error_body("not_found_error", f"model: {mid}"))
            else:
                self._send_json(404, error_body("not_found_error", f"fake: no route {method} {path}"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _reject(self, fake: "FakeAnthropic", n: int, status: int, error_type: str, message: str) -> None:
        fake.rejected.append({"request": n, "status": status, "type": error_type, "message": message})
        self._send_json(status, error_body(error_type, message))

    def _count_tokens(self, fake: "FakeAnthropic", body: dict) -> None:
        model = body.get("model")
        if fake.validate and model not in fake.models:
            self._send_json(404, error_body("not_found_error", f"model: {model}"))
            return
        self._send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})

    def _messages(self, fake: "FakeAnthropic", body: dict, n: int) -> None:
        if fake.validate:
            problem = check_request(body, fake.models, fake._issued_turn, fake._signed)
            if problem is not None:
                self._reject(fake, n, *problem)
                return
        reply = fake._next_reply(body)
        if isinstance(reply, (Thinking, Redacted, Text, ToolUse)):
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
            fake._issue(reply, body)
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
        if reply.end_after is not None:
            events = events[: reply.end_after]
        for i, ev in enumerate(events):
            if i and reply.chunk_delay:
                if fake._stopping.wait(reply.chunk_delay):
                    break
            if i == reply.drop_after:  # the connection is cut in the middle of the body
                self.close_connection = True
                return
            if i == reply.stall_after:  # the stream goes silent; the client's read timeout must notice
                fake._stopping.wait(reply.stall)
                self.close_connection = True
                return
            self._chunk(_sse(ev))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        if reply.error_after is not None:
            self.close_connection = True


def _shows_thinking(body: dict, model: Optional[dict]) -> bool:
    display = (body.get("thinking") or {}).get("display")
    if display is not None:
        return display == "summarized"
    return not (model or {}).get("omits_thinking", False)


def _experiment_of(body: Optional[dict]) -> Optional[int]:
    """The experiment a conversation proposes, from its first user message."""
    import re

    try:
        first = body["messages"][0]["content"]
        text = first if isinstance(first, str) else " ".join(b.get("text", "") for b in first if isinstance(b, dict))
    except (KeyError, IndexError, TypeError):
        return None
    m = re.search(r"# Experiment #(\d+)", text)
    return int(m.group(1)) if m else None


class FakeAnthropic:
    """The fake server. Use as a context manager, or call start()/stop()."""

    def __init__(self, script: Optional[list] = None, models: Optional[dict] = None, models_api: bool = True,
                 validate: bool = True, valid_keys: Optional[set] = None, models_error: Optional[HttpError] = None,
                 by_experiment: Optional[dict] = None):
        self._script: list = list(script or [])
        # Several conversations at once (one per experiment in flight): replies routed by the
        # experiment number the prompt names ("# Experiment #N"), each list in its own order.
        self._by_experiment: dict = {k: list(v) for k, v in (by_experiment or {}).items()}
        self.valid_keys = valid_keys  # None: any key is accepted; else others get 401 on every route
        self.models: dict = dict(MODELS if models is None else models)  # id -> the fake's model facts
        self.models_api = models_api
        self.models_error = models_error  # the Models API answers this error (an outage at session start)
        self.validate = validate
        self.rejected: list[dict] = []  # requests refused by validation: {"request", "status", "type", "message"}
        self._secret = uuid.uuid4().bytes
        self._issued_turn: dict[str, list] = {}  # tool_use id -> the whole assistant content it was sent in
        self._signed: set[tuple[str, str]] = set()  # (text shown, signature) of every thinking block sent
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
            return len(self._script) + sum(len(v) for v in self._by_experiment.values())

    def _next_reply(self, body: Optional[dict] = None):
        with self._lock:
            n = _experiment_of(body) if self._by_experiment else None
            if n is not None and self._by_experiment.get(n):
                return self._by_experiment[n].pop(0)
            return self._script.pop(0) if self._script else None

    def _issue(self, reply: "Stream", body: dict) -> None:
        """Sign the reply's thinking blocks as this request shows them, and remember each tool
        call's whole turn, so that what comes back can be checked against what was sent."""
        shown = _shows_thinking(body, self.models.get(body.get("model")))
        for b in reply.blocks:
            if isinstance(b, Thinking):
                b.shown = shown
                if b.signature is None:
                    b.signature = "sig_" + hmac.new(self._secret, b._text().encode(), hashlib.sha256).hexdigest()[:40]
        with self._lock:
            for b in reply.blocks:
                if isinstance(b, Thinking):
                    self._signed.add((b._text(), b.signature))
                elif isinstance(b, Redacted):
                    self._signed.add(("<redacted>", b.data))
            content = [b.full() for b in reply.blocks]
            for b in reply.blocks:
                if isinstance(b, ToolUse):
                    self._issued_turn[b.id] = content

    def _record(self, method: str, path: str, headers: dict, body: Any) -> int:
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body,
                                  "time": time.monotonic()})
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
