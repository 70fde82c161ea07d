"""The Claude agent against the API as it really behaves: model capabilities, thinking modes,
the three kinds of error, stop reasons, tool turns, prices and caching. The real anthropic SDK
over real HTTP, against the fake Messages API with validation on: a request the real API would
reject fails these tests."""

from __future__ import annotations

import secrets
import socket

import pytest

from engine import events as ev
from engine.agents.base import AgentFatal, Context, PastExperiment, ProposalRejected, ProposalSkipped
from engine.agents.claude import Claude, ClaudeConfig
from engine.agents.prices import price_for
from engine.tools import Tools
from fake_anthropic import FakeAnthropic, HttpError, Redacted, Stream, Text, Thinking, ToolUse, Usage
from fake_models import MODELS
from test_claude import ws  # noqa: F401 (a fixture: a folder with value.py)

KEY = "fake-key-" + secrets.token_hex(12)  # made up per run: never a real key


def ctx(ws, n=3, **kw) -> Context:
    base = dict(program="Lower the metric.", files={"value.py": (ws / "value.py").read_text()},
                history=[PastExperiment(1, "keep", 10.0, None, "baseline 1/1", "")], human_notes=[], agent_notes=[],
                direction="min", profile="", seed=1, n=n, metric="metric", best_metric=10.0, noise=0.0)
    base.update(kw)
    return Context(**base)


def agent(fake, sleeps=None, **cfg) -> Claude:
    cfg.setdefault("sdk_retries", 0)
    return Claude(KEY, ClaudeConfig(base_url=fake.base_url, **cfg),
                  sleep=(sleeps.append if sleeps is not None else (lambda s: None)))


def propose(a, ws, c=None):
    got = []
    tools = Tools(ws, ["value.py"])
    p = a.propose(c or ctx(ws), tools, got.append)
    return p, got


def u(i=1000, o=200, cw=0, cr=0):
    return Usage(input_tokens=i, output_tokens=o, cache_creation_input_tokens=cw, cache_read_input_tokens=cr)


def edit(old="VALUE = 10.0", new="VALUE = 9.0", think="Lower is better; try 9."):
    blocks = ([Thinking(think)] if think else []) + [ToolUse("edit_file", {"path": "value.py", "old_string": old, "new_string": new})]
    return Stream(blocks, stop_reason="tool_use", usage=u())


def submit(desc="VALUE 10 -> 9"):
    return Stream([ToolUse("submit", {"description": desc})], stop_reason="tool_use", usage=u())


def bodies(fake):
    return [q["body"] for q in fake.message_requests]


def cache_marks(body) -> list[str]:
    """Where the request's cache breakpoints are: "system", or "messages.i.content.j"."""
    out = ["system" for b in body["system"] if "cache_control" in b]
    for i, m in enumerate(body["messages"]):
        content = m["content"] if isinstance(m["content"], list) else []
        out += [f"messages.{i}.content.{j}" for j, b in enumerate(content) if "cache_control" in b]
    return out


# ---- 1. what the model can do decides the request ----

@pytest.mark.parametrize("model, thinking, output_config, max_tokens", [
    ("claude-sonnet-5-5", {"type": "adaptive", "display": "summarized"}, {"effort": "high"}, 16000),  # the default
    ("claude-opus-4-6", {"type": "adaptive", "display": "summarized"}, {"effort": "high"}, 16000),  # 4.6: adaptive preferred
    ("claude-haiku-4-5", {"type": "enabled", "budget_tokens": 8000}, None, 16000),  # 4.5: enabled only, no effort
    ("claude-fable-5-1", {"type": "adaptive", "display": "summarized"}, {"effort": "high"}, 16000),
])
def test_each_model_gets_the_thinking_it_takes_and_the_fake_accepts_every_request(ws, model, thinking, output_config, max_tokens):
    with FakeAnthropic([edit(), submit()]) as fake:
        a = agent(fake, model=model)
        assert a.prepare() == []  # active models, published prices: nothing to warn about
        p, got = propose(a, ws)
        first, second = bodies(fake)
    assert p.description == "VALUE 10 -> 9"
    assert first["thinking"] == thinking and first.get("output_config") == output_config
    assert first["max_tokens"] == max_tokens and "temperature" not in first
    assert cache_marks(first) == ["system", "messages.0.content.0"]
    assert cache_marks(second) == ["system", "messages.2.content.0"]  # the breakpoint moved to the newest turn
    # the thinking text reaches the reasoning pane (the 5.x default display would omit it)
    assert "".join(e.text for e in got if isinstance(e, ev.AgentThinking)) == "Lower is better; try 9."


