"""The fake Messages API (tests/fake_anthropic.py) driven by the real `anthropic` SDK over real HTTP."""

from __future__ import annotations

import json
import threading
import time

import anthropic
import pytest

from fake_anthropic import FakeAnthropic, Hang, HttpError, Stream, Text, Thinking, ToolUse, Usage

MODEL = "claude-haiku-4-5"  # a real id (the fake knows the published models); takes `enabled` thinking
USER = [{"role": "user", "content": "hi"}]
RAW_TYPES = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}


@pytest.fixture
def fake():
    with FakeAnthropic([]) as f:
        yield f
    assert f.server_errors == [], f.server_errors


def client(fake: FakeAnthropic, **kw) -> anthropic.Anthropic:
    kw.setdefault("max_retries", 0)
    return anthropic.Anthropic(api_key="fake-test-key", base_url=fake.base_url, **kw)


THINK = Thinking("Let me look at the training script first.", signature="sig_abc")


def full_reply() -> tuple[Stream, ToolUse]:
    tool = ToolUse("read_file", {"path": "trainer/train.py", "lines": [1, 20], "deep": {"x": None}})
    reply = Stream(
        [THINK, Text("Reading it now."), tool],
        stop_reason="tool_use",
        usage=Usage(
            input_tokens=120, output_tokens=42, cache_creation_input_tokens=300, cache_read_input_tokens=900
        ),
    )
    return reply, tool


