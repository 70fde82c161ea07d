"""The fake Messages API's models and its request checks (used by tests/fake_anthropic.py).

The facts are the published ones, written here independently of cockpit's own table (a fake
that read cockpit's table would agree with cockpit by construction): the model pages (context
window, output limit), the thinking guide (which `thinking.type` values each model takes and
how it turns thinking off), the effort guide, and the model deprecations page. Read 2026-11-29
from platform.claude.com/docs.

The error texts are the real API's where they are published or seen in its answers; the few the
fake makes up itself say "(fake)".
"""

from __future__ import annotations

import json
from typing import Optional

ALL = ("low", "medium", "high", "xhigh", "max")
NO_XHIGH = ("low", "medium", "high", "max")


def _m(name, line, thinking, effort, max_in=1_000_000, max_out=128_000, omits=True, lifecycle="active",
       off_max_effort=None) -> dict:
    return {"display_name": name, "line": line, "thinking": frozenset(thinking), "effort": effort,
            "max_input_tokens": max_in, "max_tokens": max_out, "omits_thinking": omits, "lifecycle": lifecycle,
            "off_max_effort": off_max_effort}


MODELS: dict[str, dict] = {
    "claude-fable-5-2": _m("Claude Fable 5.2", "fable", {"adaptive"}, ALL),
    "claude-fable-5-1": _m("Claude Fable 5.1", "fable", {"adaptive"}, ALL),
    "claude-mythos-5-1": _m("Claude Mythos 5.1", "mythos", {"adaptive"}, ALL),
    "claude-fable-5": _m("Claude Fable 5", "fable", {"adaptive"}, ALL),
    "claude-opus-5-5": _m("Claude Opus 5.5", "opus", {"adaptive"}, NO_XHIGH),
    "claude-opus-5": _m("Claude Opus 5", "opus", {"adaptive", "disabled"}, ALL, off_max_effort="high"),
    "claude-opus-4-8": _m("Claude Opus 4.8", "opus", {"adaptive", "disabled"}, ALL),
    "claude-opus-4-7": _m("Claude Opus 4.7", "opus", {"adaptive", "disabled"}, ALL),
    "claude-opus-4-6": _m("Claude Opus 4.6", "opus", {"adaptive", "enabled", "disabled"}, NO_XHIGH, omits=False),
    "claude-opus-4-5": _m("Claude Opus 4.5", "opus", {"enabled", "disabled"}, ("low", "medium", "high"), 200_000,
                          64_000, omits=False, lifecycle="deprecated"),
    "claude-sonnet-5-5": _m("Claude Sonnet 5.5", "sonnet", {"adaptive", "between_tools"}, NO_XHIGH),
    "claude-sonnet-5": _m("Claude Sonnet 5", "sonnet", {"adaptive", "disabled"}, ALL),
    "claude-sonnet-4-6": _m("Claude Sonnet 4.6", "sonnet", {"adaptive", "enabled", "disabled"}, NO_XHIGH, omits=False),
    "claude-sonnet-4-5": _m("Claude Sonnet 4.5", "sonnet", {"enabled", "disabled"}, (), 200_000, 64_000, omits=False,
                            lifecycle="deprecated"),
    "claude-sonnet-4-5-20250929": _m("Claude Sonnet 4.5", "sonnet", {"enabled", "disabled"}, (), 200_000, 64_000,
                                     omits=False, lifecycle="deprecated"),
    "claude-haiku-5-5": _m("Claude Haiku 5.5", "haiku", {"adaptive", "disabled"}, NO_XHIGH, off_max_effort="high"),
    "claude-haiku-4-5": _m("Claude Haiku 4.5", "haiku", {"enabled", "disabled"}, (), 200_000, 64_000, omits=False),
    "claude-opus-4-1-20250805": _m("Claude Opus 4.1", "opus", {"enabled", "disabled"}, (), 200_000, 32_000,
                                   omits=False, lifecycle="retired"),
}


def model_info(model_id: str, m: dict) -> dict:
    """The Models API's answer for one model (the SDK's ModelInfo)."""
    yes = lambda b: {"supported": bool(b)}  # noqa: E731
    t = m["thinking"]
    return {
        "type": "model", "id": model_id, "display_name": m["display_name"], "created_at": "2026-01-01T00:00:00Z",
        "lifecycle": m["lifecycle"], "line": m["line"],
        "deprecated_at": None if m["lifecycle"] == "active" else "2026-06-01T00:00:00Z",
        "retires_at": "2026-12-30T00:00:00Z" if m["lifecycle"] == "deprecated" else None,
        "max_input_tokens": m["max_input_tokens"], "max_tokens": m["max_tokens"],
        "capabilities": {
            "batch": yes(True), "citations": yes(True), "code_execution": yes(True), "image_input": yes(True),
            "pdf_input": yes(True), "structured_outputs": yes(True),
            "context_management": {"supported": True, "clear_thinking_20251015": yes(True),
                                   "clear_tool_uses_20250919": yes(True), "compact_20260112": yes(True)},
            "server_tools": {"supported": True, "code_execution": yes(True), "web_search": yes(True)},
            "effort": {"supported": bool(m["effort"]), **{lvl: yes(lvl in m["effort"]) for lvl in ALL}},
            "thinking": {"supported": bool(t & {"adaptive", "enabled"}),
                         "types": {k: yes(k in t) for k in ("adaptive", "enabled", "disabled", "between_tools")}},
        },
    }


