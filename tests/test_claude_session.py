"""Whole headless sessions with the Claude agent: `cockpit run --headless` in a subprocess, the
real SDK over real HTTP against the fake Messages API (validating every request), a real git
workspace and journal."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time

import pytest

from engine.store.journal import Journal
from fake_anthropic import FakeAnthropic, HttpError, Stream, Text, Thinking, ToolUse, Usage
from test_engine import command_workspace

KEY = "fake-key-" + secrets.token_hex(12)  # made up per run: never a real key
FILES = {
    "value.py": "A = 1.0\nB = 1.0\nC = 1.0\n",
    "measure.py": "import value\nprint(f'metric: {value.A + value.B + value.C}')\n",
}


def workspace(tmp_path, agent_toml: str = ""):
    ws = command_workspace(tmp_path, FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    toml = (ws / "cockpit.toml").read_text() + textwrap.dedent(agent_toml)
    (ws / "cockpit.toml").write_text(toml)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "agent settings", "--allow-empty"], cwd=ws, check=True)
    return ws


def run(ws, fake, *extra, timeout=120):
    env = dict(os.environ, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=fake.base_url)
    env.pop("COCKPIT_MODEL", None)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "cockpit", "run", "--headless", "--workspace", str(ws), "--tag", "s", *extra],
                       capture_output=True, text=True, env=env, timeout=timeout)
    return r, t0, time.monotonic()


def u():
    return Usage(input_tokens=2000, output_tokens=300, cache_creation_input_tokens=1500, cache_read_input_tokens=0)


def change(var: str, think: str):
    """One proposal: think, edit one line, submit."""
    return [Stream([Thinking(think), ToolUse("edit_file", {"path": "value.py", "old_string": f"{var} = 1.0", "new_string": f"{var} = 0.5"})],
                   stop_reason="tool_use", usage=u()),
            Stream([ToolUse("submit", {"description": f"{var} 1.0 -> 0.5"})], stop_reason="tool_use", usage=u())]


def test_a_session_with_the_default_model_runs_three_experiments_through_an_overload_a_drop_and_a_stall(tmp_path):
    ws = workspace(tmp_path, """
        [agent]
        read_timeout = 1
    """)
    a, b, c = change("A", "Lower A first."), change("B", "Then B."), change("C", "Then C.")
    conversations = {  # two conversations run at once (N + 1 in flight on one slot): each has its own replies
        2: [HttpError(529, "overloaded_error", "Overloaded"), HttpError(529, "overloaded_error", "Overloaded"),
            HttpError(529, "overloaded_error", "Overloaded"),  # the SDK's two retries, then the outer back-off
            *a],
        3: [Stream([Thinking("Then B, since A helped."), Text("Editing B")], drop_after=4),  # the connection drops
            *b],
        4: [Stream([Thinking("Then C.")], stall_after=3, stall=20),  # the stream goes silent
            *c],
    }
    with FakeAnthropic(by_experiment=conversations) as fake:
        r, _, _ = run(ws, fake, "--max-experiments", "3")
        assert fake.rejected == []
        assert fake.remaining == 0
        paths = [q["path"] for q in fake.requests]
    assert r.returncode == 0, r.stderr + r.stdout[-3000:]
    assert paths[0] == "/v1/models/claude-sonnet-5-5"
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("s")
    rows = [e for e in j.experiments(s.id) if e.kind == "experiment"]
    assert [e.description for e in rows] == ["A 1.0 -> 0.5", "B 1.0 -> 0.5", "C 1.0 -> 0.5"]
    assert [e.status for e in rows] == ["keep", "keep", "keep"]
    assert (ws / "value.py").read_text() == "A = 0.5\nB = 0.5\nC = 0.5\n"
    out = r.stdout
    assert "529" in out and "cut" in out and "stalled" in out  # each wait was said
    assert all(e.cost_usd > 0 for e in rows)


def test_a_402_mid_session_stops_it_within_seconds_in_one_line_with_no_crash_row(tmp_path):
    ws = workspace(tmp_path)
    # #2 and #3 are proposed during the baseline (N + 1 in flight on one slot); #4 while #3 trains
    conversations = {2: change("A", "Lower A."), 3: change("B", "Then B."),
                     4: [HttpError(402, "billing_error", "Your credit balance is too low to access the Anthropic API.")]}
    with FakeAnthropic(by_experiment=conversations) as fake:
        r, _, end = run(ws, fake, "--max-experiments", "5")
        billing = [q for q in fake.message_requests][-1]["time"]
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("cockpit: error:")]
    assert len(errors) == 1 and "credit" in errors[0] and "billing" in errors[0]
    assert end - billing < 5
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("s")
    rows = j.experiments(s.id)
    assert [e.status for e in rows][:1] == ["keep"] and rows[-1].status == "interrupted"
    assert "crash" not in [e.status for e in rows]
    assert all("credit" in e.reason for e in rows if e.status == "interrupted")  # #2 too, if it was still running
    assert s.status == "stopped" and "credit" in s.stop_reason


def test_a_402_while_a_run_trains_ends_that_run_at_once(tmp_path):
    """The next proposal is prepared while a run trains; a fatal answer ends the run too."""
    ws = workspace(tmp_path)
    toml = (ws / "cockpit.toml").read_text().replace('run = "python3 -c pass"', 'run = "python3 -c \'import time; time.sleep(60)\'"')
    (ws / "cockpit.toml").write_text(toml)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "a long run"], cwd=ws, check=True)
    billing = HttpError(402, "billing_error", "Your credit balance is too low to access the Anthropic API.")
    with FakeAnthropic(by_experiment={2: [billing], 3: [billing]}) as fake:
        r, _, end = run(ws, fake, "--max-experiments", "5")
        billing = fake.message_requests[-1]["time"]
    assert r.returncode == 1 and end - billing < 5, r.stderr
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    rows = j.experiments(j.session_by_tag("s").id)
    # the baseline run, and the two proposals in flight beside it (N + 1 on one slot)
    assert [e.kind for e in rows] == ["baseline", "experiment", "experiment"]
    assert all(e.status == "interrupted" for e in rows)
    assert "credit" in rows[0].reason


def test_an_unknown_model_or_a_refused_key_stops_before_anything_runs(tmp_path):
    ws = workspace(tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout
    with FakeAnthropic([]) as fake:
        r, t0, end = run(ws, fake, "--model", "claude-sonet-5-5")
        asked = fake.requests[0]["time"]  # from the API's answer (Python's own start-up is not the session's)
    assert r.returncode == 2 and end - asked < 5
    assert r.stderr.count("\n") == 1 and "claude-sonet-5-5" in r.stderr and "--model" in r.stderr
    assert not (ws / ".cockpit" / "journal.sqlite").exists()  # no session, no branch, nothing run
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout == head

    with FakeAnthropic([], valid_keys={"fake-key-of-someone-else"}) as fake:
        r, t0, end = run(ws, fake)
        asked = fake.requests[0]["time"]
    assert r.returncode == 2 and end - asked < 5
    assert r.stderr.count("\n") == 1 and "refused the key" in r.stderr
    assert not (ws / ".cockpit" / "journal.sqlite").exists()


def test_json_events_never_carry_the_key(tmp_path):
    ws = workspace(tmp_path)
    with FakeAnthropic(change("A", "Lower A.")) as fake:
        r, _, _ = run(ws, fake, "--max-experiments", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert KEY not in r.stdout and KEY not in r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert any(e["type"] == "AgentThinking" and e["text"] for e in events)


def test_agent_settings_in_cockpit_toml_reach_the_requests_and_the_journal(tmp_path):
    ws = workspace(tmp_path, """
        [agent]
        model = "claude-opus-4-7"
        thinking = "off"
        max_tokens = 9000

        [agent.prices]
        input = 1.0
        output = 2.0
        cache_write = 4.0
        cache_read = 8.0
    """)
    script = [Stream([ToolUse("edit_file", {"path": "value.py", "old_string": "A = 1.0", "new_string": "A = 0.5"})],
                     stop_reason="tool_use", usage=u()),
              Stream([ToolUse("submit", {"description": "A 1.0 -> 0.5"})], stop_reason="tool_use", usage=u())]
    with FakeAnthropic(script) as fake:
        r, _, _ = run(ws, fake, "--max-experiments", "1")
        first = fake.message_requests[0]["body"]
    assert r.returncode == 0, r.stderr
    assert first["model"] == "claude-opus-4-7" and first["thinking"] == {"type": "disabled"} and first["max_tokens"] == 9000
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    e = [x for x in j.experiments(j.session_by_tag("s").id) if x.kind == "experiment"][0]
    assert e.cost_usd == pytest.approx(2 * (2000 * 1.0 + 300 * 2.0 + 1500 * 4.0) / 1e6)


@pytest.mark.parametrize("toml, said", [
    ('[agent]\nthinking = "sometimes"\n', "[agent].thinking must be one of"),
    ('[agent]\neffort = "extreme"\n', "[agent].effort must be one of"),
    ('[agent]\nread_timeout = 0\n', "[agent].read_timeout must be a number of seconds > 0"),
    ('[agent.prices]\ninput = 1.0\noutput = 2.0\n', "missing: cache_write"),
    ('[agent.prices]\ninput = 1.0\noutput = 2.0\ncache_write = 1\ncache_read = "x"\n', "[agent.prices].cache_read must be"),
])
def test_bad_agent_settings_are_one_clear_line_and_change_nothing(tmp_path, toml, said):
    ws = workspace(tmp_path)
    (ws / "cockpit.toml").write_text((ws / "cockpit.toml").read_text() + toml)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "bad"], cwd=ws, check=True)
    with FakeAnthropic([]) as fake:
        r, _, _ = run(ws, fake)
        assert fake.requests == []
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and said in r.stderr, r.stderr
    assert not (ws / ".cockpit" / "journal.sqlite").exists()


def test_a_stop_reaches_every_proposal_waiting_out_the_api(tmp_path):
    """Each proposal runs in its own thread, and the Claude agent keeps its interrupt per thread:
    the engine hands every proposal's thread the stop. A SIGTERM while two proposals wait out an
    overloaded API (the back-off doubles: 2, 4, 8, 16, 32 s) ends the session in seconds, not
    after the wait."""
    import signal

    ws = workspace(tmp_path)
    overloaded = HttpError(529, "overloaded_error", "Overloaded")
    env = dict(os.environ, ANTHROPIC_API_KEY=KEY)
    env.pop("COCKPIT_MODEL", None)
    with FakeAnthropic(by_experiment={2: [overloaded] * 40, 3: [overloaded] * 40}) as fake:
        env["ANTHROPIC_BASE_URL"] = fake.base_url
        proc = subprocess.Popen([sys.executable, "-m", "cockpit", "run", "--headless", "--workspace", str(ws), "--tag", "s"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            long_waits = 0
            for line in proc.stdout:  # the baseline runs; both proposals then wait out the API
                long_waits += "retry in 32s" in line
                if long_waits >= 2:
                    break
            assert long_waits >= 2, "the proposals never waited 32 s"
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=100)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
    # 0.5 s here; a thread that never got the stop is waited for ~10 s (the engine's join) and then left
    assert took < 6, f"the session took {took:.1f}s to stop: a proposal's thread waited out its back-off"
