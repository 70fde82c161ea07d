"""Modal screens: help, veto (with a reason), quit (after the run or now), the program.md editor."""

from __future__ import annotations

import os
from pathlib import Path

from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", id="close-help")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 70; height: auto; border: round $primary; background: $surface; padding: 1 2; }
    """

    def __init__(self, bindings):
        super().__init__()
        self.lines = [f"[b]{b.key_display or b.key:>7}[/b]  {b.description}" + (f" — {b.tooltip}" if b.tooltip else "")
                      for b in bindings if b.description]

    def compose(self):
        yield Static("[b]cockpit keys[/b]\n\n" + "\n".join(self.lines) + "\n\nctrl+p: command palette   escape: close")


class VetoScreen(ModalScreen[str | None]):
    """Confirm a veto, with an optional one-line reason that reaches the agent."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel-veto")]
    DEFAULT_CSS = """
    VetoScreen { align: center middle; }
    VetoScreen > Vertical { width: 70; height: auto; border: round $error; background: $surface; padding: 1 2; }
    """

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def compose(self):
        with Vertical():
            yield Label(f"Veto experiment #{self.n}? Its training is killed and the code reset to the best.")
            yield Input(placeholder="reason (optional, told to the agent); enter to veto, escape to cancel", id="reason")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or "vetoed by the human")

    def action_cancel(self) -> None:
        self.dismiss(None)


class QuitScreen(ModalScreen[str | None]):
    BINDINGS = [
        Binding("a", "choose('after_run')", "After this run", id="quit-after"),
        Binding("n", "choose('now')", "Now", id="quit-now"),
        Binding("escape", "choose(None)", "Cancel", id="quit-cancel"),
    ]
    DEFAULT_CSS = """
    QuitScreen { align: center middle; }
    QuitScreen > Vertical { width: 64; height: auto; border: round $warning; background: $surface; padding: 1 2; }
    QuitScreen Horizontal { height: auto; margin-top: 1; }
    """

    def compose(self):
        with Vertical():
            yield Label("Stop the session? Nothing is lost either way; `cockpit` resumes it later.")
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
