"""Claude as the researcher, through the official anthropic SDK.

Each proposal is a fresh, bounded conversation built from the journal (memory lives there, not
in an ever-growing chat): a cached system prompt with the harness rules and program.md, then the
best code, the results, recent diffs with outcomes, notes and vetoes. Claude edits files only
through the engine's confined tools and ends with `submit`. Thinking, text and tool calls stream
out as engine events. API outages, rate limits, malformed tool calls and bad edits are routine:
they are retried, returned to the model as tool errors, or recorded, never fatal.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass
from typing import Callable

from harness.errors import HarnessError

from .. import events as ev
from ..tools import ToolError, Tools
from .base import Context, Proposal, ProposalRejected, Usage

DEFAULT_MODEL = "claude-sonnet-5-5"

# USD per million tokens: (input, output). Cache writes cost 1.25x input, cache reads 0.1x.
PRICES = {"opus": (5.0, 25.0), "sonnet": (3.0, 15.0), "haiku": (1.0, 5.0), "fable": (3.0, 15.0), "mythos": (15.0, 75.0)}
ADAPTIVE_THINKING = ("opus-4-6", "opus-4-7", "opus-4-8", "mythos")  # models that take adaptive thinking
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}

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

TOOLS = [
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
    max_tokens: int = 16000
    thinking_budget: int = 8000  # 0 turns extended thinking off
    context_tokens: int = 60000  # the proposal's prompt stays under this
    max_turns: int = 30  # model calls per proposal
    max_bad_submits: int = 3  # submits that change nothing / do not compile, before the proposal is skipped
    sdk_retries: int = 2
    timeout: float = 600.0
    max_api_wait: float = 1800.0  # back off this long in all for one request before giving up on it


class AgentGaveUp(RuntimeError):
    """The proposal could not be completed (API unavailable too long, or no submit)."""


class AuthError(HarnessError):
    """The API refused the key: stop the session with that reason."""


def price(model: str, u: Usage) -> float:
    pin, pout = next((v for k, v in PRICES.items() if k in model), PRICES["sonnet"])
    return (u.input_tokens * pin + u.cache_write_tokens * pin * 1.25 + u.cache_read_tokens * pin * 0.1
            + u.output_tokens * pout) / 1e6


def estimate_tokens(text: str) -> int:
    """A conservative estimate (code runs ~3.5 characters per token)."""
    return int(len(text) / 3.2) + 1


class Claude:
    name = "claude"

    def __init__(self, api_key: str, cfg: ClaudeConfig = ClaudeConfig(), sleep: Callable[[float], None] = time.sleep):
        import anthropic

        self._anthropic = anthropic
        self.cfg = cfg
        self.client = anthropic.Anthropic(api_key=api_key, base_url=cfg.base_url, max_retries=cfg.sdk_retries,
                                          timeout=cfg.timeout)
        self.sleep = sleep
        self.interrupt = None  # a threading.Event the engine sets on stop-now
        self.last_usage = Usage()
        self._last_program: str | None = None

    # ---- one proposal ----
    def propose(self, ctx: Context, tools: Tools, emit) -> Proposal | None:
        usage = self.last_usage = Usage()
        system = [{"type": "text", "text": RULES + "\n\n# program.md (the human's instructions)\n\n" + ctx.program,
                   "cache_control": {"type": "ephemeral"}}]
        messages = [{"role": "user", "content": self._fitted_prompt(ctx, system)}]
        self._last_program = ctx.program
        bad_submits = 0
        for _turn in range(self.cfg.max_turns):
            if self.interrupt is not None and self.interrupt.is_set():
                raise AgentGaveUp("stopped by the human")
            msg = self._request(system, messages, emit, ctx.n, usage)
            messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
            results, submitted = [], None
            for block in msg.content:
                if block.type != "tool_use":
                    continue
                text, ok, done = self._tool(block.name, block.input, tools, ctx)
                emit(ev.ToolCalled(n=ctx.n, name=block.name, summary=_summary(block.name, block.input, text), ok=ok))
                if block.name == "submit" and not ok:
                    bad_submits += 1
                    if bad_submits >= self.cfg.max_bad_submits:
                        raise ProposalRejected(f"after {bad_submits} attempts: {text}")
                results.append({"type": "tool_result", "tool_use_id": block.id, "content": text, "is_error": not ok})
                if done:
                    submitted = done
            if submitted:
                return Proposal(submitted, usage)
            if results:
                messages.append({"role": "user", "content": results})
            else:
                messages.append({"role": "user", "content": "Make your change with the tools, then call submit."})
        raise AgentGaveUp(f"no submit after {self.cfg.max_turns} model calls")

    # ---- the API, with an outer back-off around the SDK's own retries ----
    def _request(self, system, messages, emit, n: int, usage: Usage):
        A = self._anthropic
        t0 = time.monotonic()
        attempt = 0
        while True:
            try:
                msg = self._stream(system, messages, emit, n)
                u = msg.usage
                usage.input_tokens += u.input_tokens or 0
                usage.output_tokens += u.output_tokens or 0
                usage.cache_write_tokens += getattr(u, "cache_creation_input_tokens", None) or 0
                usage.cache_read_tokens += getattr(u, "cache_read_input_tokens", None) or 0
                usage.requests += 1
                usage.cost_usd = price(self.cfg.model, usage)
                return msg
            except A.APIStatusError as e:
                if e.status_code in (401, 403):
                    raise AuthError(f"the Anthropic API refused the key ({e.status_code}); check ANTHROPIC_API_KEY") from None
                if e.status_code == 200:  # an error event in the middle of a streamed reply
                    what, hint = f"stream error: {getattr(e, 'type', None) or 'error'}", None
                elif e.status_code not in RETRYABLE_STATUS:
                    raise
                else:
                    what, hint = f"API error {e.status_code}", _retry_after(e)
            except (A.APIConnectionError, A.APITimeoutError):
                what, hint = "connection lost", None
            except A.APIError as e:  # an error event in the middle of a stream
                what, hint = f"stream error ({type(e).__name__})", None
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

    def _stream(self, system, messages, emit, n: int):
        kwargs = dict(model=self.cfg.model, max_tokens=self.cfg.max_tokens, system=system, messages=messages, tools=TOOLS)
        if self.cfg.thinking_budget:
            if any(m in self.cfg.model for m in ADAPTIVE_THINKING):
                kwargs["thinking"] = {"type": "adaptive"}
            else:
                kwargs["thinking"] = {"type": "enabled", "budget_tokens": self.cfg.thinking_budget}
        with self.client.messages.stream(**kwargs) as stream:
            for event in stream:
                if self.interrupt is not None and self.interrupt.is_set():
                    raise AgentGaveUp("stopped")  # stop-now, or the engine no longer needs this proposal
                if event.type == "content_block_delta":
                    d = event.delta
                    if d.type == "thinking_delta":
                        emit(ev.AgentThinking(n=n, text=d.thinking))
                    elif d.type == "text_delta":
                        emit(ev.AgentText(n=n, text=d.text))
            return stream.get_final_message()

    # ---- tools ----
    def _tool(self, name: str, args, tools: Tools, ctx: Context) -> tuple[str, bool, str | None]:
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
    def _fitted_prompt(self, ctx: Context, system) -> str:
        """The prompt, shrunk until the API's own count (asked only near the limit) fits."""
        budget = self.cfg.context_tokens
        prompt = self.build_prompt(ctx, budget)
        for _ in range(4):
            if estimate_tokens(prompt) < 0.6 * self.cfg.context_tokens:
                return prompt
            try:
                counted = self.client.messages.count_tokens(
                    model=self.cfg.model, system=system, messages=[{"role": "user", "content": prompt}], tools=TOOLS
                ).input_tokens
            except self._anthropic.APIError:
                return prompt  # the estimate already kept it under budget
            if counted <= self.cfg.context_tokens:
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


def _render(ctx: Context, recent, rows: int, notes_h, notes_a, changed: str | None) -> str:
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
    running = [e for e in ctx.history if e.status in ("running", "proposing")]
    if running:
        r = running[-1]
        out += ["", f"## In flight: #{r.n} is training now ({r.description})",
                f"Its result is not known yet. Your change is made against the best code above and applied after #{r.n} "
                f"finishes; if #{r.n} is kept, your change is merged on top of it. Do not repeat #{r.n}'s change."]
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
        why = f" ({e.reason})" if e.reason and e.status not in ("keep",) else ""
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


def _str(args: dict, key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str):
        raise ToolError(f"`{key}` must be a string")
    return v


def _retry_after(e) -> float | None:
    try:
        return float(e.response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def _summary(name: str, args, result: str) -> str:
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
