"""`cockpit status` and `cockpit report`: a session read through its read-only view
(engine/store/view.py); neither takes the workspace's lock, and both work beside a running session."""

from __future__ import annotations

import os


def session_state(s) -> str:
    """The session's state line as its engine last wrote it, or what a stopped or killed one is."""
    if s.status == "stopped":
        return f"stopped: {s.stop_reason or 'stopped'}"
    alive = False
    if s.pid:
        try:
            os.kill(s.pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    if not alive:
        return "not running (cockpit was killed or the machine restarted; `cockpit` resumes it)" + (
            f"; last state: {s.state}" if s.state else "")
    return s.state or "starting"


def cmd_status(args) -> int:
    """The session's summary, read through its read-only view (engine/store/view.py)."""
    from engine import numbers
    from engine.store.view import SessionView
    from engine.store.workspace import open_workspace

    open_workspace(args.workspace)  # a folder that is not a workspace is refused, in one line
    view = SessionView.open(args.workspace, args.tag)
    try:
        s, exps = view.session(), view.history()
        cost, duty = view.cost(), view.duty()
    finally:
        view.close()
    counts: dict[str, int] = {}
    for e in exps:
        if e.kind == "experiment" and e.ran:
            counts[e.status] = counts.get(e.status, 0) + 1
    unrun = sum(1 for e in exps if e.kind == "experiment" and not e.ran)
    m, direction = view.config.target.metric, view.config.target.direction
    st = numbers.standing(exps, s.best_n, s.best_metric, s.harness, direction)
    print(f"session {s.tag}  branch {s.branch}  agent {s.agent}  status {s.status}" + (f" ({s.stop_reason})" if s.stop_reason else ""))
    print(f"state: {session_state(s)}")
    noise = f"  noise {s.noise or 0:.6f}"
    if st.is_baseline:
        print(f"best {m} {st.best:.6f}: the baseline (mean of {st.base.runs} runs), nothing kept over it yet{noise}")
    elif st.best is not None:
        gain = f"  ({numbers.versus(st.gain)} than the baseline {st.base.mean:.6f})" if st.gain is not None else ""
        print(f"best {m} {st.best:.6f} at {(s.best_commit or '')[:7]} (#{st.best_n}){gain}{noise}")
    elif st.measuring and s.best_metric is not None:
        print(f"best {m} -: measuring a new baseline (the budget or the harness changed; earlier results are not compared)")
    hc = numbers.holdout_check(exps, st.best_n, direction, s.harness)
    if hc.line(m) and not st.is_baseline:
        print(("warning: " if hc.carried is False else "") + hc.line(m))
    print("experiments: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none yet")
          + (f" (+{unrun} never ran)" if unrun else "") + f"  cost ${cost:.2f}")
    print(duty.summary())
    shown = {e.n for e in numbers.comparable(exps, s.harness)}
    for e in [e for e in exps if e.ran][-15:]:
        val = f"{e.metric:.6f}" if e.metric is not None else "-"
        delta = f"{e.delta:+.6f}" if e.delta is not None else ""
        mark = "*" if st.best_n is not None and e.n == st.best_n else " "  # the best's row; never a baseline's
        other = "  (another budget or harness)" if e.n not in shown else ""
        print(f" {mark}#{e.n:<4} {(e.commit_sha or '')[:7]:7} {e.status:11} {val:>9} {delta:>10}  {e.description or ''}{other}")
    return 0


def cmd_report(args) -> int:
    from cockpit.report_render import write_report

    paths = write_report(args.workspace, args.tag, args.out)
    print(paths.png)
    print(paths.markdown)
    return 0
