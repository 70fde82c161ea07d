"""A cockpit process's life as a user meets it (issue 22, A): one process per workspace, a lost
terminal, ctrl-c, and a terminal left behind by kill -9. Real processes, real pseudo-terminals
(the TUI's own controlling terminal, hung up by closing its master side as a killed tmux server
or a dropped SSH connection does), real signals, the real journal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine.store.journal import Journal
from engine.store.lock import Holder, describe, refusal
from cockpit.lifeline import sane_attrs
from test_cli import env
from test_engine import VALUE_FILES, cli, command_workspace, git

EXIT_WITHIN = 30  # seconds, generous for a loaded machine: before the fix the TUI never exited


def slow_workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace whose baseline is quick and whose every experiment says so on a FIFO, then
    trains (sleeps) for a minute: the test waits on the FIFO, not on a clock."""
    fifo = tmp_path / "started.fifo"
    os.mkfifo(fifo)
    slow = (f"import time, value\nif (value.VALUE, value.OTHER) != (10.0, 3):\n"
            f"    with open({str(fifo)!r}, 'w') as f:\n        f.write('started\\n')\n    time.sleep(60)\n")
    ws = command_workspace(tmp_path, dict(VALUE_FILES, **{"slowrun.py": slow}), ["value.py"], "python3 slowrun.py",
                           "python3 measure.py", baseline_runs=1)
    return ws, fifo


