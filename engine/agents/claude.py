"""Claude as the researcher, through the official anthropic SDK.

Each proposal is a fresh, bounded conversation built from the journal (memory lives there, not
in an ever-growing chat): a cached system prompt with the harness rules and program.md, then the
best code, the results, recent diffs with outcomes, notes and vetoes. Claude edits files only
through the engine's confined tools and ends with `submit`. Thinking, text and tool calls stream
out as engine events.

What the model can do (thinking types, effort, limits) is asked of the Models API once, at
session start (models.py); every request follows from it. API errors fall into three kinds:
- transient (429 with retry-after, 408/409/any 5xx, overloaded mid-stream, refused connections,
  dropped or stalled streams): retried with back-off, for up to max_api_wait per request;
- deterministic for this request (the prompt too long, the reply cut at max_tokens): the
  proposal adapts (a smaller context, a larger max_tokens) or is skipped with its reason;
- fatal for the session (401, 403, 402, an unknown model, a spent limit, any other 400): the
  session stops at once with one line that says what to do (AgentFatal).
"""

from __future__ import annotations

import difflib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import events as ev
from ..status import Status
from ..tools import ToolError, Tools
from .base import (Agent, AgentFatal, Context, Interrupt, PastExperiment, Proposal, ProposalRejected, ProposalSkipped,
                   Usage)
from .models import ModelSpec, RequestSettings, settings_for, spec_from_family, spec_from_info
from .prices import Price, price_for

if TYPE_CHECKING:
    from anthropic.types import Message, TextBlockParam, ToolParam, ToolUseBlock

# The Messages API's JSON as cockpit builds and sends it back: a content block ({"type": "text", ...},
# a tool result, a thinking block as the API returned it) and a message ({"role": ..., "content": [...]}).
Block = dict[str, Any]
MessageDict = dict[str, Any]
Emit = Callable[[ev.Event], None]

DEFAULT_MODEL = "claude-sonnet-5-5"
SPEND_LIMIT_CODES = frozenset({"enforced_spend_limit_reached", "contract_spend_limit_reached",
                               "linked_organization_spend_limit_reached"})
NUDGE = "Make your change with the tools, then call submit."

RULES = """You are an ML researcher running experiments inside cockpit, an autonomous research loop.
Each experiment is ONE change to the editable files, trained for a fixed time budget and measured
by a locked harness. The change is kept only if it beats the best result by more than the
measured noise; otherwise the code is reset to the best.

Harness rules (breaking one makes the run `invalid`):
- Edit only the editable files, and only through the tools. There is no shell.
- train.py may import only torch and harness.runtime (plus math, time, functools, dataclasses,
  typing, itertools, collections, contextlib, enum, random, gc). No files, processes or network;
  no getattr/setattr; no monkeypatching of imported modules; only the runtime's public API:
  profile, vocab_size, bos_id, tokenizer, autocast, model_info, train_batches, fraction, done,
  progress, submit.
- Train while rt.done() is False; call rt.progress(step, loss, tokens) every step and
  rt.submit(model) at the end. model(idx) must return logits (B, T, vocab) that depend only on
  earlier positions of the same row. Over-budget, future-peeking or NaN runs are not kept.

How to work: read what you need, make one focused change with edit_file (exact, unique
old_string), then call submit with a one-line description that says what and why. Keep notes
of what you learn with `note`: they are your memory across experiments."""

TOOLS: list[ToolParam] = [
    {"name": "read_file", "description": "Read an editable file.",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
    {"name": "edit_file", "description": "Replace old_string (must occur exactly once) with new_string in an editable file.",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "old_string": {"type": "string"},
                                                       "new_string": {"type": "string"}},
                      "required": ["path", "old_string", "new_string"]}},
    {"name": "write_file", "description": "Replace the whole content of an editable file.",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                      "required": ["path", "content"]}},
    {"name": "results", "description": "The experiment table (the last N rows when `last` is given).",
     "input_schema": {"type": "object", "properties": {"last": {"type": "integer"}}}},
    {"name": "show_experiment", "description": "One past experiment: its diff, outcome and log tail.",
     "input_schema": {"type": "object", "properties": {"number": {"type": "integer"}}, "required": ["number"]}},
    {"name": "note", "description": "Save a research note to your memory (kept across experiments).",
     "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    {"name": "submit", "description": "End the proposal: the current edits become the experiment.",
     "input_schema": {"type": "object", "properties": {"description": {"type": "string"}}, "required": ["description"]}},
]


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


class _PromptTooLong(Exception):
    """The API said the prompt does not fit: the proposal starts again with a smaller context."""


