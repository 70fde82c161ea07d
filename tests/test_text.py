"""Text the agent or train.py wrote never reaches a terminal, the TUI or the report with control
sequences in it (issue #22, point 22: OSC 52 wrote the human's clipboard, OSC 0 the window title,
cursor-up and erase-line hid a real line and drew a fake green `#9 KEEP`)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import events as ev
from cockpit.headless import Printer
from engine.store.journal import Journal
from fake_anthropic import FakeAnthropic, Stream, Thinking, ToolUse
from harness.runner import log_tail
from harness.text import printable
from test_claude_session import run, u, workspace

CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4=\x07"  # OSC 52: sets the clipboard to "rm -rf ~"
TITLE = "\x1b]0;pwned\x1b\\"  # OSC 0: the window title, ended by ST
FAKE_LINE = "\x1b[1A\x1b[2K\r\x1b[32m#9 KEEP val_bpb 0.412345\x1b[0m"  # up, erase, a green fake verdict
ANY_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize("raw, shown", [
    ("plain text, unchanged", "plain text, unchanged"),
    ("tabs\tand\nnewlines stay", "tabs\tand\nnewlines stay"),
    ("ünïcödé · Δ −0.01 σ", "ünïcödé · Δ −0.01 σ"),
    (f"a{CLIPBOARD}b", "ab"),
    (f"a{TITLE}b", "ab"),
    ("a\x1b]2;title\x9cb", "ab"),  # OSC ended by the 8-bit ST
    (FAKE_LINE, "\n#9 KEEP val_bpb 0.412345"),  # the sequences go whole; the text is plain, on its own line
    ("a\x9b31mb", "ab"),  # the 8-bit CSI
    ("a\x1bPqDCS payload\x1b\\b", "ab"),  # a device control string
    ("a\x1b]52;c;unterminated\nthe next line", "a\nthe next line"),  # an unterminated OSC ends at the line
    ("bell\x07 backspace\x08 del\x7f nul\x00", "bell backspace del nul"),
    ("progress 10%\rprogress 20%", "progress 10%\nprogress 20%"),  # \r cannot overwrite a line
    ("safe\u202eevil", "safeevil"),  # a bidirectional override reorders what follows
    ("a\x1b7b\x1b8c\x1bcd", "abcd"),  # save/restore cursor, reset
])
def test_printable_removes_every_control_sequence_whole(raw, shown):
    assert printable(raw) == shown


def test_events_carry_no_control_sequences():
    e = ev.ExperimentFinished(n=5, commit="abc1234", status="crash", metric=None, delta=None, confidence=None,
                              best_metric=3.2, description=f"lr up{TITLE}", reason=f"ValueError: {CLIPBOARD}{FAKE_LINE}")
    assert not ANY_CONTROL.search(e.description + e.reason)
    assert e.description == "lr up"
    assert ev.AgentText(n=5, text=f"I will{CLIPBOARD} try").text == "I will try"


def test_the_headless_printer_cannot_be_made_to_draw_a_fake_line():
    out = io.StringIO()
    p = Printer(out=out)
    p(ev.Notice(text="plain"))
    # even a line built past the events' own cleaning (a subclass, an old journal's text) is cleaned
    p._write(0.0, f"#5 CRASH  lr up — {FAKE_LINE}\nmore")
    text = out.getvalue()
    assert not ANY_CONTROL.search(text.replace("\n", ""))
    lines = text.splitlines()
    # the reason's own newlines continue the event's line, indented: no line starts like a verdict
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) or line.startswith(" " * 9 + "| ") for line in lines)
    assert not any(re.match(r"\d\d:\d\d:\d\d #9 KEEP", line) for line in lines)


def test_a_session_whose_agent_and_code_write_control_sequences_shows_none_of_them(tmp_path):
    """The real path: Claude (through the fake API) thinks and describes with escape sequences, its
    code crashes with them in the exception's message; the headless output, `cockpit status`, the
    report and results.tsv carry none, and the journal keeps the text (nothing is lost)."""
    ws = workspace(tmp_path)
    crash = f'raise RuntimeError("boom {CLIPBOARD!r}{FAKE_LINE!r}")'.replace("'", "")  # escapes as \\x1b source text
    proposal = [
        Stream([Thinking(f"Crash it.{CLIPBOARD}"),
                ToolUse("edit_file", {"path": "value.py", "old_string": "A = 1.0", "new_string": f"A = 1.0\n{crash}"})],
               stop_reason="tool_use", usage=u()),
        Stream([ToolUse("submit", {"description": f"make it crash{TITLE}{FAKE_LINE}"})], stop_reason="tool_use", usage=u()),
    ]
    with FakeAnthropic(by_experiment={2: proposal}) as fake:
        r, _, _ = run(ws, fake, "--max-experiments", "1")
    assert r.returncode == 0, r.stderr + r.stdout[-3000:]
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    sid = j.session_by_tag("s").id
    row = [e for e in j.experiments(sid) if e.kind == "experiment"][0]
    assert row.status == "crash"
    tail = log_tail(Path(row.log_path))  # what the TUI shows of the run's log
    assert "boom" in tail and not ANY_CONTROL.search(tail.replace("\n", ""))
    raw = j.db.execute("SELECT description FROM experiments WHERE session_id=? AND n=?", (sid, row.n)).fetchone()[0]
    assert "\x1b]0;pwned" in raw  # the journal keeps what the agent wrote; readers get it clean

    status = subprocess.run([sys.executable, "-m", "cockpit", "status", "--workspace", str(ws), "--tag", "s"],
                            capture_output=True, text=True)
    report = subprocess.run([sys.executable, "-m", "cockpit", "report", "--workspace", str(ws), "--tag", "s",
                             "--out", str(tmp_path / "report")], capture_output=True, text=True)
    assert status.returncode == 0 and report.returncode == 0, status.stderr + report.stderr
    shown = {
        "headless output": r.stdout + r.stderr,
        "cockpit status": status.stdout,
        "report.md": (tmp_path / "report" / "report.md").read_text(),
        "results.tsv": (ws / ".cockpit" / "results.tsv").read_text(),
    }
    assert "make it crash" in shown["headless output"] and "make it crash" in shown["cockpit status"]
    for where, text in shown.items():
        assert not ANY_CONTROL.search(text.replace("\n", "").replace("\t", "")), where
        assert not any(re.match(r"(\d\d:\d\d:\d\d )?#9 KEEP", line) for line in text.splitlines()), where


async def test_the_diff_pane_shows_the_agents_code_and_log_without_control_sequences():
    from textual.app import App

    from cockpit.widgets.diff import DiffPane

    class One(App):
        def compose(self):
            yield DiffPane()

    async with One().run_test(size=(100, 20)) as pilot:
        pane = pilot.app.query_one(DiffPane)
        pane.show(f"#4 crash: x{TITLE}", f"+print('{CLIPBOARD}')", tail=f"Traceback{FAKE_LINE}", n=4)
        await pilot.pause()
        code = pane.body.content.code  # the Syntax the pane draws
        assert "print('')" in code and "Traceback" in code and "#9 KEEP" in code
        assert not ANY_CONTROL.search(code.replace("\n", "")) and "pwned" not in pane.border_title


def test_a_crash_reason_from_train_py_has_no_control_sequences(tmp_path, tiny_cache):
    """The reason of a crash is train.py's exception message: the harness cleans it, and the tail."""
    from test_runner import run_script

    r = run_script(tmp_path, tiny_cache, f"""
    from harness import runtime as rt
    raise RuntimeError("boom {CLIPBOARD!r}{TITLE!r}{FAKE_LINE!r}".replace("'", ""))
    """.replace("\\x", "\\\\x"))
    assert r.status == "crash" and "boom" in r.reason and "#9 KEEP" in r.reason
    for text in (r.reason, r.log_tail):
        assert not ANY_CONTROL.search(text.replace("\n", "")), text
