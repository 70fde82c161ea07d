"""The offline agent: a seeded hill-climber over the UPPER_CASE numeric constants of the editable files.

It needs no key and no network. Each proposal changes one constant (sometimes two) by a sensible
step, through `Tools.edit_file` on that constant's line, so the same confinement applies as for
any agent. Its memory is the journal: it reads its own past descriptions from the history, never
repeats a move that was not kept from the same value, and after a kept move it tries the same
direction again on that constant (momentum).

Descriptions are machine- and human-readable, one move per constant, joined with "; ":

    MATRIX_LR 0.04 -> 0.056 (x1.4)
    DEPTH 4 -> 8 (x2); MUON_MOMENTUM 0.95 -> 0.975 (gap to 1 x0.5)

The constants themselves (which lines count, how a literal is rewritten) are tuner_constants.py's.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from engine.agents.base import Agent, Context, PastExperiment, Proposal
from engine.agents.tuner_constants import (Constant, Number, eval_number, find_constants, parse_number, read_constants,
                                           same_value, set_constant)
from engine.status import KEPT, Status
from engine.events import AgentText, Event
from engine.tools import Tools

# The names other modules and tests import from here.
__all__ = ["Constant", "Move", "Number", "PastMove", "Tuner", "candidate_moves", "constraints_ok", "describe",
           "eval_number", "find_constants", "parse_description", "parse_number"]

FACTORS = (0.5, 0.7, 1.4, 2.0)  # float steps; fractions near 1 scale their gap to 1 instead
ZERO_STARTS = (0.01, 0.05, 0.1, 0.2)  # a float at 0.0 cannot be scaled: try small values
FRACTION_NAME = re.compile(r"(FRAC|FRACTION|RATIO|MOMENTUM|BETA[12]?|DROPOUT)$")
MOVE = re.compile(r"(?P<key>(?:[\w./-]+:)?[A-Z][A-Z0-9_]*) (?P<old>\S+) -> (?P<new>\S+) \((?P<tag>[^()]*)\)")
FACTOR_TAG = re.compile(r"(?:^|\s)(?P<op>[x/])(?P<f>\d+(?:\.\d+)?)$")
NOT_A_VERDICT = frozenset({Status.INTERRUPTED})  # cockpit died mid-run: the move was never judged


def _round(x: float) -> float:
    """Four significant digits: readable literals, and a move is the same move when repeated."""
    return float(f"{x:.4g}")


def _move_id(key: str, old: Number, new: Number) -> tuple[str, float, float]:
    return key, float(f"{float(old):.10g}"), float(f"{float(new):.10g}")


# ---------------------------------------------------------------------------
# Moves
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    const: Constant
    new: Number
    tag: str  # "x1.4", "/2", "+8", "gap to 1 x0.5", "from 0"
    strength: float | None  # |log factor|, to repeat a step of the same size; None for additive steps

    @property
    def id(self) -> tuple[str, float, float]:
        return _move_id(self.const.key, self.const.value, self.new)

    @property
    def direction(self) -> int:
        return 1 if self.new > self.const.value else -1

    @property
    def text(self) -> str:
        c = self.const
        return f"{c.key} {c.literal(c.value)} -> {c.literal(self.new)} ({self.tag})"


def candidate_moves(c: Constant) -> list[Move]:
    """Every step the tuner would consider for `c` from its current value."""
    v = c.value
    moves: list[Move] = []
    if c.is_float:
        if v == 0:
            moves = [Move(c, z, "from 0", None) for z in ZERO_STARTS]
        elif FRACTION_NAME.search(c.name) and 0 < v < 1:
            for f in FACTORS:  # stay inside (0, 1): scale the gap to 1 when near 1, else the value
                if v > 0.5:
                    new, tag = _round(1 - (1 - v) * f), f"gap to 1 x{f:g}"
                else:
                    new, tag = _round(v * f), f"x{f:g}"
                if 0 < new < 1:
                    moves.append(Move(c, new, tag, abs(math.log(f))))
        else:
            moves = [Move(c, _round(v * f), f"x{f:g}", abs(math.log(f))) for f in FACTORS]
    elif v == 0:
        moves = [Move(c, 1, "+1", None)]
    elif isinstance(v, int) and v > 0 and v & (v - 1) == 0:  # powers of two stay powers of two, and >= 1
        moves = [Move(c, v * 2, "x2", math.log(2))]
        if v >= 2:
            moves.append(Move(c, v // 2, "/2", math.log(2)))
    else:
        d = max(1, round(abs(v) * 0.25))
        moves = [Move(c, v + d, f"+{d}", None)]
        if not (v >= 1 and v - d < 1):  # positive integers stay positive
            moves.append(Move(c, v - d, f"-{d}", None))
    unique: dict[float, Move] = {}
    for m in moves:
        if not same_value(m.new, v):
            unique.setdefault(float(m.new), m)
    return list(unique.values())


def constraints_ok(values: dict[str, Number]) -> bool:
    """Known-bad combinations: heads must tile the model width, and rotary needs an even head."""
    dim, head = values.get("MODEL_DIM"), values.get("HEAD_DIM")
    if isinstance(dim, int) and isinstance(head, int):
        if head <= 0 or head % 2 or dim % head:
            return False
    return True


# ---------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PastMove:
    key: str
    old: Number
    new: Number
    tag: str

    @property
    def strength(self) -> float | None:
        m = FACTOR_TAG.search(self.tag)
        if not m or float(m["f"]) <= 0:
            return None
        return abs(math.log(float(m["f"])))


def parse_description(description: str) -> list[PastMove] | None:
    """The moves of a description the tuner wrote; None for any other description."""
    moves = []
    for part in description.strip().split("; "):
        m = MOVE.fullmatch(part.strip())
        if not m:
            return None
        old, new = parse_number(m["old"]), parse_number(m["new"])
        if old is None or new is None:
            return None
        moves.append(PastMove(m["key"], old, new, m["tag"]))
    return moves or None


def describe(moves: list[Move]) -> str:
    return "; ".join(m.text for m in moves)


# ---------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------


class Tuner(Agent):
    """Seeded hill-climbing over numeric constants; deterministic given (seed, n) and the history."""

    name = "tuner"
    concurrent = False  # one proposal at a time: each knows the moves of those before it (ctx.in_flight)

    def __init__(self, pair_probability: float = 0.25, momentum_probability: float = 0.75):
        self.pair_probability = pair_probability
        self.momentum_probability = momentum_probability

    def propose(self, ctx: Context, tools: Tools, emit: Callable[[Event], None]) -> Proposal | None:
        rng = random.Random(f"{ctx.seed}-{ctx.n}")
        texts, constants = read_constants(ctx, tools)
        values = {path: {c.name: c.value for c in constants if c.path == path} for path in texts}
        failed = _failed_moves(ctx.history)
        busy = _moves_of(x.description for x in ctx.in_flight)  # tried now on another device: not again

        def valid(moves: list[Move]) -> bool:
            for path in {m.const.path for m in moves}:
                after = dict(values[path]) | {m.const.name: m.new for m in moves if m.const.path == path}
                if not constraints_ok(after) and constraints_ok(values[path]):  # don't block a fix
                    return False
            return True

        allowed = {c.key: [m for m in candidate_moves(c) if m.id not in failed | busy and valid([m])] for c in constants}
        open_constants = [c for c in constants if allowed[c.key]]
        if not open_constants:
            why = (
                f"every move from the current values of {len(constants)} constants has failed"
                if constants
                else "no UPPER_CASE numeric constants in the editable Python files"
            )
            emit(AgentText(n=ctx.n, text=f"nothing left to try: {why}"))
            return None

        momentum, why_not = _momentum(ctx.history, constants, allowed)
        if momentum is not None and rng.random() < self.momentum_probability:
            move, past, delta = momentum
            gain = "" if delta is None else f" ({delta:+.4g})"
            again = "again" if move.tag == past.tag else "the same way"
            explanation = f"{move.const.key}: last {past.tag} was kept{gain}; trying {move.tag} {again}"
            moves = [move]
        else:
            c = rng.choice(open_constants)
            moves = [rng.choice(allowed[c.key])]
            if rng.random() < self.pair_probability:
                partners = [
                    other
                    for other in open_constants
                    if other.key != c.key and any(valid([moves[0], m]) for m in allowed[other.key])
                ]
                if partners:
                    other = rng.choice(partners)
                    moves.append(rng.choice([m for m in allowed[other.key] if valid([moves[0], m])]))
            left = sum(len(v) for v in allowed.values())
            explanation = (
                " with ".join(f"{m.const.key} {m.tag}" for m in moves)
                + f": exploring ({left} untried moves over {len(open_constants)} constants"
                + (f"; {len(failed)} failed move{'s' if len(failed) != 1 else ''} skipped)" if failed else ")")
            )
            if momentum is not None:
                explanation = f"not repeating {momentum[0].const.key} {momentum[0].tag} this time; " + explanation
            elif why_not:
                explanation = f"{why_not}; " + explanation

        for move in moves:
            set_constant(move.const, move.new, tools)
        emit(AgentText(n=ctx.n, text=explanation))
        return Proposal(describe(moves))


def _moves_of(descriptions: Iterable[str]) -> set[tuple[str, float, float]]:
    return {_move_id(pm.key, pm.old, pm.new) for d in descriptions for pm in (parse_description(d) or ())}


def _failed_moves(history: list[PastExperiment]) -> set[tuple[str, float, float]]:
    failed = set()
    for e in history:
        if e.status in KEPT or e.status in NOT_A_VERDICT:
            continue
        for pm in parse_description(e.description) or ():
            failed.add(_move_id(pm.key, pm.old, pm.new))
    return failed


def _momentum(
    history: list[PastExperiment], constants: list[Constant], allowed: dict[str, list[Move]]
) -> tuple[tuple[Move, PastMove, float | None] | None, str]:
    """After the latest kept tuner experiment: the same-direction step on a constant it moved
    that still has the value it left. Returns (move, the kept move, its delta) or None, with a
    reason when a continuation existed but has already failed."""
    by_key = {c.key: c for c in constants}
    for e in reversed(history):
        if e.status not in KEPT:
            continue
        past_moves = parse_description(e.description)
        if past_moves is None:
            continue
        why_not = ""
        for pm in past_moves:
            c = by_key.get(pm.key)
            if c is None or not same_value(c.value, pm.new) or same_value(pm.old, pm.new):
                continue
            direction = 1 if pm.new > pm.old else -1
            same_way = [m for m in candidate_moves(c) if m.direction == direction]
            if not same_way:
                continue
            size = pm.strength or 0.0
            step = min(same_way, key=lambda m: abs((m.strength or 0.0) - size))  # the same size of step
            if step not in allowed[c.key]:
                why_not = f"{c.key}: {pm.tag} was kept but {step.tag} again already failed"
                continue
            return (step, pm, e.delta), ""
        return None, why_not
    return None, ""
