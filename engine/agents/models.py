"""What the chosen Claude model can do, and the request settings that follow from it.

At session start the agent asks the Models API (`GET /v1/models/{id}`): which `thinking.type`
values the model takes, its effort levels, its context window and output limit, and whether it
is deprecated or retired. Everything the agent sends is derived from that answer, so a request
the model would reject is never built. Where a gateway or proxy has no Models API, a small table
by model family stands in (and says so); it never allows `enabled` thinking on a model of 4.7 or
later, which rejects it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Required, TypedDict

from .base import AgentFatal

if TYPE_CHECKING:
    from anthropic.types import ModelInfo

__all__ = ["AgentFatal", "ModelSpec", "RequestSettings", "Thinking", "OutputConfig", "family_version", "settings_for",
           "spec_from_family", "spec_from_info"]

THINKING_MODES = ("auto", "adaptive", "enabled", "off")
EFFORT_LEVELS = ("low", "medium", "high", "xhigh", "max")
MIN_THINKING_BUDGET = 1024  # the API's floor for thinking.budget_tokens


@dataclass(frozen=True)
class ModelSpec:
    id: str
    adaptive: bool  # takes thinking {"type": "adaptive"}
    enabled: bool  # takes thinking {"type": "enabled", "budget_tokens": N}
    off: str | None  # the thinking type that turns thinking off: "disabled", "between_tools", or None (always thinks)
    effort: tuple[str, ...]  # output_config.effort levels it takes; () when it has no effort setting
    max_input_tokens: int
    max_tokens: int
    lifecycle: str = "active"  # active | deprecated | retired
    source: str = "the Models API"

    @property
    def display(self) -> bool:
        """Takes thinking.display: the models with adaptive thinking (4.6 and later); from 4.7 on
        their default is "omitted" (an empty thinking text), so cockpit asks for "summarized"."""
        return self.adaptive


# ---- the model family table, for gateways without a Models API ----
# From the published model pages and the thinking and effort guides (platform.claude.com/docs,
# read 2026-11-29): which thinking types each model takes, how it turns thinking off, its effort
# levels, and its context window / output limit.

_ID = re.compile(r"claude-(opus|sonnet|haiku|fable|mythos)-(\d+)(?:-(\d{1,2}))?(?:-\d{8})?$")
_ALL = ("low", "medium", "high", "xhigh", "max")
_NO_XHIGH = ("low", "medium", "high", "max")
_M1, _K128 = 1_000_000, 128_000


_OLD_ID = re.compile(r"claude-(\d)(?:-(\d))?-(opus|sonnet|haiku)")  # claude-3-7-sonnet-20250219


def family_version(model: str) -> tuple[str, tuple[int, int]] | None:
    """("sonnet", (5, 5)) for "claude-sonnet-5-5", "claude-sonnet-4-5-20250929" or a gateway's
    "anthropic.claude-sonnet-5-5-v1:0"; ("sonnet", (3, 7)) for "claude-3-7-sonnet-20250219"; None if unknown."""
    m = _ID.search(re.sub(r"(-v\d+(:\d+)?|@\d+)$", "", model))
    if m:
        return m.group(1), (int(m.group(2)), int(m.group(3) or 0))
    m = _OLD_ID.search(model)
    if m:
        return m.group(3), (int(m.group(1)), int(m.group(2) or 0))
    return None


def spec_from_family(model: str) -> ModelSpec:
    """A conservative stand-in for the Models API, by family and version.

    4.7 and later (Opus 4.7+, every 5.x, Fable, Mythos) take adaptive thinking only; 4.6 takes
    adaptive and enabled; 4.5 and older take enabled only. An id the table cannot read is let
    through with whatever [agent] thinking says (auto: adaptive, no effort setting) and the
    smaller limits of the 4.5 generation: the API's answer to the first request tells the rest."""
    fv = family_version(model)
    family, v = fv if fv else ("unknown", (99, 0))

    def spec(adaptive: bool, enabled: bool, off: str | None, effort: tuple[str, ...], max_in: int = _M1,
             max_out: int = _K128) -> ModelSpec:
        return ModelSpec(model, adaptive, enabled, off, effort, max_in, max_out, source="the built-in family table")

    if family in ("fable", "mythos"):
        return spec(True, False, None, _ALL if v <= (5, 0) else _NO_XHIGH)  # always thinks
    if family == "opus":
        if v >= (5, 5):
            return spec(True, False, None, _NO_XHIGH)
        if v >= (4, 7):
            return spec(True, False, "disabled", _ALL)
        if v == (4, 6):
            return spec(True, True, "disabled", _NO_XHIGH)
        if v == (4, 5):
            return spec(False, True, "disabled", ("low", "medium", "high"), 200_000, 64_000)
        return spec(False, True, "disabled", (), 200_000, 32_000)
    if family == "sonnet":
        if v >= (5, 5):
            return spec(True, False, "between_tools", _NO_XHIGH)
        if v >= (5, 0):
            return spec(True, False, "disabled", _ALL)
        if v == (4, 6):
            return spec(True, True, "disabled", _NO_XHIGH)
        return spec(False, True, "disabled", (), 200_000, 64_000)
    if family == "haiku":
        if v >= (5, 0):
            return spec(True, False, "disabled", _NO_XHIGH)
        return spec(False, True, "disabled", (), 200_000, 64_000)
    return spec(True, True, "disabled", (), 200_000, 64_000)


