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
# torch submodules that reach files, processes or foreign code: train.py has no use for them.
FORBIDDEN_TORCH = ("torch.multiprocessing", "torch.hub", "torch.package", "torch.serialization",
                   "torch.utils.cpp_extension", "torch.utils.data", "torch.distributed")
RUNTIME = "harness.runtime"
# The runtime's public API: the only names train.py may use from harness.runtime.
RUNTIME_API = {
    "profile", "vocab_size", "bos_id", "tokenizer", "autocast", "model_info",
    "train_batches", "fraction", "done", "progress", "submit",
}
FORBIDDEN_CALLS = {
    "open", "exec", "eval", "compile", "__import__", "breakpoint", "input", "globals", "locals", "vars",
    "getattr", "setattr", "delattr",
}
FORBIDDEN_ATTRS = {
    "from_file", "load", "save", "hub", "cpp_extension", "load_library", "fromfile", "memmap",
    "__builtins__", "__import__", "__subclasses__", "__globals__", "__code__", "__loader__", "__spec__",
    "__dict__", "__class__", "__bases__", "__mro__", "__getattribute__", "__setattr__", "__closure__",
    # modules that other modules re-export: the ways out to files, processes and the network
    "os", "sys", "subprocess", "pickle", "builtins", "importlib", "ctypes", "socket", "shutil",
    "pathlib", "io", "system", "popen", "multiprocessing", "signal",
}
# Settings that train.py may assign on imported modules (torch.backends.*, *.config.*).
SETTABLE_SEGMENTS = {"backends", "config"}


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
                elif a.name.split(".")[0] not in ALLOWED_MODULES or a.name.startswith(FORBIDDEN_TORCH):
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
                    if a.name not in RUNTIME_API:
                        return f"{filename} line {node.lineno}: imports {a.name} from harness.runtime, which is not its public API"
            elif mod.split(".")[0] not in ALLOWED_MODULES or mod.startswith(FORBIDDEN_TORCH) or (
                mod == "torch" and any(f"torch.{a.name}".startswith(FORBIDDEN_TORCH) for a in node.names)
            ):
                return f"{filename} line {node.lineno}: imports {mod}; train.py may import only torch and harness.runtime"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            return f"{filename} line {node.lineno}: calls {node.func.id}(), which train.py may not use"
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
            return f"{filename} line {node.lineno}: uses .{node.attr}, which train.py may not use"
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_ATTRS:
            return f"{filename} line {node.lineno}: uses {node.id}, which train.py may not use"
    imported = _import_aliases(tree)  # alias -> the top-level module it comes from
    modules = set(imported)
    torch_names = {a for a, root in imported.items() if root == "torch"}
    bases: set[tuple[str, ...]] = {("runtime",) if a == "runtime" else (a,) for a in runtime_aliases if a != "harness"}
    if "harness" in runtime_aliases:
        bases.add(("harness", "runtime"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = tuple(_chain(node.value))
            if base in bases and node.attr not in RUNTIME_API:
                return f"{filename} line {node.lineno}: uses runtime.{node.attr}, which is not the harness's public API"
            if base == ("harness",) and node.attr != "runtime":
                return f"{filename} line {node.lineno}: reaches into harness.{node.attr}"
            root = base[0] if base else None
            if (node.attr.startswith("_") and not node.attr.startswith("__") and root in modules
                    and root not in torch_names):
                return f"{filename} line {node.lineno}: uses the private name {node.attr} of {'.'.join(base)}"
        targets: list[ast.expr] = []
        line = 0
        if isinstance(node, ast.Assign):
            targets, line = node.targets, node.lineno
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets, line = [node.target], node.lineno
        elif isinstance(node, ast.Delete):
            targets, line = node.targets, node.lineno
        stack = list(targets)
        while stack:
            t = stack.pop()
            if isinstance(t, (ast.Tuple, ast.List)):
                stack.extend(t.elts)
                continue
            while isinstance(t, ast.Subscript):
                t = t.value
            chain = _chain(t) if isinstance(t, ast.Attribute) else []
            if chain and chain[0] in modules:
                if not SETTABLE_SEGMENTS & set(chain[1:-1]):
                    return f"{filename} line {line}: assigns to {'.'.join(chain)}, changing an imported module"
    return None


def _import_aliases(tree: ast.AST) -> dict[str, str]:
    """Names bound by import statements, each with the top-level module it comes from."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                names[a.asname or a.name] = (node.module or "").split(".")[0]
    return names


def _chain(node: ast.AST) -> list[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return parts[::-1]
