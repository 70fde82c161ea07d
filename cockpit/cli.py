"""The `cockpit` command line. Each subcommand prints one clear line on bad input and exits non-zero."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path

from harness.errors import HarnessError

from .commands.prepare import cmd_prepare  # noqa: F401  (the subcommands' bodies)
from .commands.status import cmd_report, cmd_status, session_state  # noqa: F401
from .commands.run import _run_headless, _run_tui
from .commands.train import cmd_train, format_result  # noqa: F401


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="DIR", help="a folder of text files (default: the Python standard library)")
    src.add_argument("--parquet", metavar="GLOB", help="parquet shards with a 'text' column")
    p.add_argument("--include", action="append", metavar="PATTERN",
                   help="with --text: only files whose name matches (e.g. '*.py'); repeatable")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size, BOS included (default 8192)")
    p.add_argument("--val-fraction", type=float, default=None, help="share of documents pinned to validation (default 0.05)")
    p.add_argument("--force", action="store_true", help="rebuild even when an identical dataset exists")


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr, like every other refusal, and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"cockpit: error: {message} (see `{self.prog} --help`)\n")


BARE = "bare_"  # where `cockpit` without a subcommand keeps the run options it was given


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="cockpit", description="A terminal research cockpit for autonomous ML experiments. "
                 "Without a subcommand: the research loop, with every option `cockpit run` takes.")
    ap.add_argument("--cache-dir", help="prepared data and tokenizer (default: $COCKPIT_CACHE or the user cache dir)")
    _add_run_args(ap.add_argument_group("the research loop (the options of `cockpit run`)"), bare=True)
    sub = ap.add_subparsers(dest="command")

    p = sub.add_parser("prepare", help="build the data and tokenizer (default: the embedded corpus; offline)")
    _add_prepare_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="run trainer/train.py once through the harness and print the result")
    t.add_argument("--workspace", default=".", help="the folder holding trainer/train.py (default: here)")
    t.add_argument("--script", help="train this file instead of <workspace>/trainer/train.py")
    t.add_argument("--budget", type=float, help="training seconds (default: the profile's: 300 on CUDA, 60 on CPU)")
    t.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
    t.add_argument("--json", action="store_true", help="print the result as one JSON object")

    i = sub.add_parser("init", help="create a research workspace (git repo with trainer/, program.md, cockpit.toml)")
    i.add_argument("dir")

    r = sub.add_parser("run", help="the research loop (--headless: without the TUI)")
    _add_run_args(r)

    st = sub.add_parser("status", help="session summary from the journal")
    st.add_argument("--workspace", default=".")
    st.add_argument("--tag")

    rp = sub.add_parser("report", help="progress.png + markdown summary of a session")
    rp.add_argument("--workspace", default=".", help="the research workspace (default: here)")
    rp.add_argument("--tag", help="the session (default: the latest)")
    rp.add_argument("--out", metavar="DIR", help="output folder (default: <workspace>/.cockpit/report/)")
    return ap


def _add_run_args(r, bare: bool = False) -> None:
    """`cockpit run`'s options. `cockpit` without a subcommand takes the same ones (bare=True): they
    are kept apart there (dest bare_<name>, no default) so that a subcommand's own options, which
    argparse writes over the same namespace, never mix with them."""

    def add(flag: str, **kw) -> None:
        if bare:
            name = flag[2:].replace("-", "_")
            kw.update(dest=BARE + name, default=argparse.SUPPRESS)
            if kw.get("action") != "store_true" and "choices" not in kw:
                kw["metavar"] = name.upper()
        r.add_argument(flag, **kw)

    add("--workspace", default=".", help="the research workspace (default: here)")
    add("--agent", default=None, help="tuner | claude (default: claude with an API key, else tuner)")
    add("--tag", help="start or select this session (default: resume the latest)")
    add("--budget", type=float, help="training seconds per experiment (default: the profile's)")
    add("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
    add("--devices", help="one experiment per device at once: auto (every visible GPU), a list such as 0,1,3, "
                          "or cpu:N (default: [run] devices in cockpit.toml, else auto)")
    add("--cluster", choices=["local", "ray"], help="local: this machine's devices; ray: every GPU of a running Ray "
                                                    "cluster (default: [run] cluster; docs/CLUSTER.md)")
    add("--address", help="the Ray cluster's address with --cluster ray (default: [run] address, else auto)")
    add("--max-experiments", type=int)
    add("--max-hours", type=float)
    add("--max-cost", type=float, help="USD")
    add("--model", help="Claude model (default: cockpit.toml, $COCKPIT_MODEL, or a current Sonnet)")
    add("--base-url", help="Messages API base URL, for proxies and gateways (default: $ANTHROPIC_BASE_URL)")
    add("--headless", action="store_true", help="print events instead of the TUI (the default when stdout is not a terminal)")
    add("--json", action="store_true", help="headless, JSON lines, one per event")


def _undumpable() -> None:
    """Linux: make this process's memory and /proc/<pid>/environ unreadable to other processes of
    the same user (the training subprocess runs code an LLM wrote; the API key lives here)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
        except (OSError, AttributeError):
            pass


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    bare = [k[len(BARE):] for k in vars(args) if k.startswith(BARE)]
    if bare and args.command is not None:  # `cockpit --tag x status`: that --tag is the loop's, not status's
        flag = "--" + bare[0].replace("_", "-")
        ap.error(f"{flag} before `{args.command}` is an option of the research loop (`cockpit {flag} ...`); "
                 f"options of `cockpit {args.command}` go after it")
    _undumpable()
    commands = {"prepare": cmd_prepare, "train": cmd_train, "init": cmd_init, "run": cmd_run, "status": cmd_status,
                "report": cmd_report}
    try:
        code = commands.get(args.command, cmd_default)(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, rather than at exit
        return code
    except HarnessError as e:
        _say(f"cockpit: error: {e}")
        return 2
    except KeyboardInterrupt:
        _say("cockpit: interrupted")
        return 130
    except BrokenPipeError:  # `cockpit status | head -3`: the reader has all it wanted
        from cockpit.headless import detach

        detach(sys.stdout)
        return 128 + signal.SIGPIPE


def _say(line: str) -> None:
    """One line on stderr; a stderr that is gone (a hung-up terminal) is no reason for a traceback."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        from cockpit.headless import detach

        detach(sys.stderr)


def ensure_prepared(cache: Path):
    """The current dataset; with none, prepare the built-in corpus first (saying so)."""
    from harness.dataset import current_dataset
    from harness.errors import NotPreparedError
    from harness.prepare import prepare
    from harness.sources import stdlib_source

    from harness.integrity import ensure_locked
    from harness.paths import HARNESS_DIR

    try:
        dataset = current_dataset(cache)
    except NotPreparedError:
        print("no prepared data: preparing the built-in corpus (the Python standard library) first", file=sys.stderr)
        report = prepare(stdlib_source(), cache)
        print(report.summary(), file=sys.stderr)
        dataset = current_dataset(cache)
    # A clone beside another (or a moved one) shares the cache but has no lock there yet: its
    # harness is locked now, as it is. An existing lock is never rewritten: a harness that
    # changed since it was locked is still refused before every run.
    if ensure_locked(cache):
        print(f"locked this checkout's harness ({HARNESS_DIR}) in {cache}", file=sys.stderr)
    return dataset


# ---- the profile (also the engine's construction reads it) ----

def _profile(device: str, budget: float | None, say: bool = True):
    from harness.profiles import CPU, MPS, detect

    if device == "auto":
        prof = detect()
        if prof.name == "cpu" and say:
            print("no GPU: CPU profile", file=sys.stderr)
    elif device == "cuda":
        prof = detect()
        if prof.name != "cuda":
            raise HarnessError("--device cuda: no CUDA GPU is visible to PyTorch")
    else:
        prof = {"cpu": CPU, "mps": MPS}[device]
    return prof.with_budget(budget)


# ---- init / run / status ----

def cmd_init(args) -> int:
    from engine.store.workspace import init_workspace

    root = init_workspace(args.dir)
    print(f"created a research workspace in {root}: trainer/train.py, program.md, cockpit.toml (committed)")
    print(f"next: cd {root} && cockpit")
    return 0


def select_agent(name: str | None, ws_config=None, model: str | None = None, base_url: str | None = None):
    """The agent to run, and the one line that says which and why. The key is read here and
    handed to the SDK client; it is never printed, journaled or passed to training."""
    from engine.agents.claude import DEFAULT_MODEL, Claude, ClaudeConfig
    from engine.agents.tuner import Tuner

    name = name or (ws_config.agent if ws_config else None) or "auto"
    key = os.environ.get("ANTHROPIC_API_KEY", "")
    if name not in ("auto", "tuner", "claude"):
        raise HarnessError(f"unknown agent {name!r}; choose tuner or claude")
    if name == "tuner" or (name == "auto" and not key):
        why = "no API key: offline tuner" if name == "auto" else "agent: offline tuner (--agent tuner)"
        return Tuner(), why
    if not key:
        raise HarnessError("--agent claude needs ANTHROPIC_API_KEY in the environment")
    model = model or (ws_config.model if ws_config else None) or os.environ.get("COCKPIT_MODEL") or DEFAULT_MODEL
    base_url = base_url or (ws_config.base_url if ws_config else None) or os.environ.get("ANTHROPIC_BASE_URL") or None
    settings = dict(ws_config.agent_numbers) if ws_config else {}
    if settings.get("thinking_budget") == 0 and "thinking" not in settings:
        settings["thinking"] = "off"  # the older spelling of "no thinking"
        settings.pop("thinking_budget")
    cfg = ClaudeConfig(model=model, base_url=base_url, **settings)
    why = f"agent: claude ({model}{', via ' + base_url if base_url else ''})" + (
        " - ANTHROPIC_API_KEY is set" if name == "auto" else "")
    return Claude(key, cfg), why


def build_engine(args, tui: bool = False):
    """Workspace, target, agent and engine for `cockpit run`, headless or in the TUI, and the
    workspace's session lock, held (engine/store/lock.py): a second cockpit in the workspace is refused
    here, in one line, before it touches anything."""
    from engine.store.lock import WorkspaceLock
    from engine.store.workspace import open_workspace

    for flag in ("max_experiments", "max_hours", "max_cost", "budget"):
        v = getattr(args, flag, None)
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise HarnessError(f"--{flag.replace('_', '-')} must be a finite number >= 0")
    ws = open_workspace(args.workspace)
    lock = WorkspaceLock(ws.state)
    tty = _tty_name() if tui else None
    fresh = not ws.state.is_dir()
    if not fresh:  # a session may be running here: the lock is the first thing looked at
        lock.acquire(tty)
    try:
        engine, notices = _build_engine(args, ws, lock, tty)
    except BaseException:
        lock.release()  # refused: no record of a holder that died is left behind
        if fresh:  # bad input changes nothing: not even the .cockpit/ the lock made
            lock.remove()
        raise
    return engine, notices, lock


def _tty_name() -> str | None:
    try:
        return os.ttyname(sys.stdout.fileno())
    except (OSError, ValueError):
        return None


def _build_engine(args, ws, lock, tty):
    from engine.build import SessionOptions, build_session
    from engine.run.slots import check_spec
    from harness.paths import cache_root

    if ws.config.target.kind == "gpt":  # [run] sandbox = "required" where there is none: refused before anything
        from harness.runner import sandbox_state

        sandbox_state(ws.config.sandbox)
    # Before anything is written. program.md edits are the human's and get committed; any other
    # uncommitted change is refused (the agent edits only its own tree, .cockpit/agent).
    ws.git.ensure_clean(allow=("program.md",))
    ws.git.head()  # a repository with no commits is refused here, before any data is prepared
    # The checks above only read. Nothing is written, prepared or checked out before the lock is
    # held (a workspace that never ran a session gets its .cockpit/ only now).
    lock.acquire(tty)
    repaired = _repair_terminal(lock.previous, tty)
    agent, why = select_agent(args.agent, ws.config, getattr(args, "model", None), getattr(args, "base_url", None))
    notices = [why] + ([repaired] if repaired else [])
    notices += agent.prepare()  # Claude asks the API what the model can do: a bad model or key stops here
    tc = ws.config.target
    spec = getattr(args, "devices", None) or ws.config.devices
    check_spec(spec)
    cluster = None
    if (getattr(args, "cluster", None) or ws.config.cluster) == "ray":
        if tc.kind != "gpt":
            raise HarnessError("--cluster ray runs the gpt target only (a command target runs on this machine)")
        from engine.run.cluster import Cluster

        cluster = Cluster(getattr(args, "address", None) or ws.config.address, spec, None)  # one line if unreachable
    if tc.kind == "gpt":
        cache = cache_root(getattr(args, "cache_dir", None))
        dataset = ensure_prepared(cache)
        from harness.integrity import verify_harness

        verify_harness(cache)  # refuse now, in one line, rather than after the session started
        dataset.verify()
        budget = args.budget if args.budget is not None else tc.budget
        if cluster is not None:  # the cluster's nodes train: their GPUs decide the profile
            from harness.profiles import CPU, CUDA

            prof = (CUDA if cluster.gpu else CPU).with_budget(budget)
            notices.append(f"Ray cluster at {cluster.address}: {'GPU' if cluster.gpu else 'CPU'} slots")
        else:
            prof = _profile(args.device, budget, say=False)  # a notice below
        if prof.name == "cpu" and cluster is None:
            notices.append("no GPU: CPU profile" if args.device == "auto" else "CPU profile")
    else:
        cache = dataset = prof = None
    options = SessionOptions(tag=args.tag, budget=args.budget, devices=spec, cache=cache, dataset=dataset, profile=prof,
                             max_experiments=args.max_experiments, max_hours=args.max_hours, max_cost=args.max_cost)
    engine, said = build_session(ws, agent, options, cluster=cluster)
    return engine, notices + said


def _repair_terminal(previous, tty: str | None) -> str | None:
    """A previous cockpit whose TUI drew on this terminal died without a clean stop (kill -9):
    the terminal may still be in its alternate screen, without echo. Put it right before
    anything is drawn, and say so."""
    if previous is None or previous.tty is None or previous.tty != (tty or _tty_name()):
        return None
    from cockpit.lifeline import repair_terminal

    if not repair_terminal(sys.stdout.fileno()):
        return None
    return (f"the previous cockpit here (pid {previous.pid}) ended without a clean stop; "
            f"restored this terminal's screen and modes")


def cmd_run(args) -> int:
    """The research loop, in the TUI or headless (asked for, or when stdout is not a terminal).
    One process per workspace: a second one is refused while this one lives (engine/store/lock.py).
    Exit status: 0 when a limit or the human ended the session, 1 on an error (a failed
    baseline, an integrity failure, a fatal API error), 128 + the signal's number on SIGTERM or
    SIGHUP (which stop the session like a quit, now; cockpit/lifeline.py) and, headless, on
    ctrl-c (130)."""
    tui = not (args.headless or args.json or not sys.stdout.isatty())
    engine, notices, lock = build_engine(args, tui)
    try:
        if tui:
            signum = _run_tui(engine, notices, lock)
        else:
            signum = _run_headless(engine, notices, args.json, lock)
    finally:
        lock.release()
    if engine.error:
        _say(f"cockpit: error: {engine.error}")
        return 1
    return 128 + signum if signum else 0


# ---- default: what `cockpit` does with no subcommand ----

def cmd_default(args) -> int:
    """`cockpit` resumes the workspace's latest session or starts one, in the TUI when stdout is a
    terminal (headless, printing readable lines, when it is not); it takes every option of `cockpit run`."""
    run = build_parser().parse_args(["run"])  # run's defaults, then what was given
    for k, v in vars(args).items():
        if k.startswith(BARE):
            setattr(run, k[len(BARE):], v)
    run.cache_dir = args.cache_dir
    return cmd_run(run)
