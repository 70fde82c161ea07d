"""The composition root: a session's parts put together from the workspace and the options the
command line (cockpit/cli.py) or a benchmark (bench/) chose. What only reads and checks (the
lock, the agent's choice, preparing the data, the profile) stays with the caller; this builds the
target, resolves the devices and makes the Engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .agents.base import Agent
from .control import Control
from .run.slots import Device
from .run.targets import CommandTarget, GptTarget, Target
from .session.stop import Limits
from .store.workspace import Workspace

if TYPE_CHECKING:
    from .run.cluster import Cluster
    from .session.loop import Engine


@dataclass(frozen=True)
class SessionOptions:
    tag: str | None = None  # the session to resume or start (None: the latest, or a new one)
    budget: float | None = None  # a command target's budget (the gpt target's is its profile's)
    devices: str | None = None  # the device spec (None: the workspace's)
    cache: Path | None = None  # the gpt target: the harness cache, its prepared dataset and profile
    dataset: Any = None
    profile: Any = None
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost: float | None = None


def build_session(ws: Workspace, agent: Agent, options: SessionOptions, *, target: Target | None = None,
                  devices: list[Device] | None = None, control: Control | None = None,
                  cluster: Cluster | None = None) -> tuple[Engine, list[str]]:
    """The Engine of a session in workspace `ws`, and the lines to say about it. `target`: the
    workspace's [target] unless given; `devices`: resolved from the spec unless given (an empty
    list: one slot, the target's own device); `cluster`: the slots are a Ray cluster's."""
    from .session.loop import Engine

    notices: list[str] = []
    tc = ws.config.target
    if target is None:
        if tc.kind == "gpt":
            if options.cache is None or options.dataset is None or options.profile is None:
                raise ValueError("the gpt target needs the harness cache, its prepared dataset and a profile")
            target = GptTarget(ws.root, tc, options.cache, options.dataset, options.profile, sandbox=ws.config.sandbox,
                               compile_cache=ws.config.compile_cache)
            from harness.resources import keep_files_caps

            keep_files_caps(ws.config.keep_files_mb, ws.config.keep_files_total_mb)
        else:
            target = CommandTarget(ws.root, tc, options.budget)
    if cluster is not None:
        cluster.target, devices = target, None
    elif devices is None:
        from .run.slots import cuda_devices, resolve

        accelerator = target.device == "cuda" if tc.kind == "gpt" else bool(cuda_devices())
        devices, said = resolve(options.devices or ws.config.devices, accelerator)
        notices += said
    limits = Limits(options.max_experiments, options.max_hours, options.max_cost, ws.config.max_consecutive_crashes)
    engine = Engine(ws, agent, target, control=control, tag=options.tag, limits=limits, devices=devices, cluster=cluster)
    return engine, notices
