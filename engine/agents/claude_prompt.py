"""What Claude reads: the harness rules, the tool definitions, the proposal's prompt rendered from
the journal under a token budget, and the text the tools answer with (the results table, one
past experiment, a refused submit). Pure functions of the Context and the confined Tools.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..status import Status
from ..tools import ToolError, Tools
from .base import Context, PastExperiment

if TYPE_CHECKING:
    from anthropic.types import ToolParam


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


def estimate_tokens(text: str) -> int:
    """A conservative estimate (code runs ~3.5 characters per token)."""
    return int(len(text) / 3.2) + 1


def render_prompt(ctx: Context, recent: Sequence[PastExperiment], rows: int, notes_h: Sequence[str], notes_a: Sequence[str],
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


def check_submission(tools: Tools) -> str | None:
    if not tools.touched:
        return "you have not changed anything yet: edit a file, then submit"
    for rel in sorted(tools.touched):
        if rel.endswith(".py"):
            try:
                compile(tools.read_file(rel), rel, "exec")
            except SyntaxError as e:
                return f"{rel} does not compile: {e.msg} (line {e.lineno}); fix it, then submit again"
    return None


def string_arg(args: dict[str, object], key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str):
        raise ToolError(f"`{key}` must be a string")
    return v


def tool_summary(name: str, args: object, result: str) -> str:
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
