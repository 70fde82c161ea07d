"""Modal screens: help, veto (with a reason), force-keep (confirm), quit (after the run or now),
the program.md editor. What a dialog says will happen comes from cockpit/consequences.py."""

from __future__ import annotations

import os
from pathlib import Path

from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", id="close-help")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 100%; border: round $primary;
                                  background: $surface; padding: 1 2; scrollbar-size-vertical: 1; }
    HelpScreen Static { width: 100%; height: auto; }
    """

    def __init__(self, bindings, help_text: dict | None = None):
        super().__init__()
        help_text = help_text or {}
        self.lines = [f"[b]{b.key_display or b.key:>5}[/b]  {help_text.get(b.action) or b.tooltip or b.description}"
                      for b in bindings if b.description and b.show]  # ctrl+q, ctrl+c: said in q's line

    def compose(self):
        with VerticalScroll():  # on a short terminal it scrolls rather than losing its last lines
            yield Static("[b]cockpit keys[/b]\n\n" + "\n".join(self.lines)
                         + "\n\n[b]ctrl+p[/b]  the command palette: every action by name   [b]escape[/b]  close")


class VetoScreen(ModalScreen[str | None]):
    """Confirm a veto, with an optional one-line reason that reaches the agent."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel-veto")]
    DEFAULT_CSS = """
    VetoScreen { align: center middle; }
    VetoScreen > Vertical { width: 72; max-width: 100%; height: auto; border: round $error; background: $surface; padding: 1 2; }
    VetoScreen Static { width: 100%; height: auto; }
    """

    def __init__(self, n: int, text: str):
        super().__init__()
        self.n = n
        self.text = text  # what the veto does to it: killed while it runs, dropped while it waits

    def compose(self):
        with Vertical():
            # Static wraps: a dialog's text is never cut, whatever the terminal's width
            yield Static(self.text)
            yield Input(placeholder="reason (optional; the agent is told)", id="reason")
            yield Static("[dim]enter: veto   escape: cancel[/dim]")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or "vetoed by the human")

    def action_cancel(self) -> None:
        self.dismiss(None)


class ForceKeepScreen(ModalScreen[bool]):
    """Confirm a force-keep: it overrules the decision rule and moves the session branch."""

    BINDINGS = [
        Binding("y,enter", "choose(True)", "Force-keep", id="force-keep-yes"),
        Binding("n,escape", "choose(False)", "Cancel", id="force-keep-cancel"),
    ]
    DEFAULT_CSS = """
    ForceKeepScreen { align: center middle; }
    ForceKeepScreen > Vertical { width: 72; max-width: 100%; height: auto; border: round $warning; background: $surface;
                                 padding: 1 2; }
    ForceKeepScreen Static { width: 100%; height: auto; }
    ForceKeepScreen Static.hint { margin-top: 1; }
    """

    def __init__(self, n: int, text: str):
        super().__init__()
        self.n = n
        self.text = text

    def compose(self):
        with Vertical():
            yield Static(self.text)
            yield Static("[dim]y or enter: force-keep   n or escape: cancel[/dim]", classes="hint")

    def action_choose(self, yes: bool) -> None:
        self.dismiss(yes)


class QuitScreen(ModalScreen[str | None]):
    BINDINGS = [
        Binding("a", "choose('after_run')", "After this run", id="quit-after"),
        Binding("n", "choose('now')", "Now", id="quit-now"),
        Binding("escape", "choose(None)", "Cancel", id="quit-cancel"),
    ]
    DEFAULT_CSS = """
    QuitScreen { align: center middle; }
    QuitScreen > Vertical { width: 72; max-width: 100%; height: auto; border: round $warning; background: $surface; padding: 1 2; }
    QuitScreen Static { width: 100%; height: auto; }
    QuitScreen Horizontal { height: auto; margin-top: 1; }
    """

    def __init__(self, text: str = "Stop the session? `cockpit` resumes it later."):
        super().__init__()
        self.text = text  # what each choice does to the runs in flight (cockpit/consequences.py)

    def compose(self):
        with Vertical():
            yield Static(self.text, markup=False)
            with Horizontal():
                yield Button("After this run [a]", id="after_run", variant="primary")
                yield Button("Now [n]", id="now", variant="error")
                yield Button("Cancel [esc]", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_choose(self, mode: str | None) -> None:
        self.dismiss(mode)


class ProgramEditor(ModalScreen[bool]):
    """Edit program.md in place; ctrl+s writes it atomically and the agent is told."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="save-program"),
        Binding("escape", "close", "Close", id="close-program"),
    ]
    DEFAULT_CSS = """
    ProgramEditor > Vertical { border: round $primary; background: $surface; }
    ProgramEditor TextArea { height: 1fr; }
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def compose(self):
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        with Vertical():
            yield Label(f"{self.path.name} — ctrl+s save, escape close")
            yield TextArea(text, id="program", language="markdown")

    def action_save(self) -> None:
        text = self.query_one(TextArea).text
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)
        self.dismiss(True)

    def action_close(self) -> None:
        self.dismiss(False)
