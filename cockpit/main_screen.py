"""The main screen's keys: every binding, with what it does (the command palette and the help
list read them), and the action behind each. Mixed into the app (cockpit/app.py), whose panes,
control and live state (cockpit/presenter.py: Live) they act on; reads go through the session's
read model (engine/store/view.py)."""

from __future__ import annotations

import os
import subprocess

from textual.app import SystemCommand
from textual.binding import Binding

from engine.session.record import force_keep_refusal

from .consequences import force_keep_consequences, quit_consequences, veto_consequences
from .screens import ForceKeepScreen, HelpScreen, ProgramEditor, QuitScreen, VetoScreen


class MainScreenKeys:
    BINDINGS = [
        Binding("v", "veto", "Veto", id="veto"),
        Binding("k", "force_keep", "Keep", id="force-keep"),
        Binding("e", "edit_program", "Edit", id="edit-program", tooltip="edit program.md in the app"),
        Binding("E", "external_edit", "$EDITOR", id="external-edit", tooltip="edit program.md in $EDITOR"),
        Binding("r", "toggle_review", "Review", id="review", tooltip="review gate: hold each run for approval"),
        Binding("a", "approve", "Approve", id="approve"),
        Binding("p", "toggle_pause", "Pause", id="pause"),
        Binding("f", "let_finish", "Finish", id="let-finish", tooltip="let the running experiment finish: no early stop"),
        Binding("enter", "open_selected", "Open", id="open", show=False),
        Binding("question_mark", "help", "Help", id="help", key_display="?"),
        Binding("q", "quit_prompt", "Quit", id="quit"),
        # Textual's own ways out (ctrl+q quits at once, ctrl+c hints at ctrl+q): the same dialog as q
        Binding("ctrl+q", "quit_prompt", "Quit", id="quit-ctrl-q", show=False, priority=True),
        Binding("ctrl+c", "quit_prompt", "Quit", id="quit-ctrl-c", show=False, system=True),
    ]

    # ---- the command palette (ctrl+p): every action, with its key ----
    # What each key does, for the palette (the footer's short labels name them).
    ACTION_HELP = {
        "veto": "discard the running (or waiting) experiment now, after a confirmation: a run is killed, a waiting one never runs",
        "force_keep": "keep the selected finished experiment (or the running one when it ends) as the new best, after a confirmation",
        "edit_program": "edit program.md, the agent's instructions, in the app",
        "external_edit": "edit program.md in $EDITOR",
        "toggle_review": "review gate: hold each proposal until you approve or veto it",
        "approve": "approve the proposal waiting at the review gate",
        "toggle_pause": "pause: no new experiment starts (the running one finishes); again to resume",
        "let_finish": "let the selected running experiment run to its end, whatever the early-stop rule says (journaled)",
        "open_selected": "open the selected experiment: its diff, reason and log",
        "help": "every key and what it does",
        "quit_prompt": "stop the session, after this run or now (ctrl+q, ctrl+c ask the same); `cockpit` resumes it later",
    }

    def get_system_commands(self, screen):
        for b in self.BINDINGS:
            if not b.show:  # ctrl+q, ctrl+c: the same action as a shown key, listed once
                continue
            key = b.key_display or b.key
            yield SystemCommand(f"{b.description} ({key})", self.ACTION_HELP.get(b.action, b.tooltip or b.description),
                                lambda action=b.action: self.run_action(action))
        yield SystemCommand("Screenshot", "save an SVG of the screen under .cockpit/screenshots/ (the notice names it)",
                            lambda: self.set_timer(0.1, self.save_screen))  # once the palette has closed
        for c in super().get_system_commands(screen):
            # Textual's Quit leaves at once (the run lost); its Screenshot saves to a ~/Downloads
            # that a server seldom has. Both are replaced above.
            if c.title not in ("Quit", "Screenshot"):
                yield c

    def action_quit(self) -> None:
        """Textual's quit (its palette entry, a binding of ctrl+q anywhere): the quit dialog."""
        self.action_quit_prompt()

    def action_help_quit(self) -> None:
        """Textual's ctrl+c hint ("press ctrl+q to quit"): the quit dialog instead."""
        self.action_quit_prompt()

    def save_screen(self) -> None:
        """The palette's Screenshot: an SVG in the workspace's .cockpit/screenshots/, named in a notice."""
        folder = self.view.state / "screenshots"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = self.save_screenshot(path=str(folder))
        except OSError as e:
            self.notify(f"could not save the screenshot in {folder}: {e.strerror or e}", severity="error")
            return
        self.notify(f"screenshot saved: {path}")

    # ---- keys ----
    def _stopped_says(self, what: str) -> bool:
        """After the session stopped, a key that acts on it says so (and does nothing)."""
        if self.stop_reason is None:
            return False
        self.notify(f"the session has stopped ({self.stop_reason}): {what}; run `cockpit` to resume it", severity="warning")
        return True

    def _chosen_run(self) -> int | None:
        """The experiment a key acts on: the one selected in the table when it runs (or waits at
        the review gate), else the only one running or waiting."""
        live = set(self.live.running) | ({self.live.awaiting_n} if self.live.awaiting_n is not None else set())
        n = self.table.selected_number()
        if n in live:
            return n
        return next(iter(live)) if len(live) == 1 else None

    def action_veto(self) -> None:
        if self._stopped_says("nothing runs to veto"):
            return
        n = self._chosen_run()
        if n is None:
            if len(self.live.running) > 1:
                listed = ", ".join(f"#{k}" for k in sorted(self.live.running))
                self.notify(f"{len(self.live.running)} experiments run ({listed}): select one in the table, then v",
                            severity="warning")
            else:
                self.notify("nothing is running or waiting to veto (the agent is proposing)", severity="warning")
            return

        def done(reason: str | None) -> None:
            if reason is None:
                return
            if self.control.veto(reason, n):  # the agent pane says it once, from the record (ExperimentFinished)
                self.notify(f"#{n} vetoed: {reason}")
            else:
                self.notify(f"#{n} had already finished: nothing to veto", severity="warning")

        self.push_screen(VetoScreen(n, veto_consequences(n, running=n in self.live.running)), done)

    def action_let_finish(self) -> None:
        """f: the selected (or only) running experiment runs to its end; the early-stop rule only
        says where it would have stopped it."""
        if self._stopped_says("nothing runs"):
            return
        n = self._chosen_run()
        if n is None or n not in self.live.running:
            self.notify("select a running experiment to let it finish" if len(self.live.running) > 1
                        else "nothing is running", severity="warning")
            return
        if self.control.let_finish(n):
            self.notify(f"#{n} runs to its end: early stop will not stop it")
        else:
            self.notify(f"#{n} is no longer running: it finished or is being stopped", severity="warning")

    def action_force_keep(self) -> None:
        """k: checked first (a baseline, a row without a result, the best already: said, and
        nothing sent), then a dialog that says how far the run is from the best and that the
        branch moves; only a yes sends the force-keep."""
        if self._stopped_says("a keep applies to a running session"):
            return
        n = self.table.selected_number()
        if n is None or (n not in self.live.running and n not in self.table.data_rows):
            n = self._chosen_run()
        if n is None:
            self.notify("select a finished experiment to keep", severity="warning")
            return
        running = n in self.live.running
        if not running:
            why = self._force_keep_refusal(n)
            if why is not None:
                self.notify(why, severity="warning")
                return
        metric = None if running else self.table.data_rows[n]["metric"]
        s = self.engine.session
        text = force_keep_consequences(n, metric=metric, best=self.live.best[1], best_n=self.table.best_n,
                                       direction=self.engine.target.direction, noise=s.noise if s is not None else None,
                                       metric_name=self.engine.target.metric_name)

        def done(yes: bool | None) -> None:
            if not yes:
                return
            if self.stop_reason is not None:
                self.notify(f"the session has stopped ({self.stop_reason}): #{n} is not kept", severity="warning")
                return
            self.control.force_keep(n)
            self.notify(f"#{n} will be kept when it finishes" if running
                        else f"#{n} will become the best before the next experiment")
            self.refresh_state()

        self.push_screen(ForceKeepScreen(n, text), done)

    def _force_keep_refusal(self, n: int) -> str | None:
        """Why finished experiment n cannot be force-kept, from its journal row (the table's row
        while the session has none yet)."""
        row = self.table.data_rows[n]
        s = self.engine.session
        x = self.view.experiment(n) if s is not None else None
        if x is None:
            return force_keep_refusal(n, kind="baseline" if row["status"] == "baseline" else "experiment",
                                      metric=row["metric"], commit=row["commit"], best_n=self.table.best_n)
        return force_keep_refusal(n, kind=x.kind, metric=x.metric, commit=x.commit_sha, best_n=self.table.best_n,
                                  harness_matches=x.harness == self.engine.harness)

    def action_edit_program(self) -> None:
        def done(saved: bool | None) -> None:
            if saved:
                self._program_hash = self._program_digest()  # its own events then say nothing more
                self.control.instructions_changed()
                self.notify("program.md saved: the agent is told at its next proposal")

        self.push_screen(ProgramEditor(self.view.program_path), done)

    def action_external_edit(self) -> None:
        import shlex

        from textual.app import SuspendNotSupported

        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        cmd = [*shlex.split(editor), str(self.view.program_path)]
        try:
            with self.suspend():
                subprocess.run(cmd)
        except SuspendNotSupported:  # no terminal to hand over (headless): run it as it is
            subprocess.run(cmd, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            self.notify(f"editor not found: {editor} (set $EDITOR)", severity="error")
            return
        if self._program_digest() == self._program_hash:
            self.notify("program.md unchanged: the agent's instructions stay as they were")
            return
        self._program_settled()  # the editor has exited: the file is whole now

    def action_toggle_review(self) -> None:
        if self._stopped_says("the review gate applies to a running session"):
            return
        on = not self.control.review
        self.control.set_review(on)
        self.notify(f"review gate {'on: each proposal waits for a (approve) or v (veto)' if on else 'off'}")
        self.refresh_state()

    def action_approve(self) -> None:
        if self._stopped_says("nothing waits for approval"):
            return
        if self.live.awaiting_n is None:
            why = "" if self.control.review else " (the review gate is off: r turns it on)"
            self.notify(f"nothing is waiting for approval{why}", severity="warning")
            return
        self.control.approve()
        self.notify(f"#{self.live.awaiting_n} approved")

    def action_toggle_pause(self) -> None:
        if self._stopped_says("nothing to pause"):
            return
        if self.control.paused:
            self.control.resume()
            self.notify("resumed")
        else:
            self.control.pause()
            if self.live.running:
                listed = ", ".join(f"#{k}" for k in sorted(self.live.running))
                ends = "finishes" if len(self.live.running) == 1 else "finish"
                self.notify(f"pausing: {listed} {ends}, then no new experiment starts until p")
            else:
                self.notify("paused: no new experiment starts until p")
        self.refresh_state()

    def on_data_table_row_selected(self, event) -> None:
        """enter on a row (the table handles the key itself): open that experiment."""
        self.action_open_selected()

    def action_open_selected(self) -> None:
        n = self.table.selected_number()
        if n is None:
            return
        if n in self.live.running or n == max(self.table.data_rows, default=n):
            self.live.diff_pinned = None  # back to the live diff (of this run, when it runs)
            shown = n if n in self.live.diffs else (self.live.live_diff.n if self.live.live_diff is not None else None)
            if shown is not None:
                self.diff.show(f"#{shown} vs best", self.live.diffs.get(shown) or self.live.live_diff.diff, n=shown)
            return
        self.live.diff_pinned = n
        e = self.view.experiment(n)
        if e is None:
            return
        diff, tail = self.view.diff(e), self.view.log_tail(e)
        if e.reason:  # why it ended so, above its log
            tail = f"{e.status}: {e.reason}\n\n{tail}"
        self.diff.show(f"#{n} {e.status}: {e.description or ''}"[:80], diff, tail, n=n)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.BINDINGS, self.ACTION_HELP))

    def action_quit_prompt(self) -> None:
        """Every way out (q, ctrl+q, ctrl+c, the palette's Quit) asks here: after this run, or now."""
        if self.stop_reason is not None:
            self.exit(self.stop_reason)
            return
        if isinstance(self.screen, QuitScreen):  # asked already
            return

        def done(mode: str | None) -> None:
            if mode:
                self.control.stop(mode)
                self.refresh_state()

        forced = [self.live.running_n if n is None else n for n in self.control.force_pending()]
        self.push_screen(QuitScreen(quit_consequences(sorted(self.live.running), forced)), done)
