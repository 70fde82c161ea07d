"""cockpit.toml: the workspace's target, decision rule and agent. Every key is optional."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

import tomllib

from harness.errors import HarnessError

CONFIG_NAME = "cockpit.toml"


class ConfigError(HarnessError):
    pass


class AgentSettings(TypedDict, total=False):
    """The ClaudeConfig fields set in [agent] (engine/agents/claude_api.py): checked here, passed on as keywords."""

    context_tokens: int
    thinking_budget: int
    max_tokens: int
    max_api_wait: float
    connect_timeout: float
    read_timeout: float
    thinking: str
    effort: str
    prices: dict[str, float]


@dataclass(frozen=True)
class TargetConfig:
    """What an experiment changes and how it is measured. The default is the bundled GPT trainer."""

    kind: str = "gpt"  # "gpt" (harness + trainer/train.py) or "command" (a run command + locked measure script)
    editable: tuple[str, ...] = ("trainer/train.py",)
    metric: str = "val_bpb"
    direction: str = "min"
    budget: float | None = None  # seconds; None = the profile's default
    run: str | None = None  # kind="command": shell command run in the workspace, killed past budget
    measure: str | None = None  # kind="command": locked script; its last line `metric: <value>` is the result
    locked: tuple[str, ...] = ()  # kind="command": files hashed at session start and re-checked before each run


@dataclass(frozen=True)
class DecisionConfig:
    baseline_runs: int = 2
    min_delta: float = 3e-4
    noise_k: float = 2.0
    early_stop: str = "auto"  # auto: a losing run is stopped once the session has the data (engine/early_stop.py); off
    early_stop_grace: float = 0.3  # no early stop before this fraction of the budget
    early_stop_k: float = 3.0  # the band: this many spreads of the baselines' loss (pooled over the budget)...
    early_stop_floor: float = 0.03  # ...and never less than this (training-loss units)


@dataclass(frozen=True)
class Config:
    target: TargetConfig = field(default_factory=TargetConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    agent: str = "auto"
    model: str | None = None
    base_url: str | None = None
    max_consecutive_crashes: int = 5
    agent_numbers: AgentSettings = field(default_factory=lambda: AgentSettings())  # ClaudeConfig fields set in [agent] (numbers, thinking, effort, prices)
    pipeline: bool = True  # the agent prepares the next experiment while one trains
    sandbox: str = "auto"  # [run] sandbox: auto (when the machine allows) | required | off
    compile_cache: str = "private"  # [run] compile_cache: private (per run) | shared (faster; a channel between runs)
    devices: str = "auto"  # [run] devices: auto (every visible CUDA device) | "0,1,3" | "cpu:N" (engine/run/slots.py)
    cluster: str = "local"  # [run] cluster: local (this machine's devices) | ray (every node's: engine/run/cluster.py)
    address: str = "auto"  # [run] address: the Ray cluster's (auto: the one `ray start` made on this machine)
    keep_files_mb: float = 1024  # [run] keep_files_mb: a run's files/ kept after it, at most (harness/resources.py)
    keep_files_total_mb: float = 10240  # [run] keep_files_total_mb: all kept files/ of a session's runs (oldest go)


# The numeric keys of [target], [decision] and [stop], checked by the command line's rules:
# (whole number, the smallest value allowed, what the number is). Every other key is a string
# or a list of strings.
NUMBERS = {
    ("target", "budget"): (False, 0, "seconds"),
    ("decision", "baseline_runs"): (True, 1, "runs"),
    ("decision", "min_delta"): (False, 0, ""),
    ("decision", "noise_k"): (False, 0, ""),
    ("decision", "early_stop_grace"): (False, 0, "the budget's fraction"),
    ("decision", "early_stop_k"): (False, 0, ""),
    ("decision", "early_stop_floor"): (False, 0, ""),
    ("stop", "max_consecutive_crashes"): (True, 1, "crashes"),
}


def _number(path: Path, section: str, key: str, v: object) -> int | float:
    """A [section].key number as the command line checks it: finite, not below its minimum, whole
    where whole numbers are meant; anything else is one line naming the key."""
    whole, least, unit = NUMBERS[(section, key)]
    kind = "whole number" if whole else "finite number"
    what = f"a {kind}{' of ' + unit if unit else ''} >= {least}"
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not v >= least \
            or (whole and v != int(v)):
        raise ConfigError(f"{path}: [{section}].{key} must be {what}, not {v!r}")
    return int(v) if whole else float(v)


# Where each key of cockpit.toml lives, for a key written under the wrong section: the one line
# then says where it goes (and the command-line flag that sets it too, where there is one).
FLAGS = {"budget": "--budget", "devices": "--devices", "cluster": "--cluster", "address": "--address",
         "model": "--model", "base_url": "--base-url"}


def _home(key: str) -> str | None:
    if key in TargetConfig.__dataclass_fields__:
        return "target"
    if key in DecisionConfig.__dataclass_fields__:
        return "decision"
    if key in _StopConfig.__dataclass_fields__:
        return "stop"
    if key in RUN_KEYS:
        return "run"
    if key in AGENT_KEYS:
        return "agent"
    return None


def _unknown_key(path: Path, section: str, key: str, known: set[str]) -> ConfigError:
    """One line for a key its section does not have: where it belongs when another section has it
    (`[run] budget` -> [target] budget), else the section's known keys."""
    home = _home(key)
    if home is not None and home != section:
        flag = f" (or {FLAGS[key]})" if key in FLAGS else ""
        return ConfigError(f"{path}: [{section}] {key}: unknown key; the {key} is set under [{home}] {key}{flag}")
    return ConfigError(f"{path}: unknown key [{section}].{key} (known: {', '.join(sorted(known))})")


