"""The API side of the Claude agent: the SDK client, what the model can do (asked of the Models
API once, at session start; models.py), the request body, the streamed reply, the usage and cost
of each request, and the back-off around the SDK's own retries.

API errors fall into three kinds:
- transient (429 with retry-after, 408/409/any 5xx, overloaded mid-stream, refused connections,
  dropped or stalled streams): retried with back-off, for up to max_api_wait per request;
- deterministic for this request (the prompt too long, the reply cut at max_tokens): the
  proposal adapts (a smaller context, a larger max_tokens) or is skipped with its reason;
- fatal for the session (401, 403, 402, an unknown model, a spent limit, any other 400): the
  session stops at once with one line that says what to do (AgentFatal).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import events as ev
from .base import Agent, AgentFatal, Interrupt, Usage
from .claude_prompt import TOOLS
from .models import ModelSpec, RequestSettings, settings_for, spec_from_family, spec_from_info
from .prices import Price, price_for

if TYPE_CHECKING:
    from anthropic.types import Message, TextBlockParam

# The Messages API's JSON as cockpit builds and sends it back: a content block ({"type": "text", ...},
# a tool result, a thinking block as the API returned it) and a message ({"role": ..., "content": [...]}).
Block = dict[str, Any]
MessageDict = dict[str, Any]
Emit = Callable[[ev.Event], None]

DEFAULT_MODEL = "claude-sonnet-5-5"
SPEND_LIMIT_CODES = frozenset({"enforced_spend_limit_reached", "contract_spend_limit_reached",
                               "linked_organization_spend_limit_reached"})


@dataclass(frozen=True)
class ClaudeConfig:
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    max_tokens: int = 16000  # raised (up to the model's limit) when a reply is cut off
    thinking: str = "auto"  # auto | adaptive | enabled | off (auto: adaptive where the model takes it)
    effort: str | None = None  # output_config.effort where the model has it (None: "high")
    thinking_budget: int = 8000  # budget_tokens for "enabled" thinking (>= 1024, below max_tokens)
    context_tokens: int = 60000  # the proposal's prompt stays under this (and inside the model's window)
    max_turns: int = 30  # model calls per proposal
    max_bad_submits: int = 3  # submits that change nothing / do not compile, before the proposal is skipped
    sdk_retries: int = 2
    connect_timeout: float = 5.0  # seconds to connect
    read_timeout: float = 60.0  # seconds without a byte from the API (between stream events): a stalled stream
    max_api_wait: float = 1800.0  # back off this long in all for one request before giving up on it
    prices: dict[str, float] | None = None  # USD per million tokens: input, output, cache_write, cache_read (overrides the table)


class AgentGaveUp(RuntimeError):
    """The proposal could not be completed (API unavailable too long, or no submit)."""


class PromptTooLong(Exception):
    """The API said the prompt does not fit: the proposal starts again with a smaller context."""


class _StreamEndedEarly(Exception):
    """The streamed reply ended without its final events (no stop reason): retried."""


class _Own(threading.local):
    """What belongs to one proposal's thread (several conversations run at once)."""

    interrupt: Interrupt | None = None
    estimate: int | None = None  # the size of this conversation's last first prompt
    usage: Usage | None = None