def test_thinking_is_sent_back_unchanged_with_its_signature_and_redacted_blocks(ws):
    turn = Stream([Thinking("reasoning one"), Redacted(), Text("Editing."),
                   ToolUse("edit_file", {"path": "value.py", "old_string": "VALUE = 10.0", "new_string": "VALUE = 9.0"})],
                  stop_reason="tool_use", usage=u())
    with FakeAnthropic([turn, submit()]) as fake:
        propose(agent(fake), ws)
        sent = bodies(fake)[1]["messages"][1]["content"]
        issued = fake._issued_turn[turn.blocks[-1].id]
    assert [b["type"] for b in sent] == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert [{k: v for k, v in b.items() if k != "cache_control"} for b in sent] == issued


def test_a_changed_thinking_block_is_rejected_by_the_fake_as_by_the_api(ws):
    """The fake's check is real: a client that edits a thinking block is refused."""
    import anthropic

    with FakeAnthropic([edit()]) as fake:
        c = anthropic.Anthropic(api_key=KEY, base_url=fake.base_url, max_retries=0)
        msg = c.messages.create(model="claude-sonnet-5-5", max_tokens=4000, thinking={"type": "adaptive", "display": "summarized"},
                                messages=[{"role": "user", "content": "go"}])
        turn = [b.model_dump(exclude_none=True) for b in msg.content]
        turn[0]["thinking"] += " (edited)"
        with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):
            c.messages.create(model="claude-sonnet-5-5", max_tokens=4000, thinking={"type": "adaptive"},
                              messages=[{"role": "user", "content": "go"}, {"role": "assistant", "content": turn},
                                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": turn[1]["id"], "content": "ok"}]}])
        with pytest.raises(anthropic.BadRequestError, match='"thinking.type.enabled" is not supported for this model'):
            c.messages.create(model="claude-sonnet-5-5", max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000},
                              messages=[{"role": "user", "content": "go"}])
        with pytest.raises(anthropic.BadRequestError, match="all messages must have non-empty content"):
            c.messages.create(model="claude-haiku-4-5", max_tokens=100,
                              messages=[{"role": "user", "content": "go"}, {"role": "assistant", "content": []},
                                        {"role": "user", "content": "again"}])
        assert len(fake.rejected) == 3
        fake.rejected.clear()


@pytest.mark.parametrize("model, sent", [("claude-sonnet-5-5", {"type": "between_tools"}),
                                         ("claude-opus-4-7", {"type": "disabled"}),
                                         ("claude-haiku-4-5", {"type": "disabled"})])
def test_thinking_off_sends_what_turns_it_off_for_that_model(ws, model, sent):
    with FakeAnthropic([edit(think=None), submit()]) as fake:
        propose(agent(fake, model=model, thinking="off"), ws)
        first = bodies(fake)[0]
    assert first["thinking"] == sent and "output_config" not in first


@pytest.mark.parametrize("model, cfg, said", [
    ("claude-fable-5-1", dict(thinking="off"), "always thinks"),
    ("claude-sonnet-5-5", dict(thinking="enabled"), "does not take thinking 'enabled'"),
    ("claude-haiku-4-5", dict(thinking="adaptive"), "does not take thinking 'adaptive'"),
    ("claude-sonnet-5-5", dict(effort="xhigh"), "does not take effort 'xhigh'"),
])
def test_settings_the_model_does_not_take_stop_before_any_request(ws, model, cfg, said):
    with FakeAnthropic([]) as fake:
        with pytest.raises(AgentFatal, match=said):
            agent(fake, model=model, **cfg).prepare()
        assert fake.message_requests == []


def test_enabled_thinking_keeps_its_budget_inside_the_api_rules(ws):
    with FakeAnthropic([edit(), submit()]) as fake:
        propose(agent(fake, model="claude-sonnet-4-6", thinking="enabled", thinking_budget=500, max_tokens=1500), ws)
        first = bodies(fake)[0]
    budget = first["thinking"]["budget_tokens"]
    assert first["thinking"]["type"] == "enabled" and 1024 <= budget < first["max_tokens"]


def test_limits_are_clamped_to_the_model(ws):
    small = dict(MODELS["claude-sonnet-5-5"], max_tokens=8000, max_input_tokens=30000)
    hist = [PastExperiment(i, "discard", 10.0, 0.0, f"idea {i} " + "z" * 60, "-a\n+b\n" * 60) for i in range(1, 200)]
    with FakeAnthropic([edit(), submit()], models={"claude-small-1": small}) as fake:
        a = agent(fake, model="claude-small-1", max_tokens=16000, context_tokens=60000)
        propose(a, ws, ctx(ws, n=200, history=hist))
        first = bodies(fake)[0]
    assert first["max_tokens"] == 8000
    assert a.settings.context_tokens <= 30000 - 8000


def test_an_unknown_model_stops_in_one_line_naming_how_to_choose(ws):
    with FakeAnthropic([]) as fake:
        with pytest.raises(AgentFatal) as info:
            agent(fake, model="claude-sonet-5-5").prepare()
    line = str(info.value)
    assert "claude-sonet-5-5" in line and "--model" in line and "COCKPIT_MODEL" in line and "\n" not in line


def test_deprecated_is_a_warning_and_retired_a_stop(ws):
    with FakeAnthropic([]) as fake:
        assert any("deprecated" in x for x in agent(fake, model="claude-sonnet-4-5").prepare())
        with pytest.raises(AgentFatal, match="retired"):
            agent(fake, model="claude-opus-4-1-20250805").prepare()


def test_without_a_models_api_the_family_table_decides_and_says_so(ws):
    with FakeAnthropic([edit(), submit()], models_api=False) as fake:
        a = agent(fake)
        notices = a.prepare()
        propose(a, ws)
        first = bodies(fake)[0]
    assert any("no Models API" in x for x in notices)
    assert first["thinking"]["type"] == "adaptive"  # never `enabled` on a model of 4.7 or later


def test_without_a_models_api_an_unknown_model_stops_at_its_first_request(ws):
    with FakeAnthropic([edit()], models_api=False) as fake:
        a = agent(fake, model="claude-sonnet-9-9")
        with pytest.raises(AgentFatal, match="does not know the model"):
            propose(a, ws)
        assert len(fake.message_requests) == 1
        assert [r["status"] for r in fake.rejected] == [404]
        fake.rejected.clear()


# ---- 2. errors: transient (retried), deterministic (the proposal adapts), fatal (the session stops) ----

@pytest.mark.parametrize("reply, what", [
    (HttpError(529, "overloaded_error", "Overloaded"), "529"),
    (HttpError(520, "api_error", "Web server is returning an unknown error"), "520"),
    (HttpError(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", retry_after=3), "429"),
    (HttpError(408, "timeout_error", "Request timeout"), "408"),
    (Stream([Text("half a thou")], error_after=3), "stream error"),
    (Stream([Thinking("Let me think about the learning rate"), Text("I will")], drop_after=4), "cut"),
    (Stream([Thinking("Let me think about the learning rate")], stall_after=3), "stalled"),
    (Stream([Thinking("Let me think"), ToolUse("edit_file", {"path": "value.py", "old_string": "VALUE = 10.0", "new_string": "VALUE = 1.0"})],
            end_after=6), "ended before its last event"),  # the body ends cleanly, but without its stop reason
    (HttpError(429, "rate_limit_error", "Number of requests has exceeded your per-minute rate limit"), "429"),  # a gateway's, no retry-after
])
def test_transient_errors_are_waited_out_and_the_proposal_completes(ws, reply, what):
    with FakeAnthropic([reply, edit(), submit()]) as fake:
        sleeps = []
        p, got = propose(agent(fake, sleeps, read_timeout=0.5), ws)
    waits = [e for e in got if isinstance(e, ev.Waiting)]
    assert p.description == "VALUE 10 -> 9"
    assert len(waits) == 1 and what in waits[0].reason and sleeps == [waits[0].seconds]
    if what == "429" and reply.retry_after:
        assert sleeps == [3.0]  # the server's retry-after is honoured
    assert (ws / "value.py").read_text() == "VALUE = 9.0\n"


def test_a_refused_connection_is_retried(ws):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with FakeAnthropic([edit(), submit()]) as fake:
        a = Claude(KEY, ClaudeConfig(base_url=dead, sdk_retries=0), sleep=lambda s: None)
        a.spec, a.settings = None, None
        moved = []

        def sleep(seconds):  # the network comes back during the back-off
            moved.append(seconds)
            a.client = a.client.with_options(base_url=fake.base_url)

        a.sleep = sleep
        a.client = a.client.with_options(base_url=fake.base_url)
        a.prepare()
        a.client = a.client.with_options(base_url=dead)
        p, got = propose(a, ws)
    assert p.description == "VALUE 10 -> 9" and len(moved) == 1
    assert any(isinstance(e, ev.Waiting) and "connection" in e.reason for e in got)


@pytest.mark.parametrize("reply, said", [
    (HttpError(401, "authentication_error", "invalid x-api-key"), "refused the key"),
    (HttpError(403, "permission_error", "Your API key does not have permission to use the specified resource."), "may not do this"),
    (HttpError(402, "billing_error", "Your credit balance is too low to access the Anthropic API."), "cannot pay"),
    (HttpError(404, "not_found_error", "model: claude-sonnet-5-5"), "does not know the model"),
    (HttpError(429, "rate_limit_error", "You have reached your API usage limits: your organization has crossed its "
               "monthly API usage threshold, set based on your organization's API tier.",
               error_code="enforced_spend_limit_reached"), "usage limit"),
    (HttpError(429, "rate_limit_error", "You have reached your specified workspace API usage limits."), "usage limit"),
    (HttpError(400, "invalid_request_error", "tools.0.custom.name: String should match pattern"), "rejected cockpit's request"),
])
def test_fatal_errors_stop_at_once_with_one_line_and_are_never_retried(ws, reply, said):
    with FakeAnthropic([reply]) as fake:
        sleeps = []
        with pytest.raises(AgentFatal, match=said) as info:
            propose(agent(fake, sleeps), ws)
        assert len(fake.message_requests) == 1
    assert sleeps == [] and "\n" not in str(info.value)


def test_a_prompt_too_long_is_asked_again_with_a_smaller_context(ws):
    hist = [PastExperiment(i, "discard", 10.0, 0.0, f"idea {i} " + "q" * 60, "-a\n+b\n" * 40) for i in range(1, 150)]
    too_long = HttpError(400, "invalid_request_error", "prompt is too long: 205000 tokens > 200000 maximum")
    with FakeAnthropic([too_long, edit(), submit()]) as fake:
        p, got = propose(agent(fake, context_tokens=40000), ws, ctx(ws, n=150, history=hist))
        first, again = bodies(fake)[0], bodies(fake)[1]
    assert p.description == "VALUE 10 -> 9"
    assert len(again["messages"][0]["content"][0]["text"]) < 0.8 * len(first["messages"][0]["content"][0]["text"])
    assert any(isinstance(e, ev.Notice) and "too long" in e.text for e in got)


def test_a_reply_cut_at_max_tokens_is_asked_again_with_more_room_never_sent_back_half_made(ws):
    cut = Stream([Thinking("long"), ToolUse("edit_file", {"path": "value.py", "old_string": "VALUE = 10.0"})],
                 stop_reason="max_tokens", usage=u())
    with FakeAnthropic([cut, edit(), submit()]) as fake:
        p, got = propose(agent(fake, max_tokens=4000), ws)
        first, again, last = bodies(fake)
    assert p.description == "VALUE 10 -> 9"
    assert again["max_tokens"] == 8000 and len(again["messages"]) == 1  # the cut turn was dropped
    assert not any(isinstance(e, ev.ToolCalled) and "string" in e.summary for e in got)


def test_a_reply_cut_at_the_models_own_limit_skips_the_proposal(ws):
    small = dict(MODELS["claude-sonnet-5-5"], max_tokens=4000)
    cut = Stream([Text("a very long")], stop_reason="max_tokens", usage=u())
    with FakeAnthropic([cut], models={"claude-small-1": small}) as fake:
        with pytest.raises(ProposalSkipped, match="cut off at its limit of 4000"):
            propose(agent(fake, model="claude-small-1"), ws)


# ---- 3. stop reasons ----

REFUSAL = {"type": "refusal", "category": "cyber", "explanation": "This looks like exploit development."}


def test_a_refusal_starts_one_fresh_conversation_from_the_best_code(ws):
    refused = Stream([Text("I can't help")], stop_reason="refusal", stop_details=REFUSAL, usage=u())
    with FakeAnthropic([edit(new="VALUE = 1.0"), refused, edit(), submit()]) as fake:
        p, got = propose(agent(fake), ws)
        fresh = bodies(fake)[2]
    assert p.description == "VALUE 10 -> 9"
    assert len(fresh["messages"]) == 1  # a new conversation, not a continuation
    assert (ws / "value.py").read_text() == "VALUE = 9.0\n"  # the refused conversation's edit is gone
    assert any(isinstance(e, ev.Notice) and "exploit development" in e.text for e in got)


def test_a_second_refusal_skips_the_proposal_with_its_reason(ws):
    refused = lambda: Stream([Text("No.")], stop_reason="refusal", stop_details=REFUSAL, usage=u())  # noqa: E731
    with FakeAnthropic([refused(), refused()]) as fake:
        a = agent(fake)
        with pytest.raises(ProposalSkipped, match="refused twice"):
            propose(a, ws)
    assert a.last_usage.requests == 2 and a.last_usage.cost_usd > 0  # what it cost is still counted


def test_pause_turn_sends_the_turn_back_and_the_model_goes_on(ws):
    paused = Stream([Thinking("still working"), Text("Looking at the schedule.")], stop_reason="pause_turn", usage=u())
    with FakeAnthropic([paused, edit(), submit()]) as fake:
        p, _ = propose(agent(fake), ws)
        after = bodies(fake)[1]
    assert p.description == "VALUE 10 -> 9"
    assert [m["role"] for m in after["messages"]] == ["user", "assistant"]


def test_an_empty_turn_is_never_sent_back(ws):
    with FakeAnthropic([Stream([], usage=u()), Stream([Text("Thinking it over.")], usage=u()), edit(), submit()]) as fake:
        p, _ = propose(agent(fake), ws)
        msgs = [b["messages"] for b in bodies(fake)]
    assert p.description == "VALUE 10 -> 9"
    assert all(m["content"] for conv in msgs for m in conv)
    assert [m["role"] for m in msgs[1]] == ["user"]  # the nudge joined the user's turn
    assert msgs[2][-1]["role"] == "user" and "call submit" in msgs[2][-1]["content"][-1]["text"]


# ---- 4. tool turns ----

def test_submit_before_an_edit_in_one_turn_is_checked_after_the_edit(ws):
    bad = Stream([ToolUse("submit", {"description": "x"}),
                  ToolUse("edit_file", {"path": "value.py", "old_string": "VALUE = 10.0", "new_string": "VALUE = = 1"})],
                 stop_reason="tool_use", usage=u())
    fix = Stream([ToolUse("edit_file", {"path": "value.py", "old_string": "VALUE = = 1", "new_string": "VALUE = 8.0"}),
                  ToolUse("submit", {"description": "VALUE 10 -> 8"})], stop_reason="tool_use", usage=u())
    with FakeAnthropic([bad, fix]) as fake:
        p, got = propose(agent(fake), ws)
        results = bodies(fake)[1]["messages"][2]["content"]
    assert "does not compile" in results[0]["content"] and results[0]["is_error"]  # in the calls' order
    assert results[1]["is_error"] is False
    assert p.description == "VALUE 10 -> 8" and (ws / "value.py").read_text() == "VALUE = 8.0\n"


def test_submit_then_edit_in_one_turn_submits_the_edited_file(ws):
    turn = Stream([ToolUse("submit", {"description": "VALUE 10 -> 7"}),
                   ToolUse("edit_file", {"path": "value.py", "old_string": "VALUE = 10.0", "new_string": "VALUE = 7.0"})],
                  stop_reason="tool_use", usage=u())
    with FakeAnthropic([turn]) as fake:
        p, got = propose(agent(fake), ws)
    assert p.description == "VALUE 10 -> 7" and (ws / "value.py").read_text() == "VALUE = 7.0\n"
    assert [e.name for e in got if isinstance(e, ev.ToolCalled)] == ["edit_file", "submit"]


def test_three_bad_submits_still_reject_the_proposal(ws):
    nothing = lambda: Stream([ToolUse("submit", {"description": "x"})], stop_reason="tool_use", usage=u())  # noqa: E731
    with FakeAnthropic([nothing(), nothing(), nothing()]) as fake:
        with pytest.raises(ProposalRejected, match="not changed anything"):
            propose(agent(fake), ws)


# ---- 5. cost ----

@pytest.mark.parametrize("model, tokens, usd", [
    # (input, output, cache write, cache read) -> USD, by the published per-million prices
    ("claude-sonnet-5-5", (10_000, 2_000, 5_000, 20_000), 10_000 * 2 + 2_000 * 10 + 5_000 * 2.5 + 20_000 * 0.10),
    ("claude-fable-5-1", (10_000, 2_000, 5_000, 20_000), 10_000 * 10 + 2_000 * 50 + 5_000 * 12.5 + 20_000 * 0.25),
    ("claude-opus-5-5", (10_000, 2_000, 5_000, 20_000), 10_000 * 4 + 2_000 * 20 + 5_000 * 5 + 20_000 * 0.20),
    ("claude-sonnet-4-6", (10_000, 2_000, 5_000, 20_000), 10_000 * 3 + 2_000 * 15 + 5_000 * 3.75 + 20_000 * 0.30),
    ("claude-opus-4-7", (10_000, 2_000, 5_000, 20_000), 10_000 * 5 + 2_000 * 25 + 5_000 * 6.25 + 20_000 * 0.50),
    ("claude-haiku-5-5", (10_000, 2_000, 5_000, 20_000), 10_000 * 0.10 + 2_000 * 0.50 + 5_000 * 0.125 + 20_000 * 0.01),
    ("claude-haiku-5-5", (90_000, 2_000, 5_000, 20_000), 90_000 * 0.50 + 2_000 * 2.50 + 5_000 * 0.625 + 20_000 * 0.05),
    ("claude-sonnet-4-5-20250929", (1_000, 1_000, 0, 0), 1_000 * 3 + 1_000 * 15),
])
def test_published_prices(model, tokens, usd):
    price, guessed = price_for(model)
    assert guessed is None
    assert price.cost(*tokens) == pytest.approx(usd / 1e6)


def test_an_unpublished_version_is_priced_as_the_nearest_earlier_and_said_so():
    price, guessed = price_for("claude-fable-5-2")
    assert price == price_for("claude-fable-5-1")[0] and "fable 5.1" in guessed and "[agent.prices]" in guessed


def test_the_cost_of_a_proposal_adds_its_requests_at_the_models_prices_and_an_override_wins(ws):
    script = [Stream(edit().blocks, stop_reason="tool_use", usage=u(1200, 300, 900, 0)),
              Stream(submit().blocks, stop_reason="tool_use", usage=u(1500, 80, 0, 900))]
    with FakeAnthropic(list(script)) as fake:
        p, _ = propose(agent(fake, model="claude-opus-4-6"), ws)
    assert p.usage.cost_usd == pytest.approx((2700 * 5 + 380 * 25 + 900 * 6.25 + 900 * 0.5) / 1e6)
    (ws / "value.py").write_text("VALUE = 10.0\n")
    with FakeAnthropic([Stream(s.blocks, stop_reason="tool_use", usage=s.usage) for s in script]) as fake:
        prices = {"input": 1.0, "output": 2.0, "cache_write": 3.0, "cache_read": 4.0}
        p, _ = propose(agent(fake, model="claude-opus-4-6", prices=prices), ws)
    assert p.usage.cost_usd == pytest.approx((2700 * 1 + 380 * 2 + 900 * 3 + 900 * 4) / 1e6)


def test_a_long_conversation_keeps_at_most_two_breakpoints_the_last_on_the_newest_turn(ws):
    reads = [Stream([ToolUse("read_file", {"path": "value.py"})], stop_reason="tool_use", usage=u()) for _ in range(4)]
    with FakeAnthropic([*reads, edit(), submit()]) as fake:
        propose(agent(fake), ws)
        for b in bodies(fake):
            assert cache_marks(b) == ["system", f"messages.{len(b['messages']) - 1}.content.{len(b['messages'][-1]['content']) - 1}"]


def test_an_outage_of_the_models_api_at_start_falls_back_to_the_table_and_says_why(ws):
    with FakeAnthropic([edit(), submit()], models_error=HttpError(529, "overloaded_error", "Overloaded")) as fake:
        a = agent(fake)
        notices = a.prepare()
        p, _ = propose(a, ws)
    assert any("529" in x and "built-in table" in x for x in notices)
    assert p.description == "VALUE 10 -> 9" and bodies(fake)[0]["thinking"]["type"] == "adaptive"


def test_an_empty_text_block_is_not_sent_back(ws):
    turn = Stream([Text(" "), ToolUse("edit_file", {"path": "value.py", "old_string": "VALUE = 10.0", "new_string": "VALUE = 9.0"})],
                  stop_reason="tool_use", usage=u())
    with FakeAnthropic([turn, submit()]) as fake:
        p, _ = propose(agent(fake), ws)
        sent = bodies(fake)[1]["messages"][1]["content"]
    assert p.description == "VALUE 10 -> 9" and [b["type"] for b in sent] == ["tool_use"]


def test_a_fresh_conversation_restores_the_files_it_touched_and_leaves_others_alone(tmp_path):
    d = tmp_path / "ws"
    d.mkdir()
    (d / "value.py").write_text("VALUE = 10.0\n")
    (d / "blob.bin").write_bytes(b"\xff\xfe not utf-8")
    tools = Tools(d, ["value.py", "blob.bin"])
    snap = tools.snapshot()
    tools.edit_file("value.py", "VALUE = 10.0", "VALUE = 2.0")
    tools.write_file("blob.bin", "text now")
    tools.restore(snap)
    assert (d / "value.py").read_text() == "VALUE = 10.0\n" and (d / "blob.bin").read_bytes() == b"\xff\xfe not utf-8"
    assert tools.touched == set()


def test_an_id_the_family_table_cannot_read_takes_the_thinking_the_user_sets(ws):
    odd = dict(MODELS["claude-haiku-4-5"])
    with FakeAnthropic([edit(think=None), submit()], models={"my-gateway-model": odd}, models_api=False) as fake:
        a = agent(fake, model="my-gateway-model", thinking="off")
        a.prepare()
        propose(a, ws)
        first = bodies(fake)[0]
    assert first["thinking"] == {"type": "disabled"} and "output_config" not in first