_C = TypeVar("_C", bound="DataclassInstance")


def _section(data: dict[str, Any], name: str, cls: type[_C], path: Path) -> _C:
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _unknown_key(path, name, unknown[0], known)
    out = {}
    for k, v in raw.items():
        default = cls.__dataclass_fields__[k].default
        if isinstance(default, tuple) or k in ("editable", "locked"):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{path}: [{name}].{k} must be a list of strings")
            v = tuple(v)
        elif (name, k) in NUMBERS:
            v = _number(path, name, k, v)
        elif not isinstance(v, str):
            raise ConfigError(f"{path}: [{name}].{k} must be a string, not {v!r}")
        out[k] = v
    return cls(**out)


@dataclass(frozen=True)
class _StopConfig:
    """[stop]: when the session ends by itself (the limits on the command line are per run)."""

    max_consecutive_crashes: int = 5


_IntKey = Literal["context_tokens", "thinking_budget", "max_tokens"]
_FloatKey = Literal["max_api_wait", "connect_timeout", "read_timeout"]
_ChoiceKey = Literal["thinking", "effort"]
AGENT_INTS: set[_IntKey] = {"context_tokens", "thinking_budget", "max_tokens"}
AGENT_FLOATS: set[_FloatKey] = {"max_api_wait", "connect_timeout", "read_timeout"}
AGENT_CHOICES: dict[_ChoiceKey, tuple[str, ...]] = {"thinking": ("auto", "adaptive", "enabled", "off"),
                                                    "effort": ("low", "medium", "high", "xhigh", "max")}
AGENT_KEYS: set[str] = {"name", "model", "base_url", "pipeline", "prices", *AGENT_INTS, *AGENT_FLOATS, *AGENT_CHOICES}
RUN_KEYS = {"sandbox", "compile_cache", "devices", "cluster", "address", "keep_files_mb", "keep_files_total_mb"}