class ClaudeApi(Agent):
    """The Claude agent's API client (claude.py holds the conversation). Each conversation runs in
    its own thread (one per proposal in flight): what belongs to one proposal is kept per thread."""

    def __init__(self, api_key: str, cfg: ClaudeConfig = ClaudeConfig(), sleep: Callable[[float], None] = time.sleep):
        import anthropic

        self._anthropic = anthropic
        self.cfg = cfg
        # A plain number would set every phase (a dead host would hold a connect for 10 minutes);
        # the read timeout is the longest silence allowed between two stream events.
        timeout = anthropic.Timeout(cfg.read_timeout, connect=cfg.connect_timeout)
        self.client = anthropic.Anthropic(api_key=api_key, base_url=cfg.base_url, max_retries=cfg.sdk_retries,
                                          timeout=timeout)
        self.sleep = sleep
        self._own = _Own()  # per proposal thread: several conversations run at once
        self._prepare_lock = threading.Lock()
        self.interrupt = None  # a threading.Event the engine sets on stop-now
        self.spec: ModelSpec | None = None
        self.settings: RequestSettings | None = None
        self.price: Price = price_for(cfg.model, cfg.prices)[0]
        self.notices: list[str] = []

    @property
    def interrupt(self) -> Interrupt | None:
        return self._own.interrupt

    @interrupt.setter
    def interrupt(self, event: Interrupt | None) -> None:
        self._own.interrupt = event

    @property
    def last_usage(self) -> Usage:
        return self._own.usage or Usage()

    @last_usage.setter
    def last_usage(self, usage: Usage) -> None:
        self._own.usage = usage

    # ---- session start: what the model can do ----
    def prepare(self) -> list[str]:
        """Ask the Models API what the model takes and derive the request settings; the lines to
        show the human. AgentFatal for an unknown or retired model, a refused key, or settings
        the model does not take."""
        A = self._anthropic
        notices = []
        missing = False
        try:
            spec = spec_from_info(self.client.models.retrieve(self.cfg.model))
        except A.NotFoundError:
            missing = True
        except A.APIStatusError as e:
            kind, line, _ = self._classify(e)
            if kind == "fatal" and e.status_code in (401, 402, 403, 429):  # the key or the account: nothing will work
                raise AgentFatal(line) from None
            # 405 (no such route on a gateway), an outage (5xx, 529): the first request will tell the rest
            spec = spec_from_family(self.cfg.model)
            why = "this API endpoint has no Models API" if e.status_code == 405 else f"the Models API answered {line}"
            notices.append(f"{why}; {self.cfg.model}'s settings come from the built-in table by model family")
        except (A.APIConnectionError, *_transport_errors()) as e:
            spec = spec_from_family(self.cfg.model)
            notices.append(f"could not reach the Models API ({type(e).__name__}); {self.cfg.model}'s settings come "
                           f"from the built-in table by model family")
        if missing:  # an unknown id where the Models API answers a listing; a gateway without it answers 404 there too
            listing = self._models_listing()
            if listing is True:
                raise AgentFatal(_unknown_model(self.cfg.model, None))
            spec = spec_from_family(self.cfg.model)
            notices.append(f"{'this API endpoint has no Models API' if listing is False else listing}; "
                           f"{self.cfg.model}'s settings come from the built-in table by model family")
        if spec.lifecycle == "retired":
            raise AgentFatal(f"{spec.id} is retired and answers no requests; choose another model with --model, "
                             f"[agent] model in cockpit.toml or $COCKPIT_MODEL")
        if spec.lifecycle == "deprecated":
            notices.append(f"warning: {spec.id} is deprecated and will be retired; consider another model (--model)")
        c = self.cfg
        self.settings = settings_for(spec, c.thinking, c.effort, c.thinking_budget, c.max_tokens, c.context_tokens)
        self.spec = spec
        self.price, guessed = price_for(spec.id, c.prices)
        if guessed:
            notices.append(guessed)
        self.notices = notices
        return notices

    def _models_listing(self) -> bool | str:
        """True when the Models API answers a listing (so a 404 for the model means an unknown
        id), False when there is no Models API here (404/405), else why it could not be told."""
        A = self._anthropic
        try:
            self.client.models.list(limit=1)
            return True
        except A.APIStatusError as e:
            if e.status_code in (404, 405):
                return False
            kind, line, _ = self._classify(e)
            if kind == "fatal" and e.status_code in (401, 402, 403):
                raise AgentFatal(line) from None
            return f"the Models API answered {line}"
        except (A.APIConnectionError, *_transport_errors()) as e:
            return f"could not reach the Models API ({type(e).__name__})"

    def _prepared(self) -> tuple[ModelSpec, RequestSettings]:
        """The model's spec and the request settings: prepare() has run (propose() sees to it)."""
        assert self.spec is not None and self.settings is not None, "prepare() runs before any request"
        return self.spec, self.settings

    # ---- the API, with an outer back-off around the SDK's own retries ----
    def _request(self, system: list[TextBlockParam], messages: list[MessageDict], max_tokens: int, emit: Emit, n: int,
                 usage: Usage) -> Message:
        t0 = time.monotonic()
        attempt = 0
        while True:
            try:
                msg = self._stream(system, messages, max_tokens, emit, n)
            except AgentGaveUp:
                raise
            except Exception as e:
                kind, what, hint = self._classify(e)
                if kind == "fatal":
                    raise AgentFatal(what) from None
                if kind == "too_long":
                    raise PromptTooLong(what) from None
                if kind != "transient":
                    raise
            else:
                u = msg.usage
                tin, tout = u.input_tokens or 0, u.output_tokens or 0
                cw, cr = u.cache_creation_input_tokens or 0, u.cache_read_input_tokens or 0
                usage.input_tokens += tin
                usage.output_tokens += tout
                usage.cache_write_tokens += cw
                usage.cache_read_tokens += cr
                usage.requests += 1
                usage.cost_usd += self.price.cost(tin, tout, cw, cr)  # per request: tiers depend on its prompt
                return msg
            attempt += 1
            wait = max(hint or 0.0, min(60.0, 2.0 ** attempt))
            if time.monotonic() - t0 + wait > self.cfg.max_api_wait:
                raise AgentGaveUp(f"the API stayed unavailable for {self.cfg.max_api_wait:g}s ({what})")
            emit(ev.Waiting(reason=f"waiting for API ({what}), retry in {wait:.0f}s", seconds=wait))
            if self.interrupt is not None:
                if self.interrupt.wait(wait):
                    raise AgentGaveUp("stopped by the human")
            else:
                self.sleep(wait)

    def _classify(self, e: BaseException) -> tuple[str, str, float | None]:
        """(kind, one line, retry-after seconds): kind is transient, too_long, fatal or unknown."""
        A = self._anthropic
        model = self.cfg.model
        if isinstance(e, A.APIStatusError):
            code, etype, msg = e.status_code, e.type or "error", e.api_message or str(e)
            said = f"{code} {etype}: {msg}" if code != 200 else f"{etype} in the stream: {msg}"
            if code == 200:  # an error event in the middle of a streamed reply (overloaded, api_error)
                return "transient", f"stream error: {etype}", None
            if code == 401:
                return "fatal", f"the Anthropic API refused the key ({said}); check ANTHROPIC_API_KEY", None
            if code == 403:
                return "fatal", f"the Anthropic API key may not do this ({said}); check the key's workspace and permissions", None
            if code == 402:
                return "fatal", f"the Anthropic account cannot pay for requests ({said}); add credit or fix billing, then run cockpit again", None
            if code == 404:
                return "fatal", _unknown_model(model, msg), None
            if code == 413:
                return "too_long", f"the request is too large ({said})", None
            if code == 400 and "prompt is too long" in msg:  # the API gives no code for it; its message is stable
                return "too_long", msg, None
            if code == 429:
                after = _retry_after(e.response.headers)
                # A spent limit has its own error codes and no retry-after (and the API's wording
                # "usage limit"); a rate limit says when to come back, or is waited out with back-off.
                if e.error_code in SPEND_LIMIT_CODES or (after is None and "usage limit" in msg.lower()):
                    return "fatal", f"the Anthropic API usage limit is reached ({said}); raise the limit or wait, then run cockpit again", None
                return "transient", f"API error 429 {etype}", after
            if code in (408, 409) or code >= 500:
                return "transient", f"API error {code}", _retry_after(e.response.headers)
            return "fatal", f"the Anthropic API rejected cockpit's request ({said}); check [agent] in cockpit.toml", None
        if isinstance(e, _StreamEndedEarly):
            return "transient", "the stream was cut (it ended before its last event)", None
        if isinstance(e, A.APITimeoutError):
            return "transient", "the API did not answer in time", None
        if isinstance(e, A.APIConnectionError):
            return "transient", "connection lost", None
        import httpx2

        if isinstance(e, httpx2.TimeoutException):  # the SDK does not wrap errors once the body is being read
            return "transient", f"the stream stalled for {self.cfg.read_timeout:g}s", None
        if isinstance(e, httpx2.TransportError):
            return "transient", f"the stream was cut ({type(e).__name__})", None
        if isinstance(e, A.APIError):
            return "transient", f"stream error ({type(e).__name__})", None
        return "unknown", f"{type(e).__name__}: {e}", None

    def request_body(self, system: list[TextBlockParam], messages: list[MessageDict],
                     max_tokens: int) -> dict[str, Any]:
        """The keyword arguments of one Messages request (the wire body, less `stream`)."""
        st = self._prepared()[1]
        body: dict[str, Any] = dict(model=self.cfg.model, max_tokens=max_tokens, system=system, messages=_with_cache_breakpoint(messages),
                    tools=TOOLS)
        if st.thinking is not None:
            thinking = st.thinking.copy()
            if thinking["type"] == "enabled":
                thinking["budget_tokens"] = min(thinking["budget_tokens"], max_tokens - 1024)
            body["thinking"] = thinking
        if st.output_config is not None:
            body["output_config"] = st.output_config
        return body

    def _stream(self, system: list[TextBlockParam], messages: list[MessageDict], max_tokens: int, emit: Emit,
                n: int) -> Message:
        with self.client.messages.stream(**self.request_body(system, messages, max_tokens)) as stream:
            for event in stream:
                if self.interrupt is not None and self.interrupt.is_set():
                    raise AgentGaveUp("stopped")  # stop-now, or the engine no longer needs this proposal
                if event.type == "content_block_delta":
                    d = event.delta
                    if d.type == "thinking_delta":
                        emit(ev.AgentThinking(n=n, text=d.thinking))
                    elif d.type == "text_delta":
                        emit(ev.AgentText(n=n, text=d.text))
            msg = stream.get_final_message()
        if msg.stop_reason is None:  # the body ended before message_delta/message_stop: a cut stream
            raise _StreamEndedEarly()
        return msg


