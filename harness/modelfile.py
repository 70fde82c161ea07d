"""The trained model as data: a graph of aten operators and its tensors, nothing that runs Python.

The training process (agent code) ends by exporting the model's forward with `torch.export`
and writing it here (`write`). The evaluation process (harness code only) reads it back
(`read`) and runs it with a plain loop over the nodes: each node calls one aten operator.
Nothing of torch's own export format is loaded on the evaluation side, because that format
unpickles (torch.export.load falls back to `weights_only=False`) and evaluates symbolic-shape
strings: a crafted file could run code there. This format has two files:

    graph.json    {"inputs": [...], "nodes": [...], "output": ...}; values are JSON literals,
                  tagged dtypes/devices/layouts/memory formats, and references to earlier nodes
    tensors.pt    {name: tensor}, read with torch.load(weights_only=True) and nothing else

Rules checked on both sides: every operator is an aten operator (no custom ops: their Python
would run in the evaluator), none reads files, none writes into anything (no in-place or out=
operator at all: the writer functionalizes the graph first), and the one output is the logits.
The evaluator also gives every call fresh copies of the parameters and buffers and zeroes
uninitialized memory, so a call cannot leave anything behind for the next one.
"""

from __future__ import annotations

import json
import operator
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

GRAPH, TENSORS = "graph.json", "tensors.pt"
MAX_NODES = 200_000
# aten operators that reach outside the tensors they are given.
DENIED = {"from_file", "_local_scalar_dense_out", "save", "load"}
# aten operators whose result is uninitialized memory: it could hold what an earlier call left
# there, so the evaluator zeroes it (a graph keeps no state, not even in freed memory).
UNINITIALIZED = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted"}
HOW_TO_EXPORT = (
    "make model(idx) exportable with torch.export: a pure tensor function of idx (no Python branches "
    "on tensor values, no .item()/.tolist(), no state changed inside forward, no custom or Triton ops; "
    "torch.compile'd parts are fine)"
)


class ModelFileError(Exception):
    """The exported model breaks a rule: the run is `invalid` with this reason."""


# ---- values: JSON with tags ----

def _enc(v: Any, names: dict[torch.fx.Node, int]) -> Any:
    if isinstance(v, torch.fx.Node):
        return {"ref": names[v]}
    if isinstance(v, (list, tuple)):
        return {"list": [_enc(x, names) for x in v]}
    if v is None or isinstance(v, (bool, int, float, str)):
        if isinstance(v, float) and v != v:
            return {"float": "nan"}
        if isinstance(v, float) and v in (float("inf"), float("-inf")):
            return {"float": str(v)}
        return v
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": v.type}  # the evaluator puts everything on its own device
    if isinstance(v, torch.layout):
        return {"layout": str(v).removeprefix("torch.")}
    if isinstance(v, torch.memory_format):
        return {"memory_format": str(v).removeprefix("torch.")}
    raise ModelFileError(f"the exported graph holds a value of type {type(v).__name__}; {HOW_TO_EXPORT}")


def _dec(v: Any, env: list[Any], device: torch.device) -> Any:
    if isinstance(v, dict):
        if len(v) != 1:
            raise ModelFileError("malformed model file: a tagged value with more than one tag")
        (tag, x), = v.items()
        if tag == "ref":
            if not isinstance(x, int) or not 0 <= x < len(env):
                raise ModelFileError("malformed model file: a reference to a later node")
            return env[x]
        if tag == "list" and isinstance(x, list):
            return [_dec(e, env, device) for e in x]
        if tag == "float" and x in ("nan", "inf", "-inf"):
            return float(x)
        if tag == "device":
            return device
        kinds = {"dtype": torch.dtype, "layout": torch.layout, "memory_format": torch.memory_format}
        if tag in kinds and isinstance(x, str) and isinstance(getattr(torch, x, None), kinds[tag]):
            return getattr(torch, x)
        raise ModelFileError(f"malformed model file: unknown value {tag}={x!r}")
    if isinstance(v, list):
        raise ModelFileError("malformed model file: an untagged list")
    return v


def _op(name: str) -> Callable[..., Any]:
    """The aten operator named `aten.<op>.<overload>`, refused unless it is one."""
    parts = name.split(".") if isinstance(name, str) else []
    if name == "getitem":
        return operator.getitem
    if len(parts) != 3 or parts[0] != "aten" or not all(p.isidentifier() for p in parts[1:]):
        raise ModelFileError(f"the exported graph calls {name!r}, which is not an aten operator; {HOW_TO_EXPORT}")
    if parts[1] in DENIED or parts[1].startswith("_local_scalar"):
        raise ModelFileError(f"the exported graph calls {name}, which the evaluation does not run; {HOW_TO_EXPORT}")
    try:
        packet = getattr(torch.ops.aten, parts[1])
        op = getattr(packet, parts[2])
    except (AttributeError, RuntimeError):
        raise ModelFileError(f"the exported graph calls {name}, which this torch does not have") from None
    if not isinstance(op, torch._ops.OpOverload):
        raise ModelFileError(f"the exported graph calls {name}, which is not an aten operator; {HOW_TO_EXPORT}")
    return op


