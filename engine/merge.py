"""A line-level 3-way merge, used to rebase a pipelined proposal onto a new best.

While experiment N trains, the agent prepares N+1 against the best code of that moment (N's
parent). If N is kept, N+1's change must be re-applied on top of N. `merge3(base, ours, theirs)`
applies both sides' changes to `base` when they touch different lines and returns None when they
overlap. Unlike git, changes on adjacent lines do not conflict (two constants on neighbouring
lines of a hyperparameter block is the common case), but any overlap does, and so do two
different insertions at the same place.
"""

from __future__ import annotations

from difflib import SequenceMatcher


def _hunks(base: list[str], other: list[str]) -> list[tuple[int, int, list[str]]]:
    """The changes from base to other: (start, end, replacement) over base's lines."""
    sm = SequenceMatcher(None, base, other, autojunk=False)
    return [(i1, i2, other[j1:j2]) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"]


def _clash(a: tuple[int, int, list[str]], b: tuple[int, int, list[str]]) -> bool:
    (a1, a2, _), (b1, b2, _) = a, b
    if a1 == a2 and b1 == b2:
        return a1 == b1  # two insertions at the same place: which goes first is a guess
    if a1 == a2:
        return b1 < a1 < b2  # an insertion inside the other's replaced range
    if b1 == b2:
        return a1 < b1 < a2
    return max(a1, b1) < min(a2, b2)  # the replaced ranges overlap


def merge3(base: str, ours: str, theirs: str) -> str | None:
    """Both sides' changes applied to base, or None when they overlap."""
    if ours == base or ours == theirs:
        return theirs
    if theirs == base:
        return ours
    b = base.splitlines(keepends=True)
    ho, ht = _hunks(b, ours.splitlines(keepends=True)), _hunks(b, theirs.splitlines(keepends=True))
    hunks = list(ho)
    for h in ht:
        if h in ho:
            continue  # the same change on both sides
        if any(_clash(h, o) for o in ho):
            return None
        hunks.append(h)
    # Apply in base order; at one position an insertion goes before a replacement starting there.
    hunks.sort(key=lambda h: (h[0], h[1]))
    out: list[str] = []
    pos = 0
    for i1, i2, lines in hunks:
        out += b[pos:i1]
        out += lines
        pos = i2
    out += b[pos:]
    return "".join(out)