def load(root: Path) -> Config:
    path = root / CONFIG_NAME
    if not path.exists():
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    unknown = sorted(set(data) - {"target", "decision", "agent", "stop", "run"})
    if unknown:
        raise ConfigError(f"{path}: unknown section [{unknown[0]}]")
    target = _section(data, "target", TargetConfig, path)
    decision = _section(data, "decision", DecisionConfig, path)
    if decision.early_stop not in ("auto", "off"):
        raise ConfigError(f"{path}: [decision].early_stop must be auto or off, not {decision.early_stop!r}")
    if not decision.early_stop_grace < 1:
        raise ConfigError(f"{path}: [decision].early_stop_grace must be a fraction of the budget below 1, "
                          f"not {decision.early_stop_grace!r}")
    agent_tbl = data.get("agent", {})
    if not isinstance(agent_tbl, dict):
        raise ConfigError(f"{path}: [agent] must be a table")
    ints, floats, choices = AGENT_INTS, AGENT_FLOATS, AGENT_CHOICES
    known_agent = AGENT_KEYS
    unknown_agent = sorted(set(agent_tbl) - known_agent)
    if unknown_agent:
        raise _unknown_key(path, "agent", unknown_agent[0], known_agent)
    settings = AgentSettings()
    for k in (ints | floats) & set(agent_tbl):
        v = agent_tbl[k]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or v == float("inf"):
            raise ConfigError(f"{path}: [agent].{k} must be a finite number >= 0")
        if k in ints and v != int(v):
            raise ConfigError(f"{path}: [agent].{k} must be a whole number")
        if k in ("connect_timeout", "read_timeout") and v <= 0:
            raise ConfigError(f"{path}: [agent].{k} must be a number of seconds > 0")
        if k in ints:
            settings[k] = int(v)
        else:
            settings[k] = float(v)
    for ck, allowed in choices.items():
        if ck in agent_tbl:
            if agent_tbl[ck] not in allowed:
                raise ConfigError(f"{path}: [agent].{ck} must be one of {', '.join(allowed)}, not {agent_tbl[ck]!r}")
            settings[ck] = agent_tbl[ck]
    if "prices" in agent_tbl:
        settings["prices"] = _prices(agent_tbl["prices"], path)
    for sk in ("name", "model", "base_url"):
        if sk in agent_tbl and not isinstance(agent_tbl[sk], str):
            raise ConfigError(f"{path}: [agent].{sk} must be a string")
    if not isinstance(agent_tbl.get("pipeline", True), bool):
        raise ConfigError(f"{path}: [agent].pipeline must be true or false")
    agent = agent_tbl.get("name", "auto")
    run_tbl = data.get("run", {})
    if not isinstance(run_tbl, dict):
        raise ConfigError(f"{path}: [run] must be a table")
    if set(run_tbl) - RUN_KEYS:
        raise _unknown_key(path, "run", sorted(set(run_tbl) - RUN_KEYS)[0], RUN_KEYS)
    cluster, address = run_tbl.get("cluster", "local"), run_tbl.get("address", "auto")
    if cluster not in ("local", "ray"):
        raise ConfigError(f"{path}: [run].cluster must be local or ray, not {cluster!r}")
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(f"{path}: [run].address must be a Ray cluster address such as \"auto\" or \"10.0.0.1:6379\"")
    devices = run_tbl.get("devices", "auto")
    if isinstance(devices, list):
        devices = ",".join(str(d) for d in devices)
    if not isinstance(devices, str):
        raise ConfigError(f"{path}: [run].devices must be \"auto\", a list such as \"0,1,3\", or \"cpu:N\"")
    from .run.slots import DeviceError, check_spec

    try:
        check_spec(devices)
    except DeviceError as e:
        raise ConfigError(f"{path}: [run].devices: {e}") from None
    sandbox = run_tbl.get("sandbox", "auto")
    if sandbox not in ("auto", "required", "off"):
        raise ConfigError(f"{path}: [run].sandbox must be one of auto, required, off, not {sandbox!r}")
    compile_cache = run_tbl.get("compile_cache", "private")
    if compile_cache not in ("private", "shared"):
        raise ConfigError(f"{path}: [run].compile_cache must be private or shared, not {compile_cache!r}")
    caps: dict[str, float] = {}
    for rk in ("keep_files_mb", "keep_files_total_mb"):
        mb = run_tbl.get(rk, Config.__dataclass_fields__[rk].default)
        if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not 0 <= mb < float("inf"):
            raise ConfigError(f"{path}: [run].{rk} must be a number of megabytes >= 0, not {mb!r}")
        caps[rk] = float(mb)
    crashes = _section(data, "stop", _StopConfig, path).max_consecutive_crashes
    if target.kind not in ("gpt", "command"):
        raise ConfigError(f"{path}: [target].kind must be 'gpt' or 'command', got {target.kind!r}")
    if target.direction not in ("min", "max"):
        raise ConfigError(f"{path}: [target].direction must be 'min' or 'max', got {target.direction!r}")
    if target.kind == "command" and not (target.run and target.measure):
        raise ConfigError(f"{path}: a 'command' target needs both [target].run and [target].measure")
    if not target.editable:
        raise ConfigError(f"{path}: [target].editable must name at least one file")
    return Config(target, decision, agent, agent_tbl.get("model"), agent_tbl.get("base_url"), crashes,
                  settings, agent_tbl.get("pipeline", True), sandbox, compile_cache, devices, cluster, address,
                  caps["keep_files_mb"], caps["keep_files_total_mb"])