# ---- request checks: (status, error type, message) or None ----

def _bad(message: str) -> tuple[int, str, str]:
    return 400, "invalid_request_error", message


def check_request(body: dict, models: dict, issued_turn: dict, signed: set) -> Optional[tuple[int, str, str]]:
    model = body.get("model")
    m = models.get(model)
    if m is None or m["lifecycle"] == "retired":
        return 404, "not_found_error", f"model: {model}"
    return (_check_limits(body, model, m) or _check_thinking(body, m) or _check_messages(body, issued_turn, signed)
            or _check_cache(body) or _check_length(body, m))


def _check_limits(body: dict, model: str, m: dict):
    mt = body.get("max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        return _bad("max_tokens: Input should be a valid integer greater than or equal to 1")
    if mt > m["max_tokens"]:
        return _bad(f"max_tokens: {mt} > {m['max_tokens']}, which is the maximum allowed number of output tokens for {model}")
    return None


def _check_thinking(body: dict, m: dict):
    th = body.get("thinking")
    kind = (th or {}).get("type") if isinstance(th, dict) else None
    if th is not None and kind not in ("enabled", "disabled", "adaptive", "between_tools"):
        return _bad(f"thinking.type: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
                    "'enabled', 'disabled', 'adaptive', 'between_tools'")
    if kind is not None and kind not in m["thinking"]:
        if kind == "enabled":
            return _bad('"thinking.type.enabled" is not supported for this model. Use "thinking.type.adaptive" and '
                        '"output_config.effort" to control thinking behavior.')
        if kind == "disabled" and "between_tools" in m["thinking"]:
            return _bad('To turn thinking off on this model, send "thinking": {"type": "between_tools"} instead of '
                        '{"type": "disabled"}. The model does not think before responding. The short updates it '
                        'writes between tool calls come back as thinking blocks.')
        if kind == "disabled":
            return _bad('"thinking.type.disabled" is not supported for this model. Use "thinking.type.adaptive" and '
                        '"output_config.effort" to control thinking behavior.')
        if kind == "adaptive":
            return _bad("adaptive thinking is not supported on this model")
        return _bad('"thinking.type.between_tools" is not supported for this model.')
    display = (th or {}).get("display") if isinstance(th, dict) else None
    if display is not None and display not in ("summarized", "omitted"):
        return _bad("thinking.display: Input should be 'summarized' or 'omitted' (fake)")
    if kind == "enabled":
        budget = th.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return _bad("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if budget >= body.get("max_tokens", 0):
            return _bad("`max_tokens` must be greater than `thinking.budget_tokens`.")
    thinking_on = kind in ("enabled", "adaptive") or (kind is None and "disabled" not in m["thinking"])
    if thinking_on:
        if body.get("temperature", 1) != 1:
            return _bad("`temperature` may only be set to 1 when thinking is enabled or in adaptive mode")
        if "top_k" in body:
            return _bad("`top_k` may not be set when thinking is enabled (fake)")
        if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
            return _bad("Thinking may not be enabled when tool_choice forces tool use.")
    effort = (body.get("output_config") or {}).get("effort")
    if effort is not None:
        if not m["effort"]:
            return _bad("This model does not support the effort parameter.")
        if effort not in m["effort"]:
            return _bad(f"output_config.effort: '{effort}' is not supported for this model (fake)")
        cap = m["off_max_effort"]
        if kind == "disabled" and cap and ALL.index(effort) > ALL.index(cap):
            return _bad(f"output_config.effort '{effort}' is not supported when thinking is disabled on this model. "
                        f"Use effort '{cap}' or below, or enable thinking.")
    return None


def _blocks(content) -> list:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _strip(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "cache_control"}


def _check_messages(body: dict, issued_turn: dict, signed: set):
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return _bad("messages: at least one message is required")
    th = body.get("thinking")
    thinking_on = isinstance(th, dict) and th.get("type") in ("enabled", "adaptive")
    seen_ids: set[str] = set()
    last_assistant = max((i for i, x in enumerate(msgs) if x.get("role") == "assistant"), default=None)
    for i, msg in enumerate(msgs):
        role = msg.get("role")
        if role not in ("user", "assistant"):
            return _bad(f"messages.{i}.role: Input should 'user' or 'assistant'")
        content = msg.get("content")
        if (content == "" or content == [] or content is None) and not (i == len(msgs) - 1 and role == "assistant"):
            return _bad(f"messages.{i}: all messages must have non-empty content except for the optional final "
                        "assistant message")
        blocks = _blocks(content)
        for j, b in enumerate(blocks):
            if b.get("type") == "text" and not b.get("text"):
                return _bad("messages: text content blocks must be non-empty")
            if b.get("type") == "text" and not b["text"].strip():
                return _bad("messages: text content blocks must contain non-whitespace text")
            if b.get("type") in ("thinking", "redacted_thinking") and "cache_control" in b:
                return _bad(f"messages.{i}.content.{j}.{b['type']}.cache_control: Extra inputs are not permitted")
            if b.get("type") == "thinking" and (b.get("thinking", ""), b.get("signature")) not in signed:
                return _bad(f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block")
            if b.get("type") == "redacted_thinking" and ("<redacted>", b.get("data")) not in signed:
                return _bad(f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block (fake)")
        if role == "assistant":
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            for b in uses:
                if b.get("id") in seen_ids:
                    return _bad("`tool_use` ids must be unique")
                seen_ids.add(b.get("id"))
                if not isinstance(b.get("input"), dict):
                    return _bad(f"messages.{i}.content: tool_use.input: Input should be a valid dictionary")
            if uses:
                nxt = msgs[i + 1] if i + 1 < len(msgs) else None
                answered = {b.get("tool_use_id") for b in _blocks(nxt.get("content")) if b.get("type") == "tool_result"} if nxt and nxt.get("role") == "user" else set()
                missing = [b["id"] for b in uses if b.get("id") not in answered]
                if missing and nxt is not None:
                    return _bad(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                                f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                                "`tool_result` block in the next message.")
                problem = _check_turn_unchanged(i, blocks, uses, issued_turn, thinking_on and i == last_assistant)
                if problem:
                    return problem
        else:
            kinds = [b.get("type") for b in blocks]
            n_results = kinds.count("tool_result")
            if n_results and kinds[:n_results] != ["tool_result"] * n_results:
                return _bad(f"messages.{i}: Did not find {n_results} `tool_result` block(s) at the beginning of the user "
                            "message. The `tool_result` blocks must come first, before any other content.")
            prev = msgs[i - 1] if i > 0 else None
            prev_ids = {b.get("id") for b in _blocks(prev.get("content")) if b.get("type") == "tool_use"} if prev and prev.get("role") == "assistant" else set()
            for j, b in enumerate(blocks):
                if b.get("type") == "tool_result" and b.get("tool_use_id") not in prev_ids:
                    return _bad(f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                                f"{b.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                                "`tool_use` block in the previous message.")
    return None


def _check_turn_unchanged(i: int, blocks: list, uses: list, issued_turn: dict, final: bool):
    """An assistant turn with tool calls goes back with the thinking the model sent in it, first
    and unchanged (the final turn must; earlier turns may drop it, but not change it)."""
    sent = issued_turn.get(uses[0].get("id"))
    if sent is None:
        return None  # a turn the fake did not send (a test's own history)
    sent_thinking = [b for b in sent if b["type"] in ("thinking", "redacted_thinking")]
    got_thinking = [_strip(b) for b in blocks if b.get("type") in ("thinking", "redacted_thinking")]
    if not got_thinking and sent_thinking and final:
        first = blocks[0].get("type")
        return _bad(f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. "
                    "When `thinking` is enabled, a final `assistant` message must start with a thinking block "
                    "(preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include "
                    "thinking blocks from previous turns. To avoid this requirement, disable `thinking`.")
    if got_thinking and got_thinking != sent_thinking:
        return _bad("`thinking` or `redacted_thinking` blocks in the latest assistant message cannot be modified. "
                    "These blocks must remain as they were in the original response.")
    if got_thinking and [b.get("type") for b in blocks[: len(got_thinking)]] != [b["type"] for b in sent_thinking]:
        return _bad(f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{blocks[0].get('type')}`.")
    return None


def _check_cache(body: dict):
    n = 0
    for group in (body.get("tools") or [], _blocks(body.get("system"))):
        n += sum(1 for b in group if isinstance(b, dict) and "cache_control" in b)
    for msg in body.get("messages") or []:
        n += sum(1 for b in _blocks(msg.get("content")) if isinstance(b, dict) and "cache_control" in b)
    if "cache_control" in body:
        n += 1  # automatic caching takes one of the four
    if n > 4:
        return _bad(f"A maximum of 4 blocks with cache_control may be provided. Found {n}.")
    return None


def prompt_tokens(body: dict) -> int:
    """The fake's token count of a request: a token per 4 characters of its JSON."""
    return max(1, len(json.dumps({k: body.get(k) for k in ("system", "messages", "tools")})) // 4)


def _check_length(body: dict, m: dict):
    n = prompt_tokens(body)
    if n > m["max_input_tokens"]:
        return _bad(f"prompt is too long: {n} tokens > {m['max_input_tokens']} maximum")
    return None