def wait_started(fifo: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Block until an experiment's run wrote to the FIFO (or fail if cockpit died first)."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and proc.poll() is None, f"no experiment started (cockpit exit status {proc.poll()})"
            if select.select([fd], [], [], min(left, 1.0))[0] and os.read(fd, 100):
                return
    finally:
        os.close(fd)


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    _, still = psutil.wait_procs(procs, timeout=10)
    return [p for p in still if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _take_terminal() -> None:  # in the child, after setsid: its stdin becomes its controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A pseudo-terminal that is cockpit's controlling terminal, read as a real one is."""

    def __init__(self, master: int | None = None, slave: int | None = None, rows: int = 40, cols: int = 120):
        if master is None:
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.master, self.slave = master, slave
        self.screen = bytearray()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def spawn(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "cockpit", *args], stdin=self.slave, stdout=self.slave,
                                stderr=self.slave, env=env(TERM="xterm-256color"), start_new_session=True,
                                preexec_fn=_take_terminal)
        self._stop.clear()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        return proc

    def _drain(self) -> None:
        try:
            while not self._stop.is_set():
                if select.select([self.master], [], [], 0.1)[0]:
                    self.screen.extend(os.read(self.master, 65536))
        except OSError:  # the other side is gone
            pass

    def stop_reading(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join()

    def hang_up(self) -> None:
        """What a killed tmux server or a dropped SSH connection does: the master side closes."""
        self.stop_reading()
        os.close(self.master)
        self.master = None

    def close(self) -> None:
        self.stop_reading()
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None

    def tail(self) -> str:
        return self.screen[-3000:].decode(errors="replace")


def runs_in(ws: Path) -> list[int]:
    """The workspace's training processes still alive (they run in the slots' checkouts, in
    sessions of their own)."""
    out = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if (p.info["cwd"] or "").startswith(str(ws)) and "slowrun.py" in " ".join(p.info["cmdline"] or []):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
        except psutil.Error:
            continue
    return out


def kill_all(proc: subprocess.Popen, ws: Path) -> None:
    """After a test: nothing it started keeps running, whatever happened."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in runs_in(ws):
        os.kill(pid, signal.SIGKILL)


def headless(ws: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cockpit", "run", "--headless", "--workspace", str(ws), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=env(), start_new_session=True)


# ---- 1. one session, one process ----

def test_a_second_cockpit_in_the_workspace_is_refused_in_one_line_and_changes_nothing(tmp_path):
    ws, fifo = slow_workspace(tmp_path)
    first = headless(ws, "--json")
    try:
        wait_started(fifo, first)
        j = Journal(ws / ".cockpit" / "journal.sqlite")
        before = (j.latest_session(), j.experiments(j.latest_session().id),
                  git(ws, "rev-parse", "HEAD"), git(ws, "branch", "--format=%(refname:short)"))
        for args in (["run", "--headless", "--workspace", ws], ["--workspace", ws, "--headless"],
                     ["run", "--headless", "--workspace", ws, "--tag", "other"]):
            r = cli(*args, timeout=120)
            lines = r.stderr.strip().splitlines()
            assert r.returncode != 0 and len(lines) == 1, r.stdout + r.stderr
            assert lines[0].startswith("cockpit: error: this workspace's session is already being run by "
                                       f"pid {first.pid} on "), lines[0]
            assert " since " in lines[0] and r.stdout == ""
        after = (j.latest_session(), j.experiments(j.latest_session().id),
                 git(ws, "rev-parse", "HEAD"), git(ws, "branch", "--format=%(refname:short)"))
        assert after == before and after[0].status == "running" and after[0].pid == first.pid
        assert j.session_by_tag("other") is None
        # status and report still work beside it
        st = cli("status", "--workspace", ws, timeout=120)
        assert st.returncode == 0 and "status running" in st.stdout, st.stderr
        rp = cli("report", "--workspace", ws, timeout=300)
        assert rp.returncode == 0, rp.stderr
        assert first.poll() is None
        os.kill(first.pid, signal.SIGTERM)
        first.communicate(timeout=60)
        assert first.returncode == 128 + signal.SIGTERM
    finally:
        kill_all(first, ws)


def test_a_lock_left_by_a_killed_cockpit_does_not_block_a_restart(tmp_path):
    ws, fifo = slow_workspace(tmp_path)
    first = headless(ws, "--json")
    try:
        wait_started(fifo, first)
        os.kill(first.pid, signal.SIGKILL)  # the process only: its training child lives on, for now
        first.wait()
        assert Holder.parse((ws / ".cockpit" / "session.lock").read_text()).pid == first.pid
        second = headless(ws, "--json")
        try:
            wait_started(fifo, second)  # it resumed the session and runs an experiment
            os.kill(second.pid, signal.SIGTERM)
            out, err = second.communicate(timeout=60)
            assert second.returncode == 128 + signal.SIGTERM, err
            assert json.loads(out.splitlines()[-1])["reason"] == "stopped by signal SIGTERM"
        finally:
            kill_all(second, ws)
        assert (ws / ".cockpit" / "session.lock").read_text() == ""  # a clean stop leaves no record
    finally:
        kill_all(first, ws)


@pytest.mark.parametrize("holder,needle", [
    (Holder(pid=4242, host="gpu-box", since=1000.0), "pid 4242 on gpu-box since "),
    (Holder(pid=4242, host="gpu-box", since=1000.0), "(10 min ago)"),
    (Holder(pid=7), "pid 7"),
    (Holder(), "another cockpit process"),
    (None, "another cockpit process"),
])
def test_the_refusal_names_what_the_lock_record_has(holder, needle):
    line = refusal(holder, now=1600.0)
    assert needle in describe(holder, 1600.0) and needle in line and "\n" not in line
    assert ("kill 4242" in line) == (holder is not None and holder.pid == 4242)


@pytest.mark.parametrize("text,expected", [
    ("", None),
    ("  \n", None),
    ('{"pid": 12, "host": "h", "since": 5, "tty": "/dev/pts/3"}', Holder(12, "h", 5.0, "/dev/pts/3")),
    ('{"pid": 12, "host": "h", "si', Holder()),  # half written
    ('[1, 2]', Holder()),
    ('{"pid": "12"}', Holder()),
])
def test_a_lock_record_is_read_whatever_state_it_is_in(text, expected):
    assert Holder.parse(text) == expected


# ---- 2. a lost terminal: the process exits within seconds and leaves nothing running ----

def test_the_tui_exits_within_seconds_when_its_terminal_hangs_up(tmp_path):
    ws, fifo = slow_workspace(tmp_path)
    term = Terminal()
    proc = term.spawn("run", "--workspace", str(ws))
    try:
        wait_started(fifo, proc)
        assert b"\x1b[?1049h" in term.screen  # the TUI, on its alternate screen
        kids = descendants(proc.pid)
        assert kids, "the run's processes are cockpit's descendants"
        term.hang_up()  # the kernel sends SIGHUP (and SIGCONT) to cockpit, its controlling process
        proc.wait(timeout=EXIT_WITHIN)
    finally:
        kill_all(proc, ws)
        term.close()
    assert proc.returncode == 128 + signal.SIGHUP
    assert alive(kids) == [], "a process outlived cockpit"
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.latest_session()
    assert s.status == "stopped" and s.stop_reason == "stopped by signal SIGHUP", s.stop_reason
    ran = [e for e in j.experiments(s.id) if e.kind == "experiment" and e.run_started][-1]
    assert ran.status == "interrupted" and ran.reason == "stopped by signal SIGHUP during the run"
    assert git(ws, "status", "--porcelain") == "" and git(ws, "rev-parse", "HEAD") == s.best_commit
    assert (ws / ".cockpit" / "session.lock").read_text() == ""


def test_sigterm_ends_the_tui_even_when_its_terminal_takes_no_output(tmp_path):
    """A terminal that stops reading (ctrl-s, a stuck connection) blocks the UI's writes and, with
    them, its event loop: SIGTERM must still end the process, the session recorded, the terminal's
    modes put back."""
    ws, fifo = slow_workspace(tmp_path)
    term = Terminal()
    proc = term.spawn("run", "--workspace", str(ws))
    try:
        wait_started(fifo, proc)
        kids = descendants(proc.pid)
        term.stop_reading()
        for i in range(12):  # each size change is a full redraw, into a terminal nobody reads
            fcntl.ioctl(term.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40 + i % 2, 120 + i % 3, 0, 0))
            os.kill(proc.pid, signal.SIGWINCH)
            time.sleep(0.3)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=EXIT_WITHIN)
    finally:
        kill_all(proc, ws)
    try:
        assert proc.returncode == 128 + signal.SIGTERM
        assert alive(kids) == []
        lflag = termios.tcgetattr(term.slave)[3]
        assert lflag & termios.ECHO and lflag & termios.ICANON
    finally:
        term.close()
    s = Journal(ws / ".cockpit" / "journal.sqlite").latest_session()
    assert s.status == "stopped" and s.stop_reason == "stopped by signal SIGTERM"
    assert (ws / ".cockpit" / "session.lock").read_text() == ""


@pytest.mark.parametrize("how", ["hang_up", "SIGTERM", "SIGHUP"])
def test_headless_in_a_terminal_exits_on_a_hang_up_or_a_signal(tmp_path, how):
    ws, fifo = slow_workspace(tmp_path)
    term = Terminal()
    proc = term.spawn("run", "--headless", "--workspace", str(ws))
    try:
        wait_started(fifo, proc)
        kids = descendants(proc.pid)
        if how == "hang_up":
            term.hang_up()
        else:
            os.kill(proc.pid, getattr(signal, how))
        proc.wait(timeout=EXIT_WITHIN)
    finally:
        kill_all(proc, ws)
        term.close()
    sig = signal.SIGTERM if how == "SIGTERM" else signal.SIGHUP
    assert proc.returncode == 128 + sig, term.tail()
    assert alive(kids) == []
    assert b"Traceback" not in term.screen, term.tail()
    s = Journal(ws / ".cockpit" / "journal.sqlite").latest_session()
    assert s.status == "stopped" and s.stop_reason == f"stopped by signal {sig.name}"


# ---- 17. headless ctrl-c says what stopped it; a fatal error is said once ----

def test_headless_ctrl_c_stops_the_session_and_says_so(tmp_path):
    ws, fifo = slow_workspace(tmp_path)
    proc = headless(ws)
    try:
        wait_started(fifo, proc)
        kids = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=EXIT_WITHIN)
    finally:
        kill_all(proc, ws)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and not any(line.endswith("stopped: stopped") for line in (out + err).splitlines())
    assert out.splitlines()[-1].endswith("session stopped: stopped by ctrl-c"), out
    assert alive(kids) == []
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.latest_session()
    assert s.stop_reason == "stopped by ctrl-c" and s.state == "stopped: stopped by ctrl-c"
    ran = [e for e in j.experiments(s.id) if e.kind == "experiment" and e.run_started][-1]
    assert ran.status == "interrupted" and ran.reason == "stopped by ctrl-c during the run"


def test_headless_says_the_error_a_session_stops_on_once(tmp_path):
    ws = command_workspace(tmp_path, dict(VALUE_FILES), ["value.py"], "python3 -c 'raise SystemExit(3)'",
                           "python3 measure.py", baseline_runs=1)
    r = cli("run", "--headless", "--workspace", ws, "--max-experiments", "2", timeout=300)
    assert r.returncode == 1
    reason = Journal(ws / ".cockpit" / "journal.sqlite").latest_session().stop_reason
    assert "the baseline run failed" in reason
    said = (r.stdout + r.stderr).count("the baseline run failed")
    assert said == 1, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"cockpit: error: {reason}"
    assert "session stopped on an error" in r.stdout


# ---- 4. a terminal left in the TUI's modes by kill -9 is put right on the next start ----

def test_the_next_start_restores_a_terminal_a_killed_tui_left_behind(tmp_path):
    ws, fifo = slow_workspace(tmp_path)
    term = Terminal()
    first = term.spawn("run", "--workspace", str(ws))
    try:
        wait_started(fifo, first)
        assert not termios.tcgetattr(term.slave)[3] & termios.ECHO  # the TUI's raw mode
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        for pid in runs_in(ws):
            os.kill(pid, signal.SIGKILL)
        term.stop_reading()
        assert not termios.tcgetattr(term.slave)[3] & termios.ECHO  # left so: typing is invisible
        term.screen.clear()
        second = term.spawn("run", "--workspace", str(ws))
        try:
            wait_started(fifo, second)
            os.kill(second.pid, signal.SIGTERM)
            second.wait(timeout=EXIT_WITHIN)
        finally:
            kill_all(second, ws)
        assert second.returncode == 128 + signal.SIGTERM, term.tail()
        term.stop_reading()
        lflag = termios.tcgetattr(term.slave)[3]
        assert lflag & termios.ECHO and lflag & termios.ICANON, "the terminal was left without echo"
        assert term.screen.rfind(b"\x1b[?1049l") > term.screen.rfind(b"\x1b[?1049h")  # off the alternate screen
    finally:
        kill_all(first, ws)
        term.close()


def test_sane_attrs_turns_back_on_what_a_full_screen_ui_turns_off():
    raw = [0, 0, termios.CS8, 0, termios.B38400, termios.B38400, [b"\x00"] * 32]
    iflag, oflag, _, lflag, *_ = sane_attrs(raw)
    for bit in (termios.ECHO, termios.ICANON, termios.ISIG, termios.IEXTEN):
        assert lflag & bit
    assert iflag & termios.ICRNL and oflag & termios.OPOST and oflag & termios.ONLCR
    assert raw[3] == 0  # a copy
