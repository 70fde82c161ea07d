"""A static check of train.py before it runs: it may import only torch and harness.runtime
(plus a few harmless standard modules), and may not reach for files, the shell or the harness's
internals. This is a guardrail against an agent gaming its metric, not a sandbox.
"""

from __future__ import annotations

import ast

ALLOWED_MODULES = {
    "torch", "math", "time", "dataclasses", "functools", "typing", "itertools",
    "collections", "contextlib", "enum", "__future__", "gc", "random", "statistics",
}
RUNTIME = "harness.runtime"
FORBIDDEN_CALLS = {"open", "exec", "eval", "compile", "__import__", "breakpoint", "input", "globals", "vars"}
FORBIDDEN_ATTRS = {
    "from_file", "load", "save", "hub", "cpp_extension", "load_library", "fromfile", "memmap",
    "__builtins__", "__import__", "__subclasses__", "__globals__", "__code__", "__loader__", "__spec__",
}


def check(source: str, filename: str = "train.py") -> str | None:
    """Return the first rule broken (one line), or None when the script passes."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as e:
        return f"{filename} does not compile: {e.msg} (line {e.lineno})"
    runtime_aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == RUNTIME:
                    runtime_aliases.add(a.asname or "harness")
                elif a.name.split(".")[0] not in ALLOWED_MODULES:
                    return f"{filename} line {node.lineno}: imports {a.name}; train.py may import only torch and harness.runtime"
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                return f"{filename} line {node.lineno}: relative imports are not allowed"
            if mod == "harness":
                for a in node.names:
                    if a.name != "runtime":
                        return f"{filename} line {node.lineno}: imports harness.{a.name}; only harness.runtime is allowed"
                    runtime_aliases.add(a.asname or "runtime")
            elif mod == RUNTIME:
                for a in node.names:
                    if a.name.startswith("_") or a.name == "*":
                        return f"{filename} line {node.lineno}: imports {a.name} from harness.runtime"
            elif mod.split(".")[0] not in ALLOWED_MODULES:
                return f"{filename} line {node.lineno}: imports {mod}; train.py may import only torch and harness.runtime"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            return f"{filename} line {node.lineno}: calls {node.func.id}(), which train.py may not use"
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
            return f"{filename} line {node.lineno}: uses .{node.attr}, which train.py may not use"
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_ATTRS:
            return f"{filename} line {node.lineno}: uses {node.id}, which train.py may not use"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and _root_name(node.value) in runtime_aliases
        ):
            return f"{filename} line {node.lineno}: reaches into the harness's internals ({node.attr})"
    return None


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None
