"""The `cockpit` command line as a user meets it: real processes, real git repositories, real pipes,
signals and terminals. Bad input is one line on stderr, a non-zero exit, and changes nothing."""

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
from engine.store.workspace import init_workspace
from test_engine import VALUE_FILES, cli, command_workspace, commit_all, git

# The run command sleeps for any code but the base commit's: the baseline is quick, every
# experiment's run is still training when the test signals cockpit.
SLOW_EXPERIMENTS = dict(VALUE_FILES, **{
    "slowrun.py": "import time, value\nif (value.VALUE, value.OTHER) != (10.0, 3):\n    time.sleep(60)\n",
})
SLOW_ALWAYS = dict(VALUE_FILES, **{"slowrun.py": "import time\ntime.sleep(60)\n"})


def env(**extra) -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    e.pop("ANTHROPIC_API_KEY", None)
    return e


def state(ws: Path):
    """Everything a refused command must leave as it was."""
    return (git(ws, "rev-parse", "HEAD"), git(ws, "branch", "--format=%(refname:short)"),
            git(ws, "status", "--porcelain", "--untracked-files=all"), sorted(p.name for p in ws.iterdir()),
            (ws / ".git" / "info" / "exclude").read_text() if (ws / ".git" / "info" / "exclude").exists() else None)


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("cockpit: error:"), r.stderr
    return lines[0]


def leftover_runs(ws: Path) -> list[int]:
    """Processes still running the workspace's run command."""
    out = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            # runs go in their slot's checkout (.cockpit/slots/<i>), not in the workspace's tree
            cwd = p.info["cwd"] or ""
            if (cwd == str(ws) or cwd.startswith(str(ws / ".cockpit") + os.sep)) and "slowrun.py" in " ".join(p.info["cmdline"] or []):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
        except psutil.Error:
            pass
    return out


# ---- 1. `cockpit` takes every option `cockpit run` takes ----

