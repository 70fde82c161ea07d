"""Commands from the UI (or a test, or the headless runner) to the engine. Thread-safe: any thread
may call these; the engine acts on them at its next safe point, except veto and stop-now, which
cancel a running training process at once (the runner kills its process group)."""

from __future__ import annotations

import threading


class Control:
    def __init__(self, review: bool = False):
        self._cv = threading.Condition()
        self.cancel_run = threading.Event()  # handed to the runner: set => kill the training group
        self.stopping = threading.Event()  # set by stop("now"): agents abandon their proposal and back-off
        self._paused = False
        self._stop: str | None = None  # None | "after_run" | "now"
        self._by: str | None = None  # who stopped the session when it was not the human ("signal SIGTERM")
        self._veto: str | None = None
        self._force: set[int | None] = set()
        self._approved = False
        self._review = review
        self._instructions = False
        self._current: int | None = None

    # ---- commands ----
    def veto(self, reason: str = "", n: int | None = None) -> None:
        """Discard experiment n (None: the current one); kill it if it is running. A veto that
        names an experiment which is no longer the current one is ignored."""
        with self._cv:
            if n is not None and self._current is not None and n != self._current:
                return
            self._veto = reason or "vetoed by the human"
            self.cancel_run.set()
            self._cv.notify_all()

    def force_keep(self, n: int | None = None) -> None:
        """Keep experiment n (None: the running one, once it finishes) as the new best."""
        with self._cv:
            self._force.add(n)
            self._cv.notify_all()

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
                self.cancel_run.set()
                self.stopping.set()
            self._cv.notify_all()

    def approve(self) -> None:
        with self._cv:
            self._approved = True
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

    def take_veto(self) -> str | None:
        with self._cv:
            reason, self._veto = self._veto, None
            return reason

    def peek_veto(self) -> str | None:
        return self._veto

    def take_force(self, n: int) -> bool:
        """Whether experiment n (the current one) was force-kept; consumes the request."""
        with self._cv:
            hit = n in self._force or None in self._force
            self._force.discard(n)
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

    def begin_run(self, n: int | None = None) -> None:
        """Experiment n starts: forget the previous one's cancel, veto and approval."""
        with self._cv:
            if self._stop != "now":
                self.cancel_run.clear()
                if self._stop == "now":  # a signal handler ran stop() in between, on this thread (the lock is reentrant)
                    self.cancel_run.set()
            self._approved = False
            self._veto = None
            self._current = n

    def wait_for_approval(self, poll: float = 0.5) -> str:
        """Block until approve, veto or stop-now. Returns 'approved', 'vetoed' or 'stopped'."""
        with self._cv:
            while True:
                if self._stop is not None:
                    return "stopped"
                if self._veto is not None:
                    return "vetoed"
                if self._approved or not self._review:
                    self._approved = False
                    return "approved"
                self._cv.wait(poll)

    def wait_while_paused(self) -> None:
        with self._cv:
            while self._paused and self._stop is None:
                self._cv.wait(1.0)
