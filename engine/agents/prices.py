"""What a proposal costs: the published price of each Claude model, per request.

USD per million tokens, from the Anthropic pricing page ("Model pricing": base input, 5-minute
cache writes, cache hits and refreshes, output), platform.claude.com/docs/en/about-claude/pricing,
as published in October 2026 and read on 2026-11-29. Cache hits are not a flat 0.1x of input:
Fable 5.1 / Mythos 5.1 read at 0.025x, Opus 5.5 and Sonnet 5.5 at 0.05x. Haiku 5.5 has a second
tier for prompts over 100,000 tokens (input, cache reads and writes counted together), which then
prices the whole request. cockpit writes its cache with the default 5-minute lifetime.

A model the table does not list is priced as the nearest earlier version of its family, and the
agent says so; `[agent.prices]` in cockpit.toml overrides the table for the session's model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import family_version

PRICES_DATE = "2026-10 (read 2026-11-29)"


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_write: float  # 5-minute cache writes
    cache_read: float  # cache hits and refreshes
    long_prompt: "Price | None" = None  # the tier for prompts over LONG_PROMPT tokens (Haiku 5.5)

    def cost(self, input_tokens: int, output_tokens: int, cache_write: int, cache_read: int) -> float:
        """USD for one request's usage."""
        p = self
        if self.long_prompt is not None and input_tokens + cache_write + cache_read > LONG_PROMPT:
            p = self.long_prompt
        return (input_tokens * p.input + output_tokens * p.output + cache_write * p.cache_write
                + cache_read * p.cache_read) / 1e6


LONG_PROMPT = 100_000

# (family, (major, minor)) -> price; each entry prices its version and the later ones up to the next entry.
TABLE: dict[str, list[tuple[tuple[int, int], Price]]] = {
    "fable": [((5, 0), Price(10.0, 50.0, 12.5, 1.0)), ((5, 1), Price(10.0, 50.0, 12.5, 0.25))],
    "mythos": [((5, 0), Price(10.0, 50.0, 12.5, 1.0)), ((5, 1), Price(10.0, 50.0, 12.5, 0.25))],
    "opus": [((3, 0), Price(15.0, 75.0, 18.75, 1.5)), ((4, 5), Price(5.0, 25.0, 6.25, 0.5)),
             ((5, 5), Price(4.0, 20.0, 5.0, 0.2))],
    "sonnet": [((3, 0), Price(3.0, 15.0, 3.75, 0.3)), ((5, 0), Price(2.0, 10.0, 2.5, 0.2)),
               ((5, 5), Price(2.0, 10.0, 2.5, 0.1))],
    "haiku": [((3, 5), Price(0.8, 4.0, 1.0, 0.08)), ((4, 5), Price(1.0, 5.0, 1.25, 0.1)),
              ((5, 5), Price(0.1, 0.5, 0.125, 0.01, long_prompt=Price(0.5, 2.5, 0.625, 0.05)))],
}
# The exact versions on the page; a version between two entries (e.g. Fable 5.2) is "nearest earlier".
PUBLISHED = {("fable", (5, 0)), ("fable", (5, 1)), ("mythos", (5, 0)), ("mythos", (5, 1)), ("opus", (4, 0)),
             ("opus", (4, 1)), ("opus", (4, 5)), ("opus", (4, 6)), ("opus", (4, 7)), ("opus", (4, 8)),
             ("opus", (5, 0)), ("opus", (5, 5)), ("sonnet", (4, 0)), ("sonnet", (4, 5)), ("sonnet", (4, 6)),
             ("sonnet", (5, 0)), ("sonnet", (5, 5)), ("haiku", (3, 5)), ("haiku", (4, 5)), ("haiku", (5, 5))}
DEFAULT = TABLE["sonnet"][-1][1]


def price_for(model: str, override: dict[str, float] | None = None) -> tuple[Price, str | None]:
    """The price of `model` and, when it is a guess, one line saying so."""
    if override:
        return Price(float(override["input"]), float(override["output"]), float(override["cache_write"]),
                     float(override["cache_read"])), None
    fv = family_version(model)
    if fv is None:
        return DEFAULT, (f"no published price known for {model}; costs are counted at the latest Sonnet's "
                         f"(set [agent.prices] in cockpit.toml)")
    family, version = fv
    rows = [(v, p) for v, p in TABLE[family] if v <= version] or TABLE[family][:1]
    v, p = rows[-1]
    if (family, version) in PUBLISHED:
        return p, None
    return p, (f"no published price known for {model} (prices of {PRICES_DATE}); counted as {family} "
               f"{v[0]}.{v[1]} (set [agent.prices] in cockpit.toml)")


PRICE_KEYS = ("input", "output", "cache_write", "cache_read")