def _with_cache_breakpoint(messages: list[MessageDict]) -> list[MessageDict]:
    """The conversation with a cache breakpoint on the last block of its last message, so each
    turn reads the earlier turns from the cache (the system prompt holds the other breakpoint;
    the API allows four). Earlier messages are left as they are: no breakpoint accumulates."""
    if not messages:
        return messages
    last = dict(messages[-1])
    content = last["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    content = list(content)
    if content and content[-1].get("type") not in ("thinking", "redacted_thinking"):
        content[-1] = {**content[-1], "cache_control": {"type": "ephemeral"}}
    last["content"] = content
    return [*messages[:-1], last]


def _unknown_model(model: str, message: str | None) -> str:
    said = f" ({message})" if message else ""
    return (f"the Anthropic API does not know the model {model!r}{said}; choose another with --model, "
            f"[agent] model in cockpit.toml or $COCKPIT_MODEL")


def _transport_errors() -> tuple[type[BaseException], ...]:
    import httpx2

    return (httpx2.TransportError,)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait: retry-after-ms, retry-after in seconds, or an HTTP date."""
    import email.utils

    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            pass
    when = email.utils.parsedate_tz(headers.get("retry-after") or "")
    if when is None:
        return None
    return max(0.0, email.utils.mktime_tz(when) - time.time())