def _prices(v: object, path: Path) -> dict[str, float]:
    """[agent.prices]: USD per million tokens for the session's model, all four keys."""
    keys = ("input", "output", "cache_write", "cache_read")
    if not isinstance(v, dict):
        raise ConfigError(f"{path}: [agent.prices] must be a table of {', '.join(keys)} (USD per million tokens)")
    odd = sorted(set(v) - set(keys))
    missing = [k for k in keys if k not in v]
    if odd or missing:
        raise ConfigError(f"{path}: [agent.prices] needs exactly {', '.join(keys)} (USD per million tokens); "
                          + (f"unknown: {odd[0]}" if odd else f"missing: {missing[0]}"))
    for k in keys:
        x = v[k]
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not 0 <= x < float("inf"):
            raise ConfigError(f"{path}: [agent.prices].{k} must be a finite number >= 0")
    return {k: float(v[k]) for k in keys}


DEFAULT_TOML = """\
# cockpit workspace settings. Every key is optional; these are the defaults.

[target]
kind = "gpt"                      # the bundled GPT trainer, measured by the locked harness
editable = ["trainer/train.py"]   # the only files the agent may change
metric = "val_bpb"
direction = "min"
# budget = 300                    # seconds of training per experiment (or --budget); default: the
#                                 # profile's, 300 on a GPU, 60 on the CPU. A change starts a new baseline

[decision]
baseline_runs = 2                 # the unchanged code is run this often to measure the noise
min_delta = 0.0003                # keep a change only if it beats the best by more than
noise_k = 2.0                     # max(min_delta, noise_k * noise)
early_stop = "auto"               # stop a run that is clearly losing (status "pruned"); "off" runs every
                                  # experiment to the end. It starts once the baselines' curves are in
# early_stop_grace = 0.3          # no decision before this fraction of the budget
# early_stop_k = 3.0              # behind the best's loss at the same fraction by more than k x the
# early_stop_floor = 0.03         # baselines' spread there (or what kept runs lagged, or the floor)

[agent]
name = "auto"                     # "claude" when ANTHROPIC_API_KEY is set, else "tuner"
# model = "claude-sonnet-5-5"     # or --model, or $COCKPIT_MODEL
# base_url = "https://..."        # a proxy or gateway; or --base-url, or $ANTHROPIC_BASE_URL
# context_tokens = 60000          # each proposal's prompt stays under this (older history condenses)
# thinking = "auto"               # adaptive | enabled | off; auto: adaptive where the model takes it, else enabled
# effort = "high"                 # low | medium | high | xhigh | max, where the model has an effort setting
# thinking_budget = 8000          # budget_tokens for thinking = "enabled" (>= 1024, below max_tokens)
# max_tokens = 16000              # output tokens per reply (raised up to the model's limit when a reply is cut)
# max_api_wait = 1800             # seconds of back-off on API outages before a proposal is given up
# connect_timeout = 5             # seconds to connect to the API
# read_timeout = 60               # seconds of silence in a streamed reply before it counts as stalled
# pipeline = true                 # propose the next experiment while one trains (false: one at a time)
#
# [run]
# sandbox = "auto"                # auto: train in the sandbox where the machine allows; required: refuse
#                                 # to start without it; off: the agent's code runs with your rights
# devices = "auto"                # one experiment per device at once: auto = every visible CUDA device;
#                                 # "0,1,3" = those GPUs; "cpu:2" = two CPU slots, the cores split
# compile_cache = "private"       # each run compiles afresh (on an H200, ~22 s more per run of the default
#                                 # model); "shared": runs reuse torch.compile's cache, which any run can
#                                 # also write, so state can pass from one run to the next
# keep_files_mb = 1024            # what a run leaves in its folder is kept (.cockpit/runs/<tag>/<n>/files/)
# keep_files_total_mb = 10240     # up to this per run, and this for all of a session's runs (oldest go first)
#
# [agent.prices]                  # USD per million tokens, overriding the built-in table for your model
# input = 2.0
# output = 10.0
# cache_write = 2.5
# cache_read = 0.1
"""