def spec_from_info(info: ModelInfo) -> ModelSpec:
    """A ModelSpec from the SDK's ModelInfo (the Models API's answer)."""
    caps = info.capabilities
    table = spec_from_family(info.id)
    max_in = info.max_input_tokens or table.max_input_tokens
    max_out = info.max_tokens or table.max_tokens
    if caps is None:  # an answer without capabilities: the table decides, the limits are the API's
        return ModelSpec(info.id, table.adaptive, table.enabled, table.off, table.effort, max_in, max_out,
                         info.lifecycle)
    t = caps.thinking.types
    eff = caps.effort
    offered = {"low": eff.low, "medium": eff.medium, "high": eff.high, "xhigh": eff.xhigh, "max": eff.max}
    levels = tuple(lvl for lvl in EFFORT_LEVELS if eff.supported and (c := offered.get(lvl)) is not None and c.supported)
    off = "disabled" if t.disabled.supported else "between_tools" if t.between_tools.supported else None
    return ModelSpec(info.id, adaptive=bool(caps.thinking.supported and t.adaptive.supported),
                     enabled=bool(caps.thinking.supported and t.enabled.supported), off=off, effort=levels,
                     max_input_tokens=max_in, max_tokens=max_out, lifecycle=info.lifecycle)


# ---- the request settings ----

class Thinking(TypedDict, total=False):
    """The request's `thinking`."""

    type: Required[str]  # adaptive | enabled | disabled | between_tools
    budget_tokens: int  # for "enabled"
    display: str  # "summarized"


class OutputConfig(TypedDict):
    """The request's `output_config`."""

    effort: str


@dataclass(frozen=True)
class RequestSettings:
    max_tokens: int
    context_tokens: int  # the first prompt stays under this
    thinking: Thinking | None  # the request's `thinking`, or None to leave it out
    output_config: OutputConfig | None  # the request's `output_config`, or None


def settings_for(spec: ModelSpec, mode: str, effort: str | None, budget: int, max_tokens: int,
                 context_tokens: int) -> RequestSettings:
    """The thinking, effort and limits to send to `spec`'s model; AgentFatal when the configured
    mode or effort is one the model does not take (the API would answer every request with 400)."""
    if mode not in THINKING_MODES:
        raise AgentFatal(f"[agent] thinking must be one of {', '.join(THINKING_MODES)}, not {mode!r}")
    if effort is not None and effort not in EFFORT_LEVELS:
        raise AgentFatal(f"[agent] effort must be one of {', '.join(EFFORT_LEVELS)}, not {effort!r}")
    if mode == "auto":
        mode = "adaptive" if spec.adaptive else "enabled" if spec.enabled else "off"
    takes = {"adaptive": spec.adaptive, "enabled": spec.enabled, "off": spec.off is not None}
    if not takes[mode]:
        others = [m for m, ok in takes.items() if ok and m != mode]
        what = "always thinks" if mode == "off" else f"does not take thinking {mode!r}"
        raise AgentFatal(f"{spec.id} {what} (per {spec.source}); set [agent] thinking to "
                         f"{' or '.join(others) or 'auto'}")
    max_tokens = max(1, min(max_tokens, spec.max_tokens))
    thinking: Thinking
    if mode == "off":
        assert spec.off is not None  # takes["off"] above
        thinking = {"type": spec.off}  # "disabled", or "between_tools" where that is how the model turns it off
    elif mode == "adaptive":
        thinking = {"type": "adaptive"}
    else:
        budget = max(MIN_THINKING_BUDGET, budget)
        # room for the tool call after the thinking; within the model's output limit
        max_tokens = min(spec.max_tokens, max(max_tokens, budget + 4096))
        budget = min(budget, max_tokens - 1024)
        if budget < MIN_THINKING_BUDGET:
            raise AgentFatal(f"{spec.id} allows {spec.max_tokens} output tokens, too few for thinking 'enabled' "
                             f"(budget_tokens >= {MIN_THINKING_BUDGET}); set [agent] thinking = \"off\"")
        thinking = {"type": "enabled", "budget_tokens": budget}
    if mode != "off" and spec.display:
        thinking["display"] = "summarized"  # the reasoning pane shows text even where the default omits it
    output_config: OutputConfig | None = None
    if spec.effort and mode != "off":
        level = effort or "high"
        if level not in spec.effort:
            raise AgentFatal(f"{spec.id} does not take effort {level!r}; it takes {', '.join(spec.effort)}")
        output_config = {"effort": level}
    # the prompt and the reply together stay inside the context window
    context = max(1000, min(context_tokens, spec.max_input_tokens - max_tokens))
    return RequestSettings(max_tokens, context, thinking, output_config)
