"""Claude as the researcher, through the official anthropic SDK.

Each proposal is a fresh, bounded conversation built from the journal (memory lives there, not
in an ever-growing chat): a cached system prompt with the harness rules and program.md, then the
best code, the results, recent diffs with outcomes, notes and vetoes. Claude edits files only
through the engine's confined tools and ends with `submit`. Thinking, text and tool calls stream
out as engine events.

This module holds the conversation (the proposal loop, one turn's tool calls, the prompt under its
budget); claude_api.py the API client (settings from the Models API, requests with back-off,
streaming, usage and cost, the wording of API errors); claude_prompt.py what the model reads.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import events as ev
from ..tools import ToolError, Tools
from .base import Context, Proposal, ProposalRejected, ProposalSkipped, Usage
from .claude_api import (DEFAULT_MODEL, SPEND_LIMIT_CODES, AgentGaveUp, Block, ClaudeApi, ClaudeConfig, Emit, MessageDict,
                         PromptTooLong)
from .claude_prompt import (RULES, TOOLS, check_submission, estimate_tokens, render_prompt, results_table,
                            show_experiment, string_arg, tool_summary)

if TYPE_CHECKING:
    from anthropic.types import Message, TextBlockParam, ToolUseBlock

# The names other modules and tests import from here.
__all__ = ["DEFAULT_MODEL", "NUDGE", "RULES", "SPEND_LIMIT_CODES", "TOOLS", "AgentGaveUp", "Claude", "ClaudeConfig",
           "estimate_tokens", "results_table", "show_experiment"]


NUDGE = "Make your change with the tools, then call submit."


class _Refused(Exception):
    """The model refused (stop_reason "refusal"): that conversation ends."""


class Claude(ClaudeApi):
    name = "claude"

    def __init__(self, api_key: str, cfg: ClaudeConfig = ClaudeConfig(), sleep: Callable[[float], None] = time.sleep):
        super().__init__(api_key, cfg, sleep)
        self._last_program: str | None = None
        self._default_estimate = cfg.context_tokens

    @property
    def _prompt_estimate(self) -> int:
        """The size of this conversation's last first prompt."""
        return self._default_estimate if self._own.estimate is None else self._own.estimate

    @_prompt_estimate.setter
    def _prompt_estimate(self, tokens: int) -> None:
        self._own.estimate = tokens

    # ---- one proposal ----
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
                except PromptTooLong as e:
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
                raise PromptTooLong("the conversation filled the model's context window")
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
            emit(ev.ToolCalled(n=ctx.n, name=block.name, summary=tool_summary(block.name, block.input, text), ok=ok))
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
            emit(ev.ToolCalled(n=ctx.n, name=block.name, summary=tool_summary(block.name, block.input, text), ok=ok))
            results[i] = {"type": "tool_result", "tool_use_id": block.id, "content": text, "is_error": not ok}
        return [r for r in results if r is not None], submitted, problem

    # ---- tools ----
    def _tool(self, name: str, args: object, tools: Tools, ctx: Context) -> tuple[str, bool, str | None]:
        """Run one tool call: (text for the model, ok, submitted description or None)."""
        if not isinstance(args, dict):
            return "tool input must be a JSON object", False, None
        try:
            if name == "read_file":
                return tools.read_file(string_arg(args, "path")), True, None
            if name == "edit_file":
                return tools.edit_file(string_arg(args, "path"), string_arg(args, "old_string"), string_arg(args, "new_string")), True, None
            if name == "write_file":
                return tools.write_file(string_arg(args, "path"), string_arg(args, "content")), True, None
            if name == "note":
                return tools.note(string_arg(args, "text")), True, None
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
                desc = string_arg(args, "description").strip()
                if not desc:
                    raise ToolError("the description is empty: say what you changed and why, in one line")
                problem = check_submission(tools)
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
            text = render_prompt(ctx, recent, rows, notes_h, notes_a, changed)
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


def _add_user(messages: list[MessageDict], block: Block) -> None:
    """Add a block to the user's turn at the end of the conversation (a new turn if the last is the model's)."""
    if messages and messages[-1]["role"] == "user":
        content = messages[-1]["content"]
        messages[-1] = {"role": "user", "content": [*([{"type": "text", "text": content}] if isinstance(content, str) else content), block]}
    else:
        messages.append({"role": "user", "content": [block]})


def _refusal_text(msg: Message) -> str:
    details = msg.stop_details
    why = (details.explanation or details.category) if details is not None else None
    return f"refusal: {why}" if why else "refusal"
