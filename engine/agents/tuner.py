"""The offline agent: a seeded hill-climber over the UPPER_CASE numeric constants of the editable files.

It needs no key and no network. Each proposal changes one constant (sometimes two) by a sensible
step, through `Tools.edit_file` on that constant's line, so the same confinement applies as for
any agent. Its memory is the journal: it reads its own past descriptions from the history, never
repeats a move that was not kept from the same value, and after a kept move it tries the same
direction again on that constant (momentum).

Descriptions are machine- and human-readable, one move per constant, joined with "; ":

    MATRIX_LR 0.04 -> 0.056 (x1.4)
    DEPTH 4 -> 8 (x2); MUON_MOMENTUM 0.95 -> 0.975 (gap to 1 x0.5)

A constant counts when a top-level line reads `NAME = <number>` or `NAME = <a> if <ID> else <b>`
(a number may be a small arithmetic expression such as 2**19). Of the conditional form the first
branch is changed when the profile is "cuda", else the second (train.py's `a if GPU else b`).
Booleans, tuples, names assigned twice and SEED are left alone.
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from engine.agents.base import Agent, Context, PastExperiment, Proposal
from engine.status import KEPT, Status
from engine.events import AgentText, Event
from engine.tools import ToolError, Tools

Number = int | float

FACTORS = (0.5, 0.7, 1.4, 2.0)  # float steps; fractions near 1 scale their gap to 1 instead
ZERO_STARTS = (0.01, 0.05, 0.1, 0.2)  # a float at 0.0 cannot be scaled: try small values
FRACTION_NAME = re.compile(r"(FRAC|FRACTION|RATIO|MOMENTUM|BETA[12]?|DROPOUT)$")
UPPER_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
POW2_LITERAL = re.compile(r"2\s*\*\*\s*\d+")
MOVE = re.compile(r"(?P<key>(?:[\w./-]+:)?[A-Z][A-Z0-9_]*) (?P<old>\S+) -> (?P<new>\S+) \((?P<tag>[^()]*)\)")
FACTOR_TAG = re.compile(r"(?:^|\s)(?P<op>[x/])(?P<f>\d+(?:\.\d+)?)$")
NOT_A_VERDICT = frozenset({Status.INTERRUPTED})  # cockpit died mid-run: the move was never judged


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------

_BINOPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}


def eval_number(node: ast.AST) -> Number | None:
    """The value of a numeric literal or a small arithmetic expression of them (2**19, -3e-4,
    64 * 1024); None for anything else (names, calls, booleans, tuples)."""
    try:
        value = _eval(node)
    except (ZeroDivisionError, OverflowError, ValueError):
        return None
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _eval(node: ast.AST) -> Number | None:
    if isinstance(node, ast.Constant):
        value = node.value
        return value if isinstance(value, (int, float)) and type(value) in (int, float) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left), _eval(node.right)
        if a is None or b is None:
            return None
        if isinstance(node.op, ast.Pow):
            if abs(b) > 128 or abs(a) > 2**16:  # keep it cheap: a literal, not a computation
                return None
            return a**b
        op = _BINOPS.get(type(node.op))
        return None if op is None else op(a, b)
    return None


def parse_number(text: str) -> Number | None:
    try:
        return eval_number(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError):
        return None


def _round(x: float) -> float:
    """Four significant digits: readable literals, and a move is the same move when repeated."""
    return float(f"{x:.4g}")


def _same(a: Number, b: Number) -> bool:
    return float(f"{float(a):.10g}") == float(f"{float(b):.10g}")


def _move_id(key: str, old: Number, new: Number) -> tuple[str, float, float]:
    return key, float(f"{float(old):.10g}"), float(f"{float(new):.10g}")


# ---------------------------------------------------------------------------
# Constants and moves
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Constant:
    path: str
    name: str
    key: str  # the name, or "path:NAME" when several files define NAME
    value: Number
    is_float: bool
    pow2_style: bool  # written as 2**k: new powers of two are written the same way
    line: int  # 0-based line index
    start: int  # character offsets of the literal within the line
    end: int
    stmt_end: int  # character offset where the statement ends (an inline comment may follow)

    def literal(self, value: Number) -> str:
        if self.is_float:
            return repr(float(value))
        value = int(value)
        if self.pow2_style and value > 0 and value & (value - 1) == 0:
            return f"2**{value.bit_length() - 1}"
        return str(value)


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


def find_constants(path: str, text: str, profile: str) -> list[Constant]:
    """The tunable constants of one Python file, in file order; [] when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    assigned = Counter(_top_level_names(tree))
    lines = text.split("\n")
    found = []
    for node in tree.body:
        literal: ast.expr
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, literal = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, literal = node.target, node.value
        else:
            continue
        if not isinstance(target, ast.Name) or node.lineno != node.end_lineno:
            continue
        name = target.id
        if not UPPER_NAME.fullmatch(name) or "SEED" in name or assigned[name] != 1:
            continue
        if isinstance(literal, ast.IfExp):
            if not isinstance(literal.test, ast.Name) or None in (eval_number(literal.body), eval_number(literal.orelse)):
                continue
            literal = literal.body if profile == "cuda" else literal.orelse
        value = eval_number(literal)
        if value is None:
            continue
        line = lines[node.lineno - 1]
        raw = line.encode("utf-8")  # ast offsets count UTF-8 bytes
        start = len(raw[: literal.col_offset].decode("utf-8"))
        end = len(raw[: literal.end_col_offset].decode("utf-8"))
        stmt_end = len(raw[: node.end_col_offset].decode("utf-8"))
        found.append(
            Constant(
                path=path,
                name=name,
                key=name,
                value=value,
                is_float=isinstance(value, float),
                pow2_style=bool(POW2_LITERAL.fullmatch(line[start:end])),
                line=node.lineno - 1,
                start=start,
                end=end,
                stmt_end=stmt_end,
            )
        )
    return found


