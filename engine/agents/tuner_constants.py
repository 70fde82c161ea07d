"""The tuner's view of the editable files: their UPPER_CASE numeric constants, read from the AST,
and the rewrite of one constant's literal in place through `Tools.edit_file` (so the same
confinement applies as for any agent).

A constant counts when a top-level line reads `NAME = <number>` or `NAME = <a> if <ID> else <b>`
(a number may be a small arithmetic expression such as 2**19). Of the conditional form the first
branch is changed when the profile is "cuda", else the second (train.py's `a if GPU else b`).
Booleans, tuples, names assigned twice and SEED are left alone.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from engine.agents.base import Context
from engine.tools import ToolError, Tools

Number = int | float

UPPER_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
POW2_LITERAL = re.compile(r"2\s*\*\*\s*\d+")


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


def same_value(a: Number, b: Number) -> bool:
    return float(f"{float(a):.10g}") == float(f"{float(b):.10g}")


# ---------------------------------------------------------------------------
# Constants
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
        targets: list[ast.expr] = (node.targets if isinstance(node, ast.Assign)
                                   else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)) else [])
        for t in targets:
            for sub in ast.walk(t) if t is not None else ():
                if isinstance(sub, ast.Name):
                    yield sub.id


def read_constants(ctx: Context, tools: Tools) -> tuple[dict[str, str], list[Constant]]:
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


def set_constant(c: Constant, value: Number, tools: Tools) -> None:
    """Rewrite the constant's literal to `value` on its own line with one `edit_file`, quoting just
    enough neighbouring lines to make the old text unique in the file."""
    text = tools.read_file(c.path)
    lines = text.split("\n")
    old_line = lines[c.line]
    current = parse_number(old_line[c.start : c.end])
    if current is None or not same_value(current, c.value):
        raise ToolError(f"{c.path} changed under the tuner at line {c.line + 1}")
    literal = c.literal(value)
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
