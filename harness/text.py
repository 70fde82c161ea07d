"""Text that the agent or train.py wrote, made safe to show: no terminal control sequences.

A description, a crash reason (an exception's message), a run log or the agent's own words can
carry escape sequences: OSC 52 writes the human's clipboard, OSC 0 sets the window title, cursor
movement and erase-line can hide a real line and draw a fake one. `printable` removes every
control sequence whole (so no `[2K` is left behind) and every other control character, keeping
newlines and tabs. It is applied where such text enters the engine's events, the journal's rows,
a run's log tail and the result of a run, and again by every printer, so no path from the agent
to a terminal, the TUI or the report carries one."""

from __future__ import annotations

import re

# Whole sequences first (ECMA-48): CSI with its parameters, the string commands (OSC, DCS, SOS, PM,
# APC) up to their terminator (BEL or ST; a newline or a new ESC ends an unterminated one, so it
# cannot swallow the honest lines after it), other two-character escapes; and their 8-bit forms.
_SEQUENCES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
    r"|[\x90\x98\x9d\x9e\x9f][^\x07\x1b\x9c\n]*(?:\x07|\x9c)?"
)
# What is left: C0 controls but tab and newline, DEL, C1 controls, and the Unicode marks that
# reorder or hide text (bidirectional overrides and isolates: "Trojan Source").
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` without control sequences or control characters; newlines and tabs stay, a carriage
    return becomes a newline (a lone `\\r` would let a line overwrite the one before it)."""
    if not text:
        return text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isprintable():  # the common case: nothing to strip (isprintable is False for \n, \t too)
        return text
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


def printable_or_none(text: str | None) -> str | None:
    return None if text is None else printable(text)