def test_bare_cockpit_takes_the_options_of_cockpit_run(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("--agent", "tuner", "--budget", "5", "--tag", "bare", "--max-experiments", "2", "--device", "cpu",
            "--model", "unused-by-the-tuner", "--workspace", ws, "--headless", "--json", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert "agent: offline tuner (--agent tuner)" in events[0]["text"]
    assert events[-1]["type"] == "SessionStopped" and events[-1]["reason"] == "reached --max-experiments 2"
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("bare")
    assert s.agent == "tuner" and s.branch == "cockpit/bare"
    assert len([e for e in j.experiments(s.id) if e.kind == "experiment"]) == 2
    # the same rules as `cockpit run`: one line, nothing changed
    before = state(ws)
    for args, needle in ((["--budget", "-5", "--workspace", ws], "--budget must be a finite number >= 0"),
                         (["--budget", "abc", "--workspace", ws], "argument --budget: invalid float value: 'abc'"),
                         (["--agent", "gpt5", "--workspace", ws], "unknown agent 'gpt5'"),
                         (["--tag", "x", "status", "--workspace", ws], "--tag before `status` is an option of the research loop")):
        line = one_error_line(cli(*args, cwd=elsewhere))
        assert needle in line
        assert state(ws) == before
    # and `cockpit run` is as it was
    again = cli("run", "--workspace", ws, "--tag", "bare", "--max-experiments", "1", "--headless")
    assert again.returncode == 0, again.stderr
    assert len([e for e in j.experiments(s.id) if e.kind == "experiment"]) == 3


# ---- 2. `cockpit run` into a pipe or a file is headless by itself ----

def test_cockpit_run_without_a_terminal_prints_lines_not_the_tui(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        r = subprocess.run([sys.executable, "-m", "cockpit", "run", "--workspace", str(ws), "--max-experiments", "1"],
                           stdout=f, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "\x1b" not in text  # no terminal escape codes in the file
    assert "#1 baseline: baseline 1/1" in text and "session stopped: reached --max-experiments 1" in text


# ---- 3. the exit status says how the session ended ----

@pytest.mark.parametrize("case", ["limit", "baseline_fails", "integrity"])
def test_the_exit_status_says_whether_the_session_ended_on_an_error(tmp_path, case):
    files, run = dict(VALUE_FILES), "python3 -c pass"
    if case == "baseline_fails":
        run = "python3 -c 'raise SystemExit(3)'"
    elif case == "integrity":  # the run command edits a locked (untracked) file: the next run refuses to start
        files["tamper.py"] = "with open('data.txt', 'a') as f:\n    f.write('changed\\n')\n"
        run = "python3 tamper.py"
    ws = command_workspace(tmp_path, files, ["value.py"], run, "python3 measure.py", baseline_runs=1)
    if case == "integrity":
        (ws / "data.txt").write_text("reference data\n")
        with open(ws / ".gitignore", "a") as f:
            f.write("data.txt\n")
        toml = (ws / "cockpit.toml").read_text()
        (ws / "cockpit.toml").write_text(toml.replace("budget = 30\n", 'budget = 30\nlocked = ["data.txt"]\n'))
        commit_all(ws)
    r = cli("run", "--headless", "--workspace", ws, "--max-experiments", "2")
    assert "Traceback" not in r.stderr, r.stderr
    if case == "limit":
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return
    assert r.returncode == 1, r.stdout + r.stderr
    needle = {"baseline_fails": "the baseline run failed (crash: the run command exited with status 3)",
              "integrity": "locked file changed since the session started: data.txt"}[case]
    assert r.stderr.strip().splitlines()[-1] == f"cockpit: error: {Journal(ws / '.cockpit' / 'journal.sqlite').latest_session().stop_reason}"
    assert needle in r.stderr.strip().splitlines()[-1]
    assert git(ws, "status", "--porcelain") == ""


# ---- 4. a closed pipe is neither a traceback nor the end of a session ----

def test_status_into_a_closed_pipe_is_quiet(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    assert cli("run", "--headless", "--workspace", ws, "--max-experiments", "3").returncode == 0
    read, write = os.pipe()
    os.close(read)  # the reader is gone before cockpit writes its first line (`| head` that already exited)
    try:
        r = subprocess.run([sys.executable, "-m", "cockpit", "status", "--workspace", str(ws)], stdout=write,
                           stderr=subprocess.PIPE, text=True, env=env(), timeout=60)
    finally:
        os.close(write)
    assert r.stderr == "" and r.returncode == 128 + signal.SIGPIPE
    real = subprocess.run(f"{sys.executable} -m cockpit status --workspace {ws} | head -1; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, env=env(), timeout=60)
    assert real.stdout.startswith("session ") and real.stdout.count("\n") == 1
    assert "Traceback" not in real.stderr and "BrokenPipe" not in real.stderr, real.stderr


@pytest.mark.parametrize("json_lines", [False, True])
def test_headless_output_into_head_stops_but_the_session_goes_on_to_its_limit(tmp_path, json_lines):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c 'import time; time.sleep(0.3)'",
                           "python3 measure.py", baseline_runs=1)
    cmd = (f"{sys.executable} -m cockpit run --headless {'--json' if json_lines else ''} --workspace {ws} "
           f"--max-experiments 4 --tag piped | head -2; exit ${{PIPESTATUS[0]}}")
    r = subprocess.run(cmd, shell=True, executable="/bin/bash", capture_output=True, text=True, env=env(), timeout=300)
    assert r.stdout.count("\n") == 2
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.stderr.strip() == "cockpit: the output was closed; the session goes on without printing"
    assert r.returncode == 0
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("piped")
    assert s.stop_reason == "reached --max-experiments 4"
    assert len([e for e in j.experiments(s.id) if e.kind == "experiment"]) == 4


# ---- 5. cockpit.toml's numbers are checked like the command line's ----

@pytest.mark.parametrize("toml,needle", [
    ('[target]\nbudget = "abc"\n', "[target].budget must be a finite number of seconds >= 0, not 'abc'"),
    ("[target]\nbudget = -5\n", "[target].budget must be a finite number of seconds >= 0, not -5"),
    ("[target]\nbudget = inf\n", "[target].budget must be a finite number of seconds >= 0, not inf"),
    ("[target]\nbudget = true\n", "[target].budget must be a finite number of seconds >= 0, not True"),
    ("[target]\nmetric = 3\n", "[target].metric must be a string, not 3"),
    ("[decision]\nbaseline_runs = 1.5\n", "[decision].baseline_runs must be a whole number of runs >= 1, not 1.5"),
    ("[decision]\nbaseline_runs = 0\n", "[decision].baseline_runs must be a whole number of runs >= 1, not 0"),
    ("[decision]\nmin_delta = -0.1\n", "[decision].min_delta must be a finite number >= 0, not -0.1"),
    ("[decision]\nnoise_k = nan\n", "[decision].noise_k must be a finite number >= 0, not nan"),
    ('[decision]\nnoise_k = "2"\n', "[decision].noise_k must be a finite number >= 0, not '2'"),
    ("[stop]\nmax_consecutive_crashes = 0\n", "[stop].max_consecutive_crashes must be a whole number of crashes >= 1, not 0"),
    ('[stop]\nmax_consecutive_crashes = "5"\n', "[stop].max_consecutive_crashes must be a whole number of crashes >= 1"),
    ("[stop]\nmax_crashes = 5\n", "unknown key [stop].max_crashes"),
    ("stop = 5\n", "[stop] must be a table"),
    ('[run]\nsandbox = "maybe"\n', "[run].sandbox must be one of auto, required, off, not 'maybe'"),
    ("[run]\ncompile_cache = 1\n", "[run].compile_cache must be private or shared, not 1"),
    ("[run]\nsandbx = 'off'\n", "unknown key [run].sandbx"),
])
def test_a_bad_number_in_cockpit_toml_is_one_line_naming_the_key(tmp_path, toml, needle):
    ws = tmp_path / "ws"
    init_workspace(ws)
    (ws / "cockpit.toml").write_text(toml)
    commit_all(ws)
    before = state(ws)
    cache = tmp_path / "cache"
    line = one_error_line(cli("--cache-dir", cache, "--workspace", ws, "--headless", "--max-experiments", "1"))
    assert needle in line and "cockpit.toml" in line
    assert state(ws) == before and not cache.exists()


def test_a_required_sandbox_on_a_machine_without_one_is_refused_before_anything(tmp_path):
    ws = tmp_path / "ws"
    init_workspace(ws)
    (ws / "cockpit.toml").write_text((ws / "cockpit.toml").read_text() + '\n[run]\nsandbox = "required"\n')
    commit_all(ws)
    before = state(ws)
    bin_ = tmp_path / "bin"  # a PATH with git and no bwrap
    bin_.mkdir()
    (bin_ / "git").symlink_to(subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip())
    cache = tmp_path / "cache"
    line = one_error_line(cli("--cache-dir", cache, "--workspace", ws, "--headless", "--max-experiments", "1",
                              env_extra={"PATH": str(bin_)}))
    assert 'sandbox = "required"' in line and "bubblewrap" in line
    assert state(ws) == before and not cache.exists()


def test_good_numbers_in_cockpit_toml_are_taken(tmp_path):
    from engine.config import load

    (tmp_path / "cockpit.toml").write_text("[target]\nbudget = 5\n[decision]\nbaseline_runs = 3.0\nmin_delta = 0\n"
                                           "noise_k = 1\n[stop]\nmax_consecutive_crashes = 2\n")
    c = load(tmp_path)
    assert (c.target.budget, c.decision.baseline_runs, c.decision.min_delta, c.decision.noise_k) == (5.0, 3, 0.0, 1.0)
    assert c.max_consecutive_crashes == 2 and isinstance(c.decision.baseline_runs, int)


# ---- 6. SIGTERM and SIGHUP stop the session like a quit, now ----

def _check_stopped_by_signal(ws: Path, sig: signal.Signals, kind: str) -> None:
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.latest_session()
    assert s.status == "stopped" and s.stop_reason.startswith(f"stopped by signal {sig.name}"), s.stop_reason
    exps = j.experiments(s.id)
    ran = [e for e in exps if e.kind == kind and e.run_started is not None][-1]
    assert ran.status == "interrupted" and ran.reason == f"stopped by signal {sig.name} during the run", ran
    assert all(e.status not in ("running", "proposing", "vetoed") for e in exps)
    assert not any(x["author"] == "human" for x in j.notes(s.id))  # no veto note, nothing "by the human"
    assert git(ws, "rev-parse", "HEAD") == s.best_commit and git(ws, "status", "--porcelain") == ""
    deadline = time.monotonic() + 5
    while leftover_runs(ws) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leftover_runs(ws), "the run's process outlived the session"


@pytest.mark.parametrize("sig,kind", [(signal.SIGTERM, "experiment"), (signal.SIGHUP, "experiment"),
                                      (signal.SIGTERM, "baseline"), (signal.SIGHUP, "baseline")])
def test_a_signal_stops_a_headless_session_like_a_quit(tmp_path, sig, kind):
    files = SLOW_EXPERIMENTS if kind == "experiment" else SLOW_ALWAYS
    ws = command_workspace(tmp_path, files, ["value.py"], "python3 slowrun.py", "python3 measure.py", baseline_runs=1)
    proc = subprocess.Popen([sys.executable, "-m", "cockpit", "run", "--headless", "--json", "--workspace", str(ws)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True)
    try:
        for line in proc.stdout:
            e = json.loads(line)
            if e["type"] == "ExperimentStarted" and e["kind"] == kind:
                break
        time.sleep(0.5)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err, err
    assert json.loads(out.splitlines()[-1])["reason"].startswith(f"stopped by signal {sig.name}")
    _check_stopped_by_signal(ws, sig, kind)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_a_tui_session_like_a_quit(tmp_path, sig):
    ws = command_workspace(tmp_path, SLOW_EXPERIMENTS, ["value.py"], "python3 slowrun.py", "python3 measure.py",
                           baseline_runs=1)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "cockpit", "run", "--workspace", str(ws)], stdin=slave, stdout=slave,
                            stderr=slave, env=env(TERM="xterm-256color"), start_new_session=True)
    os.close(slave)
    screen = bytearray()
    hang_up = threading.Event()

    def drain() -> None:  # a terminal that is read, as a real one is, until it hangs up
        try:
            while not hang_up.is_set():
                if select.select([master], [], [], 0.1)[0]:
                    screen.extend(os.read(master, 65536))
        except OSError:  # the child closed its side
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    journal = ws / ".cockpit" / "journal.sqlite"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, screen[-2000:].decode(errors="replace")
            if journal.exists():
                j = Journal(journal)
                s = j.latest_session()
                if s and any(e.kind == "experiment" and e.status == "running" and e.run_started for e in j.experiments(s.id)):
                    break
            time.sleep(0.2)
        time.sleep(0.5)
        assert b"\x1b[" in screen  # it is the TUI
        if sig == signal.SIGHUP:  # the SSH connection is gone: the terminal hangs up, then the signal comes
            hang_up.set()
            reader.join()
            os.close(master)
            master = None
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        hang_up.set()
        reader.join()
        if master is not None:
            os.close(master)
    assert proc.returncode == 128 + sig, screen[-3000:].decode(errors="replace")
    assert b"Traceback" not in screen, screen[-3000:].decode(errors="replace")
    _check_stopped_by_signal(ws, sig, "experiment")


# ---- 7. a repository that is not a workspace is refused before anything is made ----

def test_cockpit_in_a_git_repository_that_is_not_a_workspace_points_to_init(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    (repo / "README.md").write_text("some project\n")
    commit_all(repo)
    before = state(repo)
    cache = tmp_path / "cache"
    for args in ([], ["--agent", "tuner"], ["run", "--headless"], ["status"]):
        line = one_error_line(cli("--cache-dir", cache, *args, cwd=repo))
        assert f"{repo} is not a cockpit workspace" in line and "cockpit init" in line
        assert state(repo) == before and not cache.exists()


def test_a_workspace_whose_editable_files_are_missing_is_one_line(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py")
    (ws / "cockpit.toml").write_text((ws / "cockpit.toml").read_text().replace('["value.py"]', '["values.py"]'))
    commit_all(ws)
    before = state(ws)
    line = one_error_line(cli("--workspace", ws, "--headless", "--max-experiments", "1"))
    assert "[target].editable names values.py, which does not exist" in line
    assert state(ws) == before
