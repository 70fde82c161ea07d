"""Commands from the UI (or a test, or the headless runner) to the engine. Thread-safe: any thread
may call these; the engine acts on them at its next safe point, except veto and stop-now, which
cancel a running training process at once (the runner kills its process group).

Several experiments may run at once (one per device slot): each has its own cancel event, made
by begin_run(n). A veto names its experiment; without a name it applies to the only one running
or waiting for approval, and is ignored when there are several (the UI asks which)."""

from __future__ import annotations

import threading


class Control:
    def __init__(self, review: bool = False):
        self._cv = threading.Condition()
        self.stopping = threading.Event()  # set by stop("now"): agents abandon their proposal and back-off
        self._paused = False
        self._stop: str | None = None  # None | "after_run" | "now"
        self._by: str | None = None  # who stopped the session when it was not the human ("signal SIGTERM")
        self._runs: dict[int, threading.Event] = {}  # experiments running or waiting for approval -> their cancel
        self._vetoes: dict[int, str] = {}
        self._force: set[int | None] = set()
        self._finish: set[int] = set()  # running experiments the human lets finish, whatever the early-stop rule says
        self._finish_new: list[int] = []  # of them, those not journaled yet
        self._approved: int | None = None  # the approved experiment (awaiting approval)
        self._awaiting: int | None = None
        self._review = review
        self._instructions = False

    # ---- commands ----
    def veto(self, reason: str = "", n: int | None = None) -> bool:
        """Discard experiment n (None: the only one running or waiting); kill it if it is running.
        A veto of an experiment that is not running or waiting is ignored (False), as is a veto
        without a number while several run."""
        with self._cv:
            if n is None:
                if len(self._runs) != 1:
                    return False
                n = next(iter(self._runs))
            if n not in self._runs:
                return False
            self._vetoes[n] = reason or "vetoed by the human"
            self._runs[n].set()
            self._cv.notify_all()
            return True

    def force_keep(self, n: int | None = None) -> None:
        """Keep experiment n (None: the running one, once it finishes) as the new best."""
        with self._cv:
            self._force.add(n)
            self._cv.notify_all()

    def let_finish(self, n: int | None = None) -> bool:
        """Let experiment n (None: the only one running) run to its end whatever the early-stop
        rule says. False when it is not running (or, without a number, several are)."""
        with self._cv:
            if n is None:
                if len(self._runs) != 1:
                    return False
                n = next(iter(self._runs))
            if n not in self._runs or self._runs[n].is_set():  # gone, or being stopped (vetoed, pruned, stop-now)
                return False
            if n not in self._finish:
                self._finish.add(n)
                self._finish_new.append(n)
            self._cv.notify_all()
            return True

    def pause(self) -> None:
        with self._cv:
            self._paused = True
            self._cv.notify_all()

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    def stop(self, mode: str = "after_run", by: str | None = None) -> None:
        """Stop after the run or now. `by` names who stopped it when it was not the human (the CLI
        passes "signal SIGTERM"); it goes into the reasons recorded for the session and its run."""
        if mode not in ("after_run", "now"):
            raise ValueError(f"stop mode must be 'after_run' or 'now', not {mode!r}")
        with self._cv:
            if self._stop != "now":
                self._stop = mode
                self._by = by
            if mode == "now":
                self.stopping.set()
                for e in self._runs.values():
                    e.set()
            self._cv.notify_all()

    def approve(self) -> None:
        """Approve the experiment waiting at the review gate."""
        with self._cv:
            self._approved = self._awaiting
            self._cv.notify_all()

    def set_review(self, on: bool) -> None:
        with self._cv:
            self._review = on
            self._cv.notify_all()

    def instructions_changed(self) -> None:
        with self._cv:
            self._instructions = True
            self._cv.notify_all()

    # ---- the engine's side ----
    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def review(self) -> bool:
        return self._review

    @property
    def stop_mode(self) -> str | None:
        return self._stop

    @property
    def stopped_by(self) -> str:
        """Who stopped the session, for its reasons: "the human", or what stop(by=...) named."""
        return self._by or "the human"

    def force_pending(self) -> list[int | None]:
        """Force-keep requests not yet applied (None: the running experiment, when it finishes)."""
        with self._cv:
            return sorted(self._force, key=lambda n: -1 if n is None else n)

    def take_let_finish(self) -> list[int]:
        """The let-finish requests not journaled yet (the engine journals each once)."""
        with self._cv:
            out, self._finish_new = self._finish_new, []
            return out

    def finishing(self, n: int) -> bool:
        """Whether the human lets experiment n finish (engine/early_stop.py does not stop it)."""
        with self._cv:
            return n in self._finish

    def take_veto(self, n: int) -> str | None:
        with self._cv:
            return self._vetoes.pop(n, None)

    def running(self) -> list[int]:
        """The experiments running or waiting for approval."""
        with self._cv:
            return sorted(self._runs)

    def take_force(self, n: int) -> bool:
        """Whether experiment n was force-kept (None, "the running one": only while it is the only
        one); consumes the request."""
        with self._cv:
            hit = n in self._force or (None in self._force and list(self._runs) in ([n], []))
            self._force.discard(n)
            if hit:
                self._force.discard(None)
            return hit

    def take_forced_past(self) -> list[int]:
        """Force-keep requests that name a specific finished experiment."""
        with self._cv:
            ns = sorted(n for n in self._force if n is not None)
            self._force -= set(ns)
            return ns

    def take_instructions_changed(self) -> bool:
        with self._cv:
            hit, self._instructions = self._instructions, False
            return hit

    def begin_run(self, n: int) -> threading.Event:
        """Experiment n is about to run (or wait for approval): its own cancel event, already set
        when the session is stopping now."""
        with self._cv:
            if n not in self._runs:  # (an approved run keeps the veto it may have had since)
                self._vetoes.pop(n, None)
            e = self._runs.setdefault(n, threading.Event())
            if self._stop == "now":
                e.set()
            return e

    def end_run(self, n: int) -> None:
        with self._cv:
            self._runs.pop(n, None)
            self._finish.discard(n)
            if self._awaiting == n:
                self._awaiting = None

    def await_approval(self, n: int) -> None:
        """Experiment n waits at the review gate."""
        with self._cv:
            self.begin_run(n)
            self._awaiting, self._approved = n, None

    def approval(self, n: int) -> str | None:
        """Where experiment n stands at the review gate: 'approved', 'vetoed', 'stopped', or None
        (still waiting)."""
        with self._cv:
            if self._stop is not None:
                return "stopped"
            if n in self._vetoes:
                return "vetoed"
            if self._approved == n or not self._review:
                self._approved = self._awaiting = None
                return "approved"
            return None


def pending_requests(control: Control, runs: int) -> list[str]:
    """The human's requests not carried out yet, as the state line says them (the TUI's, and the
    journal's for `cockpit status`): a force-keep, a stop or a pause after the runs in flight."""
    parts = [f"force-keep pending for {'the running experiment' if n is None else f'#{n}'}"
             for n in control.force_pending()]
    after = "the runs" if runs > 1 else "this run"
    if control.stop_mode == "after_run":
        parts.append(f"stopping after {after}")
    elif control.stop_mode == "now":
        parts.append("stopping now")
    elif control.paused and runs:
        parts.append(f"pausing after {after}")
    return parts
