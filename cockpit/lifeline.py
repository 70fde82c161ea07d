"""How a cockpit process ends when it is told to by a signal, and what it leaves on the terminal.

SIGTERM and SIGHUP (a `kill`, a closed SSH connection, a killed tmux server) stop the session
like a quit, now: the running experiments are recorded `interrupted`, the session `stopped by
signal SIGHUP`, and the process exits with 128 + the signal's number. The handlers are plain
signal.signal handlers: they run in the main thread even while it is blocked, which an asyncio
handler does not (the TUI's loop can be stuck writing to a terminal that hung up). A watcher
thread does the rest, off the main thread:

1. it stops the session now (Control.stop), and tells the UI (on_stop, in its own thread);
2. it waits for the engine to finish (Engine.finished: the journal says `stopped`, every
   training process, spare child and evaluator is gone), at most ENGINE_WAIT seconds;
3. the process normally leaves on its own meanwhile; if it has not GRACE seconds later (a UI
   blocked on a dead terminal), the watcher ends it with os._exit, with the same exit status.

SIGHUP means the terminal is gone: the handler points the terminal's descriptors at /dev/null
first, so nothing blocks or fails on writing to it, and takes away the UI toolkit's SIGCONT
handler (the kernel sends SIGCONT with the hang-up; the toolkit would restart its screen on the
dead terminal). No textual here: the UI passes a callable."""

from __future__ import annotations

import os
import signal
import sys
import termios
import threading
from typing import Callable

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
ENGINE_WAIT = 30.0  # a stop-now ends every run at once; this bounds a stuck API call or filesystem
GRACE = 5.0  # after the engine finished: time for the UI to close on its own


def signal_name(signum: int) -> str:
    """How a stopping signal is named in the journal: `signal SIGTERM`; SIGINT is `ctrl-c`."""
    if signum == signal.SIGINT:
        return "ctrl-c"
    return f"signal {signal.Signals(signum).name}"


class Lifeline:
    def __init__(self, control, finished: threading.Event, signals: tuple = STOP_SIGNALS,
                 on_stop: Callable[[int], None] | None = None, before_exit: Callable[[], None] | None = None,
                 terminal: "TerminalState | None" = None, engine_wait: float = ENGINE_WAIT, grace: float = GRACE):
        self.control = control
        self.finished = finished
        self.signals = tuple(signals)
        self.on_stop = on_stop
        self.before_exit = before_exit
        self.terminal = terminal
        self.engine_wait, self.grace = engine_wait, grace
        self.got: list[int] = []  # the signals received, in order (appended in the handler: atomic)
        self._got = threading.Event()
        self._previous: dict = {}
        self.hung_up = False

    @property
    def signalled(self) -> int | None:
        """The first stopping signal, if one came."""
        return self.got[0] if self.got else None

    def install(self) -> "Lifeline":
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self.signals}
        threading.Thread(target=self._watch, name="cockpit-lifeline", daemon=True).start()
        return self

    def uninstall(self) -> None:
        """The handlers as they were (the watcher, once woken, still guarantees the exit)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT and signum in self.got:  # a second ctrl-c: interrupt at once
            raise KeyboardInterrupt
        if signum == getattr(signal, "SIGHUP", None) and not self.hung_up:
            self.hung_up = True
            detach_terminal()
            if hasattr(signal, "SIGCONT"):
                signal.signal(signal.SIGCONT, signal.SIG_DFL)
        self.got.append(signum)
        self._got.set()

    def _watch(self) -> None:
        self._got.wait()
        signum = self.got[0]
        self.control.stop("now", by=signal_name(signum))
        if self.on_stop is not None:  # in its own thread: a UI that is stuck must not hold the exit
            threading.Thread(target=self.on_stop, args=(signum,), name="cockpit-on-stop", daemon=True).start()
        self.finished.wait(self.engine_wait)
        threading.Event().wait(self.grace)
        # Still here: the main thread is stuck (a UI writing to a terminal that hung up). The
        # session is recorded; the process goes now, with the exit status it would have had.
        if self.terminal is not None and not self.hung_up:
            self.terminal.restore()
        if self.before_exit is not None:
            try:
                self.before_exit()
            except OSError:  # the lock file's record: the kernel frees the lock anyway
                pass
        os._exit(128 + signum)


def detach_terminal() -> None:
    """Point every standard descriptor that is a terminal at /dev/null (the terminal hung up)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            try:
                if os.isatty(fd):
                    os.dup2(devnull, fd)
            except OSError:  # EBADF: closed already
                continue
    finally:
        os.close(devnull)


# What a full-screen UI turns on, turned off: keyboard protocol pushed (kitty), alternate screen,
# hidden cursor, mouse reporting (every mode), focus events, bracketed paste, in-band resize; and
# line wrap back on.
RESET_SEQUENCES = ("\x1b[<u\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l"
                   "\x1b[?1016l\x1b[?1004l\x1b[?2004l\x1b[?2048l\x1b[?7h")


def sane_attrs(attrs: list) -> list:
    """A terminal's modes with echo, line editing, signals and newline translation back on (what
    `stty sane` restores of what a full-screen UI turns off). Pure: a copy."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag = (iflag | termios.ICRNL | termios.BRKINT) & ~(termios.INLCR | termios.IGNCR)
    oflag |= termios.OPOST | termios.ONLCR
    lflag |= termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN | termios.ECHOE | termios.ECHOK
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, list(cc)]


class TerminalState:
    """The terminal's modes when cockpit started, to put back if the process has to leave
    without the UI's own clean-up."""

    def __init__(self, fd: int | None = None):
        self.fd = sys.stdout.fileno() if fd is None else fd
        try:
            self.attrs = termios.tcgetattr(self.fd)
        except termios.error:
            self.attrs = None

    def restore(self) -> None:
        """Best effort, and never blocking: a terminal that takes no output (ctrl-s, a stuck
        connection) is why the process may be leaving this way."""
        try:
            if self.attrs is not None:
                termios.tcsetattr(self.fd, termios.TCSANOW, self.attrs)
            os.set_blocking(self.fd, False)
            os.write(self.fd, RESET_SEQUENCES.encode())
        except (OSError, termios.error):  # gone, or full (EAGAIN): nothing more to do
            pass


def repair_terminal(fd: int) -> bool:
    """After a previous cockpit's TUI on this terminal was killed (kill -9): leave its alternate
    screen, show the cursor, stop mouse reporting, and turn echo and line editing back on, before
    anything is drawn. True when done."""
    try:
        termios.tcsetattr(fd, termios.TCSANOW, sane_attrs(termios.tcgetattr(fd)))
        os.write(fd, RESET_SEQUENCES.encode())
    except (OSError, termios.error):
        return False
    return True
