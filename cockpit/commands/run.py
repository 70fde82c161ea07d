"""`cockpit run`'s two ways to show a session: the TUI, or the headless printer (cockpit/cli.py
builds the engine and picks one)."""

from __future__ import annotations

import signal


def _run_tui(engine, notices: list[str], lock) -> int | None:
    """Run the session in the TUI; returns the stopping signal's number, if one stopped it."""
    from cockpit.app import CockpitApp
    from cockpit.lifeline import Lifeline, TerminalState

    app = CockpitApp(engine, notices)

    def tell_the_app(signum: int) -> None:
        try:
            app.call_from_thread(app.on_stop_signal, signum)
        except RuntimeError:  # the app is not running (yet, or any more): the engine has the stop already
            return

    life = Lifeline(engine.control, engine.finished, on_stop=tell_the_app, before_exit=lock.release,
                    terminal=TerminalState()).install()
    try:
        app.run()
    finally:
        life.uninstall()
    return life.signalled


def _run_headless(engine, notices: list[str], json_lines: bool, lock) -> int | None:
    """Run the session, printing its events; returns the stopping signal's number, if one stopped
    it. ctrl-c stops the session like SIGTERM (a second one interrupts at once)."""
    from engine import events as ev
    from cockpit.headless import Printer
    from cockpit.lifeline import STOP_SIGNALS, Lifeline

    printer = Printer(json_lines=json_lines, metric=engine.target.metric_name)
    engine.subscribe(printer)
    for text in notices:
        printer(ev.Notice(text=text))
    life = Lifeline(engine.control, engine.finished, signals=STOP_SIGNALS + (signal.SIGINT,),
                    before_exit=lock.release).install()
    try:
        engine.run()
    except KeyboardInterrupt:
        engine.control.stop("now", by="ctrl-c")
        raise
    finally:
        life.uninstall()
    return life.signalled