# ---- the training side ----

def write(ep: Any, folder: Path) -> None:
    """Check an ExportedProgram against the rules and write it to `folder` (graph, then tensors)."""
    from torch.export.graph_signature import InputKind, OutputKind

    try:  # functional form: in-place operators become pure ones, and a write into state shows in the signature
        if any(isinstance(n.target, torch._ops.OpOverload) and mutates(n.target) for n in ep.graph.nodes):
            with warnings.catch_warnings():  # (only then: it takes seconds, and a graph without one is functional)
                warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecation notices, not the model's
                ep = ep.run_decompositions({})
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ModelFileError(f"the exported graph could not be made functional ({type(e).__name__}: {first}); "
                             f"{HOW_TO_EXPORT}") from e
    sig = ep.graph_signature
    outs = sig.output_specs
    mutated = [o.target for o in outs if o.kind != OutputKind.USER_OUTPUT]
    if mutated:
        raise ModelFileError(f"model(idx) changes state when called ({', '.join(map(str, mutated[:3]))}): the "
                             "evaluation calls it many times and every call must give the same logits for the same "
                             f"tokens; {HOW_TO_EXPORT}")
    if len(outs) != 1:
        raise ModelFileError(f"model(idx) returns {len(outs)} values; it must return one logits tensor")
    tensors: dict[str, torch.Tensor] = {}
    state = {**ep.state_dict, **ep.constants}
    names: dict[torch.fx.Node, int] = {}
    inputs: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(sig.input_specs):
        raise ModelFileError(f"the exported graph's inputs do not match its signature; {HOW_TO_EXPORT}")
    user = 0
    for node, spec in zip(placeholders, sig.input_specs):
        names[node] = len(names)
        if spec.kind == InputKind.USER_INPUT:
            user += 1
            inputs.append({"user": True})
            continue
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            raise ModelFileError(f"the exported graph takes a {spec.kind.name.lower()} input; {HOW_TO_EXPORT}")
        t = state.get(spec.target)
        if not isinstance(t, torch.Tensor):
            raise ModelFileError(f"the exported graph's {spec.target} is not a tensor; {HOW_TO_EXPORT}")
        key = f"t{len(tensors)}"
        tensors[key] = t.detach().to("cpu").clone().contiguous()
        inputs.append({"tensor": key})
    if user != 1:
        raise ModelFileError(f"model must take one input (idx); its graph takes {user}")
    output = None
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            (res,) = node.args
            if isinstance(res, (list, tuple)) and len(res) == 1:
                res = res[0]
            if not isinstance(res, torch.fx.Node):
                raise ModelFileError("model(idx) must return one logits tensor")
            output = _enc(res, names)
            continue
        if node.op != "call_function":
            raise ModelFileError(f"the exported graph has a {node.op} node; {HOW_TO_EXPORT}")
        t = node.target
        if t is operator.getitem:
            name = "getitem"
        elif isinstance(t, torch._ops.OpOverload) and t.namespace == "aten":
            name = f"aten.{t._opname}.{t._overloadname}"
        else:
            raise ModelFileError(f"the exported graph calls {getattr(t, '__name__', t)}, which is not an aten operator; "
                                 f"{HOW_TO_EXPORT}")
        _op(name)  # the same rules the evaluator applies
        nodes.append({"op": name, "args": _enc(list(node.args), names),
                      "kwargs": {k: _enc(v, names) for k, v in node.kwargs.items()}})
        names[node] = len(names)
    check_pure(inputs, [(_op(n["op"]), n["args"], n["kwargs"]) for n in nodes])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / GRAPH, "w", encoding="utf-8") as f:
        json.dump({"format": 1, "inputs": inputs, "nodes": nodes, "output": output}, f)
    torch.save(tensors, folder / TENSORS)


# ---- the evaluation side ----

def _refs(v: Any) -> list[int]:
    if isinstance(v, dict):
        if "ref" in v:
            return [v["ref"]] if isinstance(v["ref"], int) else []
        if "list" in v and isinstance(v["list"], list):
            return [r for e in v["list"] for r in _refs(e)]
    return []


