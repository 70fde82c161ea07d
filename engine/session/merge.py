"""A line-level 3-way merge, used to rebase a pipelined proposal onto a new best.

While experiment N trains, the agent prepares N+1 against the best code of that moment (N's
parent). If N is kept, N+1's change must be re-applied on top of N. `merge3(base, ours, theirs)`
applies both sides' changes to `base` when they touch different lines and returns None when they
overlap. Unlike git, changes on adjacent lines do not conflict (two constants on neighbouring
lines of a hyperparameter block is the common case), but any overlap does, and so do two
different insertions at the same place.

Where the base repeats a line (blank lines, `)`, `x = block(x)`), a change next to the copies can
sit at any of them with the same result: deleting one of three blank lines says nothing about
which one. Two such changes near the same copies are ambiguous (applied both, a deletion made by
both sides happens twice; deduplicated, one side's edit of another copy is lost), so each change
is widened to the lines it could slide over before the overlap test, and only a change that
cannot slide counts as "the same change on both sides". The merge is also made with the lines
matched from the bottom, and read back (from the result, each side's change must be exactly the
other's); any disagreement is a conflict (the agent is asked again), never a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher

Hunk = tuple[int, int, list[str]]  # (start, end, replacement) over base's lines


def _hunks(base: list[str], other: list[str]) -> list[Hunk]:
    """The changes from base to other."""
    sm = SequenceMatcher(None, base, other, autojunk=False)
    return [(i1, i2, other[j1:j2]) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"]


def _span(base: list[str], h: Hunk) -> tuple[int, int]:
    """The base lines hunk h could slide over with the same result: (first start, last end)."""
    i1, i2, new = h
    lo, hi = i1, i2
    a, old, rep = i1, base[i1:i2], list(new)
    while a > 0 and all(x[-1] == base[a - 1] for x in (old, rep) if x):  # move up one line
        old, rep = [base[a - 1]] + old[:-1], ([base[a - 1]] + rep[:-1]) if rep else rep
        a -= 1
        lo = a
    b, old, rep = i2, base[i1:i2], list(new)
    while b < len(base) and all(x[0] == base[b] for x in (old, rep) if x):  # move down one line
        old, rep = old[1:] + [base[b]], (rep[1:] + [base[b]]) if rep else rep
        b += 1
        hi = b
    return lo, hi


def _clash(a: tuple[int, int], b: tuple[int, int]) -> bool:
    (a1, a2), (b1, b2) = a, b
    if a1 == a2 and b1 == b2:
        return a1 == b1  # two insertions at the same place: which goes first is a guess
    if a1 == a2:
        return b1 < a1 < b2  # an insertion inside the other's replaced range
    if b1 == b2:
        return a1 < b1 < a2
    return max(a1, b1) < min(a2, b2)  # the ranges overlap


def merge3(base: str, ours: str, theirs: str) -> str | None:
    """Both sides' changes applied to base, or None when they overlap or their place is ambiguous."""
    if ours == base or ours == theirs:
        return theirs
    if theirs == base:
        return ours
    b, o, t = (x.splitlines(keepends=True) for x in (base, ours, theirs))
    # The diff matches lines from the top; matched from the bottom it may pair them otherwise.
    down, up = _merge(b, o, t), _merge(b[::-1], o[::-1], t[::-1])
    if down is None or up is None or down != up[::-1]:
        return None
    # And from the result, each side's change must read as exactly the other side's change.
    ho, ht = _hunks(b, o), _hunks(b, t)
    shared = [h for h in ho if h in ht]
    if _changes(o, down) != _changes(b, t, shared) or _changes(t, down) != _changes(b, o, shared):
        return None
    return "".join(down)


def _changes(a: list[str], b: list[str], skip: Sequence[Hunk] = ()) -> list[tuple[list[str], list[str]]]:
    """What changes from a to b, without where: (removed lines, added lines) in order."""
    return [(a[i1:i2], new) for i1, i2, new in _hunks(a, b) if (i1, i2, new) not in skip]


def _merge(b: list[str], o: list[str], t: list[str]) -> list[str] | None:
    ho, ht = _hunks(b, o), _hunks(b, t)
    so = [_span(b, h) for h in ho]
    hunks = list(ho)
    for h in ht:
        s = _span(b, h)
        if h in ho and s == h[:2]:
            continue  # the same change on both sides, at a place that is not in doubt
        if any(_clash(s, x) for x in so):
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
    return out