def _top_level_names(tree: ast.Module) -> Iterator[str]:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for t in targets:
            for sub in ast.walk(t) if t is not None else ():
                if isinstance(sub, ast.Name):
                    yield sub.id


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
        if not _same(m.new, v):
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
        texts, constants = self._constants(ctx, tools)
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
            self._apply(move, tools)
        emit(AgentText(n=ctx.n, text=explanation))
        return Proposal(describe(moves))

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _constants(ctx: Context, tools: Tools) -> tuple[dict[str, str], list[Constant]]:
        """The editable Python files as they are on disk, and their constants (keys made unique)."""
        texts: dict[str, str] = {}
        constants: list[Constant] = []
        for path in sorted(ctx.files):
            if not path.endswith(".py"):
                continue
            try:
                texts[path] = tools.read_file(path)
            except ToolError:
                continue  # not readable through the tools: not ours to tune
            constants += find_constants(path, texts[path], ctx.profile)
        names = Counter(c.name for c in constants)
        constants = [
            c if names[c.name] == 1 else replace(c, key=f"{c.path}:{c.name}") for c in constants
        ]
        return texts, constants

    @staticmethod
    def _apply(move: Move, tools: Tools) -> None:
        """Rewrite the constant's literal on its own line with one `edit_file`, quoting just
        enough neighbouring lines to make the old text unique in the file."""
        c = move.const
        text = tools.read_file(c.path)
        lines = text.split("\n")
        old_line = lines[c.line]
        current = parse_number(old_line[c.start : c.end])
        if current is None or not _same(current, c.value):
            raise ToolError(f"{c.path} changed under the tuner at line {c.line + 1}")
        literal = c.literal(move.new)
        code, rest = old_line[: c.start] + literal + old_line[c.end : c.stmt_end], old_line[c.stmt_end :]
        aligned = re.match(r"( +)#", rest)  # keep an inline comment in its column where there is room
        if aligned:
            pad = max(1, len(aligned[1]) - (len(literal) - (c.end - c.start)))
            rest = " " * pad + rest[len(aligned[1]) :]
        new_line = code + rest
        lo = hi = c.line
        while True:
            head = "\n" if lo > 0 else ""
            tail = "\n" if hi < len(lines) - 1 else ""
            old = head + "\n".join(lines[lo : hi + 1]) + tail
            if text.count(old) == 1:
                break
            lo, hi = max(0, lo - 1), min(len(lines) - 1, hi + 1)
        new = head + "\n".join(lines[lo : c.line] + [new_line] + lines[c.line + 1 : hi + 1]) + tail
        tools.edit_file(c.path, old, new)


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
            if c is None or not _same(c.value, pm.new) or _same(pm.old, pm.new):
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