def test_stream_thinking_text_tool_use(fake):
    reply, tool = full_reply()
    fake.add(reply)
    c = client(fake)
    with c.messages.stream(
        model=MODEL,
        max_tokens=2048,
        messages=USER,
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[{"name": "read_file", "description": "read", "input_schema": {"type": "object"}}],
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()

    raw = [e for e in events if e.type in RAW_TYPES]
    assert raw[0].type == "message_start" and raw[-1].type == "message_stop"
    starts = [e.content_block.type for e in raw if e.type == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use"]
    deltas = [e.delta for e in raw if e.type == "content_block_delta"]
    assert "".join(d.thinking for d in deltas if d.type == "thinking_delta") == THINK.text
    assert [d.signature for d in deltas if d.type == "signature_delta"] == ["sig_abc"]
    assert len([d for d in deltas if d.type == "text_delta"]) > 1  # really chunked
    assert "".join(d.partial_json for d in deltas if d.type == "input_json_delta") == (
        '{"path": "trainer/train.py", "lines": [1, 20], "deep": {"x": null}}'
    )
    # the helper's derived events come through as well
    assert {"thinking", "signature", "text", "input_json"} <= {e.type for e in events}

    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "Let me look at the training script first."
    assert final.content[0].signature == "sig_abc"
    assert final.content[1].text == "Reading it now."
    t = final.content[2]
    assert (t.id, t.name) == (tool.id, "read_file")
    assert t.input == {"path": "trainer/train.py", "lines": [1, 20], "deep": {"x": None}}
    assert t.id.startswith("toolu_")
    assert final.stop_reason == "tool_use"
    assert final.model == MODEL
    u = final.usage
    assert (u.input_tokens, u.output_tokens) == (120, 42)
    assert (u.cache_creation_input_tokens, u.cache_read_input_tokens) == (300, 900)

    (req,) = fake.requests
    assert req["path"] == "/v1/messages"
    assert req["body"]["stream"] is True
    assert req["body"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert req["body"]["messages"] == USER


def test_raw_stream_via_create_and_non_streaming_equivalent(fake):
    reply, tool = full_reply()
    fake.add(reply, reply)
    c = client(fake)

    types = [e.type for e in c.messages.create(model=MODEL, max_tokens=100, messages=USER, stream=True)]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert types.count("content_block_start") == 3 == types.count("content_block_stop")

    msg = c.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert msg.content[2].input == tool.input and msg.content[2].id == tool.id
    assert msg.stop_reason == "tool_use"
    assert (msg.usage.cache_creation_input_tokens, msg.usage.cache_read_input_tokens) == (300, 900)
    assert "stream" not in fake.requests[1]["body"]


def test_529_then_success_is_retried(fake):
    fake.add(HttpError(529, "overloaded_error", "Overloaded", retry_after=0.01), Text("ok"))
    c = client(fake, max_retries=2)
    with c.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        assert stream.get_final_text() == "ok"
    assert len(fake.requests) == 2
    assert [r["headers"]["x-stainless-retry-count"] for r in fake.requests] == ["0", "1"]
    assert fake.requests[0]["body"] == fake.requests[1]["body"]


@pytest.mark.parametrize(
    "status, error_type, exc",
    [
        (529, "overloaded_error", anthropic.OverloadedError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
    ],
)
def test_errors_after_retries_exhausted(fake, status, error_type, exc):
    fake.add(*[HttpError(status, error_type, "nope", retry_after=0.01)] * 3)
    c = client(fake, max_retries=2)
    with pytest.raises(exc) as info:
        c.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert type(info.value) is exc
    assert info.value.status_code == status
    assert info.value.type == error_type and info.value.api_message == "nope"
    assert len(fake.requests) == 3


def test_error_mid_stream(fake):
    fake.add(Stream([Text("Hello there, world")], error_after=3), Text("never served"))
    c = client(fake, max_retries=2)
    seen = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with c.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
            for event in stream:
                seen.append(event.type)
    err = info.value
    # SDK 2.x: a plain APIStatusError carrying the 200 of the stream, not OverloadedError
    assert type(err) is anthropic.APIStatusError
    assert err.status_code == 200
    assert err.type == "overloaded_error" and err.api_message == "Overloaded"
    assert err.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert [s for s in seen if s in RAW_TYPES] == ["message_start", "content_block_start", "content_block_delta"]
    assert len(fake.requests) == 1  # a mid-stream error is not retried
    assert fake.remaining == 1


def test_api_key_header(fake):
    fake.add(Text("ok"))
    client(fake).messages.create(model=MODEL, max_tokens=10, messages=USER)
    h = fake.requests[0]["headers"]
    assert h["authorization"] == "Bearer fake-test-key"
    assert "x-api-key" not in h
    assert h["anthropic-version"]
    assert h["content-type"] == "application/json"


def test_count_tokens(fake):
    c = client(fake)
    res = c.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "x" * 400}])
    (req,) = fake.requests
    assert req["path"] == "/v1/messages/count_tokens"
    assert res.input_tokens == len(json.dumps(req["body"])) // 4 > 100
    assert fake.remaining == 0  # count_tokens does not consume the script


def test_script_exhausted_is_a_recorded_500(fake):
    with pytest.raises(anthropic.InternalServerError) as info:
        client(fake).messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert info.value.api_message == "fake: no scripted reply left"
    assert len(fake.requests) == 1


def test_hang_times_out_then_retry_succeeds(fake):
    fake.add(Hang(10), Text("after the hang"))
    c = client(fake, timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        c.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert time.monotonic() - t0 < 2
    assert c.messages.create(model=MODEL, max_tokens=10, messages=USER).content[0].text == "after the hang"


def test_delays_are_honoured(fake):
    fake.add(Stream([Text("a b c d e f")], delay=0.05, chunk_delay=0.02))
    t0 = time.monotonic()
    with client(fake).messages.stream(model=MODEL, max_tokens=10, messages=USER) as stream:
        assert stream.get_final_text() == "a b c d e f"
    # message_start, block start, 3 deltas, block stop, message_delta, message_stop: 8 events, 7 gaps
    assert time.monotonic() - t0 >= 0.05 + 7 * 0.02


def test_stop_is_prompt_even_while_hanging():
    fake = FakeAnthropic([Hang(30)]).start()
    c = anthropic.Anthropic(api_key="fake-test-key", base_url=fake.base_url, max_retries=0)
    errors = []

    def call():
        try:
            c.messages.create(model=MODEL, max_tokens=10, messages=USER)
        except Exception as e:  # the fake closes without a response
            errors.append(e)

    th = threading.Thread(target=call)
    th.start()
    while not fake.requests:
        time.sleep(0.01)
    t0 = time.monotonic()
    fake.stop()
    th.join(5)
    assert time.monotonic() - t0 < 2
    assert errors and isinstance(errors[0], anthropic.APIConnectionError)
