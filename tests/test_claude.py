"""Claude as the researcher: the real anthropic SDK over real HTTP against a local fake
Messages API (tests/fake_anthropic.py) that streams scripted SSE replies."""

from __future__ import annotations

import json
import secrets
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import events as ev
from engine.agents.base import Context, PastExperiment, ProposalRejected
from engine.agents.claude import Claude, ClaudeConfig
from engine.store.journal import Journal
from engine.tools import Tools
from fake_anthropic import FakeAnthropic, HttpError, Stream, Text, Thinking, ToolUse, Usage
from fake_models import prompt_tokens

KEY = "fake-key-" + secrets.token_hex(12)  # made up per run: never a real key
ROOT = Path(__file__).resolve().parents[1]


def first_text(body: dict) -> str:
    """The text of the first (prompt) message of a request."""
    content = body["messages"][0]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def usage(i=1200, o=300, cw=900, cr=0):
    return Usage(input_tokens=i, output_tokens=o, cache_creation_input_tokens=cw, cache_read_input_tokens=cr)


def edit_then_submit(old="MATRIX_LR = 0.04", new="MATRIX_LR = 0.05", desc="MATRIX_LR 0.04 -> 0.05: faster early progress",
                     path="trainer/train.py"):
    return [
        Stream([Thinking("The loss is still falling at the end; a larger matrix LR may help."),
                Text("I will raise MATRIX_LR."),
                ToolUse("edit_file", {"path": path, "old_string": old, "new_string": new})],
               stop_reason="tool_use", usage=usage()),
        Stream([ToolUse("submit", {"description": desc})], stop_reason="tool_use", usage=usage(i=1500, o=80, cw=0, cr=900)),
    ]


# ---- the whole loop, through the CLI: a scripted session ----