class _StreamEndedEarly(Exception):
    """The streamed reply ended without its final events (no stop reason): retried."""


class _Refused(Exception):
    """The model refused (stop_reason "refusal"): that conversation ends."""


def estimate_tokens(text: str) -> int:
    """A conservative estimate (code runs ~3.5 characters per token)."""
    return int(len(text) / 3.2) + 1


class _Own(threading.local):
    """What belongs to one proposal's thread (several conversations run at once)."""

    interrupt: Interrupt | None = None
    estimate: int | None = None  # the size of this conversation's last first prompt
    usage: Usage | None = None


class Claude(Agent):
    name = "claude"

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
        self._last_program: str | None = None
        self.spec: ModelSpec | None = None
        self.settings: RequestSettings | None = None
        self.price: Price = price_for(cfg.model, cfg.prices)[0]
        self.notices: list[str] = []
        self._default_estimate = cfg.context_tokens

    # Each conversation runs in its own thread (one per proposal in flight): what belongs to one
    # proposal is kept per thread.
    @property
    def interrupt(self) -> Interrupt | None:
        return self._own.interrupt

    @interrupt.setter
    def interrupt(self, event: Interrupt | None) -> None:
        self._own.interrupt = event

    @property
    def _prompt_estimate(self) -> int:
        """The size of this conversation's last first prompt."""
        return self._default_estimate if self._own.estimate is None else self._own.estimate

    @_prompt_estimate.setter
    def _prompt_estimate(self, tokens: int) -> None:
        self._own.estimate = tokens

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

    # ---- one proposal ----
    def _prepared(self) -> tuple[ModelSpec, RequestSettings]:
        """The model's spec and the request settings: prepare() has run (propose() sees to it)."""
        assert self.spec is not None and self.settings is not None, "prepare() runs before any request"
        return self.spec, self.settings

    def propose(self, ctx: Context, tools: Tools, emit: Emit) -> Proposal | None:
        usage = self.last_usage = Usage()
        with self._prepare_lock:  # the first conversations start together: the Models API is asked once
            if self.settings is None:
                for line in self.prepare():
                    emit(ev.Notice(text=line))
        context = self._prepared()[1].context_tokens
        snapshot = tools.snapshot()
        refused = shrunk = 0
        try:
            while True:
                try:
                    return self._conversation(ctx, tools, emit, usage, context)
                except _PromptTooLong as e:
                    shrunk += 1
                    context = int(min(context, self._prompt_estimate) * 0.6)  # from what was really sent
                    if shrunk > 3:
                        raise ProposalSkipped(f"skipped: the prompt does not fit the model's context ({e})") from None
                    emit(ev.Notice(text=f"#{ctx.n}: the prompt was too long for {self.cfg.model} ({e}); "
                                        f"asking again with a context of {context} tokens"))
                except _Refused as e:
                    refused += 1
                    if refused >= 2:
                        raise ProposalSkipped(f"skipped: the model refused twice ({e})") from None
                    emit(ev.Notice(text=f"#{ctx.n}: the model refused ({e}); starting a fresh conversation"))
                tools.restore(snapshot)  # a fresh conversation starts from the best code again
        finally:
            self._last_program = ctx.program

    def _conversation(self, ctx: Context, tools: Tools, emit: Emit, usage: Usage, context: int) -> Proposal:
        spec, settings = self._prepared()
        system: list[TextBlockParam] = [
            {"type": "text", "text": RULES + "\n\n# program.md (the human's instructions)\n\n" + ctx.program,
             "cache_control": {"type": "ephemeral"}}]
        prompt = self._fitted_prompt(ctx, system, context)
        self._prompt_estimate = estimate_tokens(prompt)
        messages: list[MessageDict] = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        max_tokens = settings.max_tokens
        bad_submits = 0
        for _turn in range(self.cfg.max_turns):
            if self.interrupt is not None and self.interrupt.is_set():
                raise AgentGaveUp("stopped by the human")
            msg = self._request(system, messages, max_tokens, emit, ctx.n, usage)
            # Text blocks with nothing in them are dropped (the API refuses them when sent back);
            # thinking blocks go back exactly as they came, with their signatures.
            content = [b.model_dump(exclude_none=True) for b in msg.content
                       if not (b.type == "text" and not b.text.strip())]
            stop = msg.stop_reason
            if stop == "refusal":
                raise _Refused(_refusal_text(msg))
            if stop == "model_context_window_exceeded":
                raise _PromptTooLong("the conversation filled the model's context window")
            if stop == "max_tokens":
                # The reply was cut (perhaps inside a tool call): it is dropped, never sent back half-made.
                if max_tokens >= spec.max_tokens:
                    raise ProposalSkipped(f"skipped: the model's reply was cut off at its limit of {max_tokens} "
                                          "output tokens")
                max_tokens = min(spec.max_tokens, max_tokens * 2)
                emit(ev.Notice(text=f"#{ctx.n}: the reply was cut off at the output limit; asking again with "
                                    f"max_tokens {max_tokens}"))
                continue
            if not content:  # nothing to send back: an empty assistant turn is a 400
                _add_user(messages, {"type": "text", "text": "Your reply was empty. " + NUDGE})
                continue
            messages.append({"role": "assistant", "content": content})
            if stop == "pause_turn":
                continue  # the API paused a long turn: sending it back lets the model go on
            uses = [b for b in msg.content if b.type == "tool_use"]
            if not uses:  # end_turn or stop_sequence without a tool call
                messages.append({"role": "user", "content": [{"type": "text", "text": NUDGE}]})
                continue
            results, submitted, problem = self._tools_turn(uses, tools, ctx, emit)
            if problem:
                bad_submits += 1
                if bad_submits >= self.cfg.max_bad_submits:
                    raise ProposalRejected(f"after {bad_submits} attempts: {problem}")
            if submitted:
                return Proposal(submitted, usage)
            messages.append({"role": "user", "content": results})
        raise AgentGaveUp(f"no submit after {self.cfg.max_turns} model calls")

    def _tools_turn(self, uses: list[ToolUseBlock], tools: Tools, ctx: Context,
                    emit: Emit) -> tuple[list[Block], str | None, str | None]:
        """Run one assistant turn's tool calls in order; `submit` is checked after all of them,
        so the compile check sees the files as the whole turn left them. Returns the results (in
        the calls' order), the submitted description, and why a submit was refused."""
        results: list[Block | None] = []
        submits: list[tuple[int, ToolUseBlock]] = []
        for block in uses:
            if block.name == "submit":
                results.append(None)
                submits.append((len(results) - 1, block))
                continue
            text, ok, _ = self._tool(block.name, block.input, tools, ctx)
            emit(ev.ToolCalled(n=ctx.n, name=block.name, summary=_summary(block.name, block.input, text), ok=ok))
            results.append({"type": "tool_result", "tool_use_id": block.id, "content": text, "is_error": not ok})
        submitted: str | None = None
        problem: str | None = None
        for i, block in submits:
            if submitted:
                text, ok = "error: already submitted in this turn", False
            else:
                text, ok, done = self._tool(block.name, block.input, tools, ctx)
                submitted = done
                if not ok:
                    problem = text
            emit(ev.ToolCalled(n=ctx.n, name=block.name, summary=_summary(block.name, block.input, text), ok=ok))
            results[i] = {"type": "tool_result", "tool_use_id": block.id, "content": text, "is_error": not ok}
        return [r for r in results if r is not None], submitted, problem

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
                    raise _PromptTooLong(what) from None
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
                return "fatal", _unknown_model(model, e), None
            if code == 413:
                return "too_long", f"the request is too large ({said})", None
            if code == 400 and "prompt is too long" in msg:  # the API gives no code for it; its message is stable
                return "too_long", msg, None
            if code == 429:
                after = _retry_after(e)
                # A spent limit has its own error codes and no retry-after (and the API's wording
                # "usage limit"); a rate limit says when to come back, or is waited out with back-off.
                if e.error_code in SPEND_LIMIT_CODES or (after is None and "usage limit" in msg.lower()):
                    return "fatal", f"the Anthropic API usage limit is reached ({said}); raise the limit or wait, then run cockpit again", None
                return "transient", f"API error 429 {etype}", after
            if code in (408, 409) or code >= 500:
                return "transient", f"API error {code}", _retry_after(e)
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

    # ---- tools ----
    def _tool(self, name: str, args: object, tools: Tools, ctx: Context) -> tuple[str, bool, str | None]:
        """Run one tool call: (text for the model, ok, submitted description or None)."""
        if not isinstance(args, dict):
            return "tool input must be a JSON object", False, None
        try:
            if name == "read_file":
                return tools.read_file(_str(args, "path")), True, None
            if name == "edit_file":
                return tools.edit_file(_str(args, "path"), _str(args, "old_string"), _str(args, "new_string")), True, None
            if name == "write_file":
                return tools.write_file(_str(args, "path"), _str(args, "content")), True, None
            if name == "note":
                return tools.note(_str(args, "text")), True, None
            if name == "results":
                last = args.get("last")
                if last is not None and (not isinstance(last, int) or last < 1):
                    raise ToolError("`last` must be a positive integer")
                return results_table(ctx, last), True, None
            if name == "show_experiment":
                num = args.get("number")
                if not isinstance(num, int):
                    raise ToolError("`number` must be an integer")
                return show_experiment(ctx, num), True, None
            if name == "submit":
                desc = _str(args, "description").strip()
                if not desc:
                    raise ToolError("the description is empty: say what you changed and why, in one line")
                problem = _check_submission(tools)
                if problem:
                    raise ToolError(problem)
                return "submitted", True, desc.splitlines()[0]
            raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(t['name'] for t in TOOLS)}")
        except ToolError as e:
            return f"error: {e}", False, None

    # ---- the prompt, under a token budget ----
    def _fitted_prompt(self, ctx: Context, system: list[TextBlockParam], budget: int) -> str:
        """The prompt, shrunk until the API's own count (asked only near the limit) fits."""
        limit = budget
        prompt = self.build_prompt(ctx, budget)
        for _ in range(4):
            if estimate_tokens(prompt) < 0.6 * limit:
                return prompt
            try:
                counted = self.client.messages.count_tokens(
                    model=self.cfg.model, system=system, messages=[{"role": "user", "content": prompt}], tools=TOOLS
                ).input_tokens
            except self._anthropic.APIError:
                return prompt  # the estimate already kept it under budget
            if counted <= limit:
                return prompt
            budget = int(budget * 0.85)
            prompt = self.build_prompt(ctx, budget)
        return prompt

    def build_prompt(self, ctx: Context, budget: int | None = None) -> str:
        budget = budget or self.cfg.context_tokens
        changed = None
        if self._last_program is not None and self._last_program != ctx.program:
            changed = "".join(difflib.unified_diff(self._last_program.splitlines(True), ctx.program.splitlines(True),
                                                   "program.md (before)", "program.md (now)"))
        recent = [e for e in ctx.history if e.diff][-10:]
        rows = len(ctx.history)
        notes_h, notes_a = ctx.human_notes[-20:], ctx.agent_notes[-30:]
        while True:
            text = _render(ctx, recent, rows, notes_h, notes_a, changed)
            if estimate_tokens(text) <= budget:
                return text
            if recent:
                recent = recent[1:]  # oldest diffs go first; their rows stay in the table
            elif rows > 20:
                rows = max(20, rows // 2)  # older history condenses into a summary line
            elif len(notes_a) > 5 or len(notes_h) > 5:
                notes_a, notes_h = notes_a[-5:], notes_h[-5:]
            else:
                return text  # the code itself is the floor


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


def _add_user(messages: list[MessageDict], block: Block) -> None:
    """Add a block to the user's turn at the end of the conversation (a new turn if the last is the model's)."""
    if messages and messages[-1]["role"] == "user":
        content = messages[-1]["content"]
        messages[-1] = {"role": "user", "content": [*([{"type": "text", "text": content}] if isinstance(content, str) else content), block]}
    else:
        messages.append({"role": "user", "content": [block]})


def _refusal_text(msg: Message) -> str:
    details = getattr(msg, "stop_details", None)
    why = getattr(details, "explanation", None) or getattr(details, "category", None)
    return f"refusal: {why}" if why else "refusal"


def _unknown_model(model: str, e: BaseException | None) -> str:
    said = f" ({getattr(e, 'api_message', None) or e})" if e is not None else ""
    return (f"the Anthropic API does not know the model {model!r}{said}; choose another with --model, "
            f"[agent] model in cockpit.toml or $COCKPIT_MODEL")


def _transport_errors() -> tuple[type[BaseException], ...]:
    import httpx2

    return (httpx2.TransportError,)


def _render(ctx: Context, recent: Sequence[PastExperiment], rows: int, notes_h: Sequence[str], notes_a: Sequence[str],
            changed: str | None) -> str:
    out = [f"# Experiment #{ctx.n}", ""]
    best = f"{ctx.best_metric:.6f}" if ctx.best_metric is not None else "not measured yet"
    noise = f"{ctx.noise:.6f}" if ctx.noise is not None else "unknown"
    better = "lower" if ctx.direction == "min" else "higher"
    out.append(f"Metric: {ctx.metric} ({better} is better). Best so far: {best}. Noise (std of repeated runs): {noise}.")
    if ctx.budget:
        out.append(f"Training budget per experiment: {ctx.budget:g} s on {ctx.profile or 'this machine'}.")
    if changed:
        out += ["", "## The human changed program.md since your last proposal", "```diff", changed.rstrip(), "```"]
    out += ["", "## Current best code"]
    for path, text in ctx.files.items():
        out += [f"### {path}", "```python" if path.endswith(".py") else "```", text.rstrip(), "```"]
    out += ["", "## Results so far", results_table(ctx, rows)]
    if recent:
        out += ["", "## Recent experiments with their diffs"]
        for e in recent:
            out += [f"### #{e.n} {e.status}: {e.description}" + (f" ({e.reason})" if e.reason else ""),
                    "```diff", e.diff.rstrip(), "```"]
    if notes_h:
        out += ["", "## Notes and vetoes from the human"] + [f"- {t}" for t in notes_h]
    if notes_a:
        out += ["", "## Your research notes"] + [f"- {t}" for t in notes_a]
    if ctx.in_flight:
        out += ["", "## In flight: experiments training or prepared now, beside yours",
                "Their results are not known yet. Your change is made against the best code above; if one of them is "
                "kept first, your change is merged on top of it. Do not repeat any of these changes; try something else."]
        for x in ctx.in_flight:
            out += [f"### #{x.n} ({x.state}): {x.description}"]
            if x.diff:
                out += ["```diff", x.diff.rstrip(), "```"]
    out += ["", "## Your task",
            "Propose experiment #%d: one focused change that you expect to beat the best by more than the noise. "
            "Do not repeat a discarded idea without a new reason. Edit with the tools, then call submit." % ctx.n]
    return "\n".join(out)


def results_table(ctx: Context, last: int | None = None) -> str:
    hist = ctx.history
    shown = hist[-last:] if last else hist
    lines = []
    if len(shown) < len(hist):
        older = hist[: len(hist) - len(shown)]
        counts: dict[str, int] = {}
        for e in older:
            counts[e.status] = counts.get(e.status, 0) + 1
        lines.append(f"({len(older)} earlier experiments: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")")
    lines.append(f"| # | status | {ctx.metric} | delta | description |")
    lines.append("|---|---|---|---|---|")
    for e in shown:
        m = f"{e.metric:.6f}" if e.metric is not None else "-"
        d = f"{e.delta:+.6f}" if e.delta is not None else ""
        why = f" ({e.reason})" if e.reason and e.status != Status.KEEP else ""
        lines.append(f"| {e.n} | {e.status} | {m} | {d} | {e.description}{why} |")
    if not hist:
        lines.append("| - | - | - | - | no experiments yet |")
    return "\n".join(lines)


def show_experiment(ctx: Context, number: int) -> str:
    for e in ctx.history:
        if e.n == number:
            m = f"{e.metric:.6f}" if e.metric is not None else "-"
            text = f"#{e.n} {e.status} {ctx.metric} {m}: {e.description}" + (f"\nreason: {e.reason}" if e.reason else "")
            if e.diff:
                text += "\n```diff\n" + e.diff.rstrip() + "\n```"
            if ctx.show is not None:
                text += ctx.show(number)
            return text
    raise ToolError(f"there is no experiment #{number} (the last is #{ctx.history[-1].n if ctx.history else 0})")


def _check_submission(tools: Tools) -> str | None:
    if not tools.touched:
        return "you have not changed anything yet: edit a file, then submit"
    for rel in sorted(tools.touched):
        if rel.endswith(".py"):
            try:
                compile(tools.read_file(rel), rel, "exec")
            except SyntaxError as e:
                return f"{rel} does not compile: {e.msg} (line {e.lineno}); fix it, then submit again"
    return None


def _str(args: dict[str, object], key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str):
        raise ToolError(f"`{key}` must be a string")
    return v


def _retry_after(e: BaseException) -> float | None:
    """Seconds the server asks to wait: retry-after-ms, retry-after in seconds, or an HTTP date."""
    import email.utils

    headers = getattr(getattr(e, "response", None), "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers.get(name)) / scale)
        except (TypeError, ValueError):
            pass
    when = email.utils.parsedate_tz(headers.get("retry-after") or "")
    if when is None:
        return None
    return max(0.0, email.utils.mktime_tz(when) - time.time())


def _summary(name: str, args: object, result: str) -> str:
    if not isinstance(args, dict):
        return "(malformed input)"
    if name in ("read_file", "write_file", "edit_file"):
        s = str(args.get("path", ""))
    elif name == "submit":
        s = str(args.get("description", ""))[:120]
    elif name == "show_experiment":
        s = f"#{args.get('number')}"
    elif name == "note":
        s = str(args.get("text", ""))[:80]
    else:
        s = json.dumps(args)[:80]
    return s + ("" if not result.startswith("error:") else f" -> {result[:160]}")