def mutates(op: Any) -> bool:
    """Whether an operator writes into any of its arguments: an in-place operator (`add_`), an
    out= variant, or any schema that marks an argument as written. Names are checked besides the
    schema: purity must not rest on alias annotations alone (`_unsafe_view` returns a view of its
    argument and says nothing of it)."""
    if op is operator.getitem:
        return False
    name, overload = op._schema.name.split("::")[-1], op._overloadname
    if name.endswith("_") and not name.endswith("__"):  # dunders (`__and__`, `__iand__`): by their schema
        return True
    if overload == "out" or overload.endswith("_out"):
        return True
    return bool(op._schema.is_mutable) or any(a.alias_info is not None and a.alias_info.is_write
                                               for a in op._schema.arguments)


def check_pure(inputs: list[dict[str, Any]], ops: list[tuple[Any, Any, Any]]) -> None:
    """Refuse a graph that writes into anything: no in-place or out= operator, and no operator
    whose schema writes into an argument, whatever it is given (a graph exported by
    `write` is functional: torch's own functionalization turned in-place operators into
    their pure forms). The evaluator also gives every call fresh copies of the parameters and
    buffers (Program.__call__), so even a write this check missed could not last to the next call."""
    for op, _args, _kwargs in ops:
        if mutates(op):
            raise ModelFileError(f"model(idx) changes state when called ({op._schema.name.split('::')[-1]} writes into "
                                 "a tensor; the evaluation runs pure operators only): the evaluation calls it many times "
                                 f"and every call must give the same logits for the same tokens; {HOW_TO_EXPORT}")


class Program:
    """A model file, ready to call: logits = program(idx)."""

    def __init__(self, inputs: list[dict[str, Any]], nodes: list[dict[str, Any]], output: Any,
                 tensors: dict[str, torch.Tensor], device: torch.device):
        self.inputs, self.nodes, self.output, self.device = inputs, nodes, output, device
        self.tensors = tensors
        self.ops = [(_op(n["op"]), n["args"], n["kwargs"]) for n in nodes]
        check_pure(inputs, self.ops)
        self.blank = [getattr(op, "_opname", None) in UNINITIALIZED for op, _a, _k in self.ops]
        # After node k runs, the slots nothing later reads are freed (as compiled graphs do): the
        # intermediates of a whole forward pass never sit in memory together.
        last: dict[int, int] = {}
        for k, (_op_, args, kwargs) in enumerate(self.ops):
            for r in _refs(args) + [r for v in kwargs.values() for r in _refs(v)]:
                last[r] = k
        keep = set(_refs(output)) | set(range(len(inputs)))
        self.free: list[list[int]] = [[] for _ in self.ops]
        for slot, k in last.items():
            if slot not in keep:
                self.free[k].append(slot)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        # Fresh copies of the parameters and buffers for every call: whatever a call wrote into
        # them (were a write ever to get past check_pure) is gone by the next one.
        env: list[Any] = [idx if i.get("user") else self.tensors[i["tensor"]].clone() for i in self.inputs]
        dev = self.device
        for (op, args, kwargs), free, blank in zip(self.ops, self.free, self.blank):
            a = _dec(args, env, dev)
            kw = {k: _dec(v, env, dev) for k, v in kwargs.items()}
            out = op(*a, **kw)
            if blank and isinstance(out, torch.Tensor):
                out.zero_()
            env.append(out)
            del out
            del a, kw
            for slot in free:
                env[slot] = None
        logits: torch.Tensor = _dec(self.output, env, dev)
        return logits


def read(folder: Path, device: str | torch.device) -> Program:
    """Load a model file for evaluation: JSON and tensors only, every rule checked."""
    device = torch.device(device)
    try:
        data = json.loads((folder / GRAPH).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"no readable exported model ({type(e).__name__}); the run must end with rt.submit(model)") from None
    if not isinstance(data, dict) or data.get("format") != 1:
        raise ModelFileError("malformed model file")
    inputs, nodes, output = data.get("inputs"), data.get("nodes"), data.get("output")
    if not isinstance(inputs, list) or not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise ModelFileError("malformed model file")
    try:
        raw = torch.load(folder / TENSORS, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileError(f"the model's tensors do not load as plain tensors ({type(e).__name__})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelFileError("the model's tensors file holds something other than tensors")
    if sum(1 for i in inputs if isinstance(i, dict) and i.get("user")) != 1:
        raise ModelFileError("malformed model file: the graph must take exactly one input")
    for i in inputs:
        if not isinstance(i, dict) or not (i.get("user") is True or i.get("tensor") in raw):
            raise ModelFileError("malformed model file: an input names no tensor")
    for n in nodes:
        if not isinstance(n, dict) or not isinstance(n.get("args"), dict) or not isinstance(n.get("kwargs"), dict):
            raise ModelFileError("malformed model file: a node without arguments")
    tensors = {k: v.to(device) for k, v in raw.items()}
    return Program(inputs, nodes, output, tensors, device)