def test_a_scripted_claude_session_edits_train_py_and_the_experiment_is_recorded(tmp_path, tiny_cache):
    from conftest import use_light_trainer

    ws = tmp_path / "ws"
    subprocess.run([sys.executable, "-m", "cockpit", "init", str(ws)], check=True, capture_output=True)
    # the agent is the subject: the light trainer, whose one experiment a busy machine cannot push
    # over its budget (the bundled trainer's first step can outlast a 1.5 s budget there)
    use_light_trainer(ws, baseline_runs=1)
    edit = edit_then_submit("LEARNING_RATE = 0.01", "LEARNING_RATE = 0.02", "LEARNING_RATE 0.01 -> 0.02: faster early progress")
    with FakeAnthropic(edit) as fake:
        env = dict(os.environ, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=fake.base_url)
        r = subprocess.run(
            [sys.executable, "-m", "cockpit", "--cache-dir", str(tiny_cache), "run", "--headless", "--json",
             "--workspace", str(ws), "--budget", "1.5", "--device", "cpu", "--max-experiments", "1", "--tag", "c"],
            capture_output=True, text=True, env=env, timeout=1800,  # only catches a hang: runs on a busy machine take minutes
        )
        assert r.returncode == 0, r.stderr + r.stdout[-2000:]
        requests = [q for q in fake.requests if q["path"].endswith("/v1/messages")]
        assert [q["path"] for q in fake.requests][0] == "/v1/models/claude-sonnet-5-5"  # asked once, at the start
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert "agent: claude" in events[0]["text"]
    kinds = {e["type"] for e in events}
    assert {"AgentThinking", "AgentText", "ToolCalled", "ExperimentFinished"} <= kinds
    tools_called = [e["name"] for e in events if e["type"] == "ToolCalled"]
    assert tools_called == ["edit_file", "submit"]

    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("c")
    e = j.experiment(s.id, 2)
    assert e.description == "LEARNING_RATE 0.01 -> 0.02: faster early progress"
    assert e.status in ("keep", "discard") and e.metric is not None
    diff = subprocess.run(["git", "diff", e.parent_commit, e.commit_sha], cwd=ws, capture_output=True, text=True).stdout
    assert "+LEARNING_RATE = 0.02" in diff
    # per-experiment token and cost accounting
    assert (e.tokens_in, e.tokens_out, e.cache_write, e.cache_read) == (2700, 380, 900, 900)
    # Sonnet 5.5's published prices: $2 in, $10 out, $2.50 cache writes, $0.10 cache hits per million
    assert e.cost_usd == pytest.approx((2700 * 2 + 380 * 10 + 900 * 2.5 + 900 * 0.1) / 1e6)
    assert j.total_cost(s.id) == pytest.approx(e.cost_usd)
    # the system prompt carries the rules and program.md, marked for caching; the tools are exact
    body = requests[0]["body"]
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "program.md" in body["system"][0]["text"] and (ws / "program.md").read_text().strip()[:40] in body["system"][0]["text"]
    assert [t["name"] for t in body["tools"]] == ["read_file", "edit_file", "write_file", "results", "show_experiment", "note", "submit"]
    # the default model takes adaptive thinking only, with an effort; its thinking text is asked for
    assert body["model"] == "claude-sonnet-5-5"
    assert body["thinking"] == {"type": "adaptive", "display": "summarized"}
    assert body["output_config"] == {"effort": "high"}
    assert fake.rejected == []
    assert "LEARNING_RATE = 0.01" in first_text(body)  # the best code is in the context
    # the key: sent to the API, and nowhere else
    assert any(KEY in json.dumps(q["headers"]) for q in requests)
    hits = [str(p) for p in ws.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert hits == []
    assert KEY not in r.stdout and KEY not in r.stderr
    assert all(KEY not in json.dumps(x) for x in j.events(s.id))


# ---- the agent on its own, against the fake API ----

def make_ctx(ws: Path, n=3, **kw) -> Context:
    files = {"value.py": (ws / "value.py").read_text()}
    base = dict(program="Lower the metric.", files=files, history=[PastExperiment(1, "keep", 10.0, None, "baseline 1/1", "")],
                human_notes=[], agent_notes=[], direction="min", profile="", seed=1, n=n, metric="metric", best_metric=10.0, noise=0.0)
    base.update(kw)
    return Context(**base)


@pytest.fixture
def ws(tmp_path):
    d = tmp_path / "ws"
    d.mkdir()
    (d / "value.py").write_text("VALUE = 10.0\n")
    return d


def agent(fake, sleeps=None, **cfg):
    cfg.setdefault("sdk_retries", 0)
    return Claude(KEY, ClaudeConfig(base_url=fake.base_url, **cfg), sleep=(sleeps.append if sleeps is not None else lambda s: None))


def run_propose(a, ws, ctx=None):
    got = []
    tools = Tools(ws, ["value.py"])
    p = a.propose(ctx or make_ctx(ws), tools, got.append)
    return p, got, tools


def value_edit(desc="VALUE 10 -> 9"):
    return edit_then_submit(old="VALUE = 10.0", new="VALUE = 9.0", desc=desc, path="value.py")


def test_a_529_is_waited_out_and_the_proposal_completes(ws):
    with FakeAnthropic([HttpError(529, "overloaded_error", "Overloaded", retry_after=0.01), *value_edit()]) as fake:
        sleeps = []
        p, got, _ = run_propose(agent(fake, sleeps), ws)
    assert p.description == "VALUE 10 -> 9"
    waits = [e for e in got if isinstance(e, ev.Waiting)]
    assert len(waits) == 1 and "529" in waits[0].reason and sleeps == [waits[0].seconds]
    assert (ws / "value.py").read_text() == "VALUE = 9.0\n"


def test_the_sdk_retries_a_529_itself_before_the_outer_wait(ws):
    with FakeAnthropic([HttpError(529, "overloaded_error", "Overloaded", retry_after=0.01), *value_edit()]) as fake:
        p, got, _ = run_propose(agent(fake, sdk_retries=2), ws)
        assert len([q for q in fake.requests if q["path"].endswith("/messages")]) == 3
    assert p.description == "VALUE 10 -> 9" and not [e for e in got if isinstance(e, ev.Waiting)]


def test_an_error_in_the_middle_of_a_stream_retries_the_request(ws):
    first, second = value_edit()
    broken = Stream(first.blocks, stop_reason="tool_use", usage=usage(), error_after=4)
    with FakeAnthropic([broken, first, second]) as fake:
        p, got, _ = run_propose(agent(fake), ws)
    assert p.description == "VALUE 10 -> 9"
    assert any(isinstance(e, ev.Waiting) and "stream" in e.reason for e in got)


def test_a_path_outside_the_workspace_comes_back_as_a_tool_error(ws, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("do not touch")
    script = [
        Stream([ToolUse("write_file", {"path": "../outside.txt", "content": "pwned"})], stop_reason="tool_use", usage=usage()),
        Stream([ToolUse("edit_file", {"path": str(outside), "old_string": "do", "new_string": "did"})], stop_reason="tool_use", usage=usage()),
        *value_edit(),
    ]
    with FakeAnthropic(script) as fake:
        p, got, _ = run_propose(agent(fake), ws)
        bodies = [q["body"] for q in fake.requests if q["path"].endswith("/messages")]
    assert outside.read_text() == "do not touch"
    assert p.description == "VALUE 10 -> 9"
    result = bodies[1]["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["is_error"] is True and "error" in result["content"]
    refused = [e for e in got if isinstance(e, ev.ToolCalled) and not e.ok]
    assert [e.name for e in refused] == ["write_file", "edit_file"]


def test_malformed_tool_input_and_unknown_tools_are_tool_errors(ws):
    script = [
        Stream([ToolUse("edit_file", {"path": "value.py"}), ToolUse("shell", {"cmd": "rm -rf /"})], stop_reason="tool_use", usage=usage()),
        *value_edit(),
    ]
    with FakeAnthropic(script) as fake:
        p, got, _ = run_propose(agent(fake), ws)
        body = [q["body"] for q in fake.requests if q["path"].endswith("/messages")][1]
    errors = [c for c in body["messages"][-1]["content"] if c["is_error"]]
    assert len(errors) == 2 and "old_string" in errors[0]["content"] and "unknown tool" in errors[1]["content"]
    assert p.description == "VALUE 10 -> 9"


def test_a_submit_that_does_not_compile_goes_back_then_the_proposal_is_skipped(ws):
    bad = Stream([ToolUse("edit_file", {"path": "value.py", "old_string": "VALUE = 10.0", "new_string": "VALUE = = 1"})],
                 stop_reason="tool_use", usage=usage())
    submit = lambda: Stream([ToolUse("submit", {"description": "x"})], stop_reason="tool_use", usage=usage())  # noqa: E731
    with FakeAnthropic([bad, submit(), submit(), submit()]) as fake:
        with pytest.raises(ProposalRejected, match="does not compile"):
            run_propose(agent(fake), ws)
        bodies = [q["body"] for q in fake.requests if q["path"].endswith("/messages")]
    assert "does not compile" in bodies[2]["messages"][-1]["content"][0]["content"]


def test_an_edited_program_md_reaches_the_next_proposal_as_a_diff(ws):
    with FakeAnthropic([*value_edit(), *value_edit("again")]) as fake:
        a = agent(fake)
        run_propose(a, ws, make_ctx(ws, program="Lower the metric."))
        (ws / "value.py").write_text("VALUE = 10.0\n")
        run_propose(a, ws, make_ctx(ws, n=4, program="Lower the metric. Prefer small steps."))
        bodies = [q["body"] for q in fake.requests if q["path"].endswith("/messages")]
    first_prompt, next_prompt = first_text(bodies[0]), first_text(bodies[2])
    assert "changed program.md" not in first_prompt
    assert "The human changed program.md" in next_prompt and "+Lower the metric. Prefer small steps." in next_prompt
    assert "Prefer small steps." in bodies[2]["system"][0]["text"]


def test_the_prompt_stays_under_the_token_budget_with_a_long_history(ws):
    hist = [PastExperiment(i, "discard", 10.0 + i / 1000, 0.001, f"idea number {i} " + "x" * 80, "-a\n+b\n" * 200) for i in range(1, 400)]
    with FakeAnthropic([]) as fake:
        a = agent(fake, context_tokens=8000)
        prompt = a.build_prompt(make_ctx(ws, n=400, history=hist))
    from engine.agents.claude import estimate_tokens

    assert estimate_tokens(prompt) <= 8000
    assert "earlier experiments" in prompt and "| 399 |" in prompt  # old rows condensed, newest kept


def test_each_conversation_is_told_what_the_others_are_trying(ws):
    from engine.agents.base import InFlight

    hist = [PastExperiment(1, "keep", 10.0, None, "baseline 1/1", "")]
    others = (InFlight(2, "VALUE 10 -> 9", "-VALUE = 10.0\n+VALUE = 9.0\n", "running"),
              InFlight(4, "VALUE 10 -> 12", "-VALUE = 10.0\n+VALUE = 12.0\n", "prepared"))
    with FakeAnthropic([]) as fake:
        a = agent(fake)
        beside = a.build_prompt(make_ctx(ws, n=5, history=hist, in_flight=others))
        alone = a.build_prompt(make_ctx(ws, n=3, history=hist))
    assert "## In flight: experiments training or prepared now, beside yours" in beside
    assert "### #2 (running): VALUE 10 -> 9" in beside and "+VALUE = 9.0" in beside
    assert "### #4 (prepared): VALUE 10 -> 12" in beside and "+VALUE = 12.0" in beside
    assert "Do not repeat any of these changes" in beside
    assert "In flight" not in alone


def test_a_refused_key_stops_with_a_clear_reason(ws):
    from engine.agents.base import AgentFatal

    with FakeAnthropic([HttpError(401, "authentication_error", "invalid x-api-key")], models_api=False) as fake:
        with pytest.raises(AgentFatal, match="refused the key"):
            run_propose(agent(fake), ws)


def test_near_the_budget_the_prompt_is_measured_with_count_tokens(ws):
    hist = [PastExperiment(i, "discard", 10.0, 0.001, f"idea {i} " + "y" * 60, "-a\n+b\n" * 50) for i in range(1, 120)]
    with FakeAnthropic(value_edit()) as fake:
        a = agent(fake, context_tokens=9000)
        run_propose(a, ws, make_ctx(ws, n=120, history=hist))
        counts = [q for q in fake.requests if q["path"].endswith("/count_tokens")]
        first = [q for q in fake.requests if q["path"].endswith("/v1/messages")][0]["body"]
    assert counts, "a prompt near the budget is counted by the API"
    assert prompt_tokens(first) <= 9000  # the fake counts a token per 4 characters of the request
