"""Targets: how one experiment's code is run and measured.

`GptTarget` is the default: trainer/train.py through the locked harness (val_bpb). `CommandTarget`
is the generic form from cockpit.toml: a run command killed past the budget, then a locked
measure script whose last `metric: <value>` line is the result; the measure script and any
other locked files are hashed when the session starts and re-checked before every run.
"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from harness import runner
from harness.errors import IntegrityError
from harness.integrity import file_hash
from harness.text import printable_or_none

from ..config import ConfigError, TargetConfig

if TYPE_CHECKING:
    from harness.dataset import Dataset
    from harness.profiles import Profile

OnProgress = Callable[[runner.Progress], None]  # a run's progress, as the harness reports it


@dataclass(frozen=True)
class Outcome:
    status: str  # ok | crash | timeout | invalid | cancelled | lost (its node died: engine/run/cluster.py)
    metric: float | None
    reason: str | None
    training_seconds: float | None
    total_seconds: float
    memory_gb: float | None
    log_path: str
    log_tail: str | None = None
    startup_seconds: float | None = None  # spawn -> first step (imports, compile)
    eval_seconds: float | None = None
    timing: bool = False  # failed a timing rule (over budget, a deadline): a busy machine can cause it
    holdout: float | None = None  # the metric on the holdout split (never shown to the agent)
    credit: float | None = None  # a baseline's allowance for compilation and export, the session's (seconds)
    sandbox: bool = False  # whether the run was inside the sandbox
    step_seconds: float | None = None  # a baseline's median step time (bounds later runs' tolerance)

    def __post_init__(self) -> None:
        # A command target's reason quotes its command's output: no control sequences (harness/text.py).
        object.__setattr__(self, "reason", printable_or_none(self.reason))
        object.__setattr__(self, "log_tail", printable_or_none(self.log_tail))


class Target:
    """The contract every target declares; what a target does not need it inherits from here
    (the engine never probes a target for an attribute). A target runs one experiment's code and
    measures it (`run`); the rest has defaults that do nothing."""

    metric_name: str = "metric"
    direction: str = "min"  # "min" or "max": the metric's better direction
    label: str = ""  # what measures, with its budget ("gpt/cpu/60s"): a change is said at resume
    profile_name: str = ""  # "cuda" | "cpu" | "mps" for the GPT trainer; "" for other targets
    sandboxed: bool | None = None  # None: this target has no sandbox to speak of
    sandbox_reason: str | None = None  # why the sandbox is off, when it is
    slot: str = ""  # the device slot this copy runs on (for_slot)
    loss_curve: bool = False  # its runs report a training loss by fraction of the budget (early stop applies)

    def __init__(self) -> None:
        self.env_extra: dict[str, str] = {}  # the slot's device environment (for_slot)

    @property
    def budget(self) -> float | None:
        """Seconds of training per experiment, where there is one."""
        return None

    @property
    def device(self) -> str | None:
        """The kind of device it trains on ("cuda", "cpu", "mps"), where it has one."""
        return None

    def run(self, log_path: Path, cancel: threading.Event, on_progress: OnProgress | None = None,
            baseline: bool = False, tree: Path | None = None) -> "Outcome":
        raise NotImplementedError

    def for_slot(self, slot: str, env_extra: dict[str, str]) -> "Target":
        """This target on one device slot (its own copy, its own device environment)."""
        t = copy.copy(self)
        t.slot, t.env_extra = slot, dict(env_extra)
        return t

    def version(self) -> str | None:
        """What measures, as one short name: results under another are not compared (None: one version)."""
        return None

    def rehash(self) -> None:
        """Read the locked files again (the session branch is checked out now)."""

    def set_credit(self, credits: Sequence[float], steps: Sequence[float] = ()) -> None:
        """What a resumed session's baselines measured that later runs depend on."""

    def warm_up(self) -> None:
        """Start the first run's process early (a head start only)."""

    def close(self) -> None:
        """Let go of what the target keeps between runs (a spare process)."""


class GptTarget(Target):
    metric_name = "val_bpb"
    direction = "min"
    loss_curve = True

    def __init__(self, root: Path, cfg: TargetConfig, cache: Path, dataset: Dataset, profile: Profile,
                 sandbox: str = "auto", compile_cache: str = "private"):
        super().__init__()
        self.root, self.cfg, self.cache, self.dataset, self.profile = root, cfg, cache, dataset, profile
        self.script = root / cfg.editable[0] if cfg.editable else root / "trainer" / "train.py"
        self.label = f"gpt/{profile.name}/{profile.time_budget:g}s"  # what measures (engine/numbers.py: remeasure_reason)
        self.profile_name = profile.name
        self.sandbox, self.compile_cache = sandbox, compile_cache
        self.sandboxed, self.sandbox_reason = runner.sandbox_state(sandbox)  # SandboxRequired: refused at once
        self.credits: list[float] = []  # the allowance this session's baselines ran under (kept on a resume)
        self.steps: list[float] = []  # the baselines' measured step times
        self.calibration: dict[str, tuple[float, float]] = {}  # the harness's reference measurement (shared by the slots' copies)
        self._calibrating = threading.Lock()
        # for_slot: each slot's copy has its own spare child and device environment; the measured
        # allowances are shared by all slots (one list)

    @property
    def budget(self) -> float:
        return self.profile.time_budget

    @property
    def device(self) -> str:
        return self.profile.device

    def set_credit(self, credits: Sequence[float], steps: Sequence[float] = ()) -> None:
        """The allowance this session's baselines ran under and their step times (from the
        journal on a resume)."""
        self.credits[:] = [c for c in credits if c is not None]  # in place: the slots' copies share it
        self.steps[:] = [s for s in steps if s]

    def warm_up(self) -> None:
        """Start the first run's training process now (imports only; it waits for its run and
        never touches the GPU before), so even the session's first run starts warm. Sandbox
        folders that a killed cockpit left behind (no process works in them) go first."""
        _remove_stale_run_folders(self.root / ".cockpit" / "runs")
        runner.start_spare(self.cache, self.dataset, preload_compile=self.profile.compile,
                           gpu=self.profile.device != "cpu", base=self.root / ".cockpit" / "runs", sandbox=self.sandbox,
                           compile_cache=self.compile_cache, profile=self.profile, slot=self.slot,
                           env_extra=self.env_extra)

    def close(self) -> None:
        runner.shutdown_spare(self.slot)

    def version(self) -> str:
        """The harness, the prepared data, the profile and the budget this target measures with,
        as one short name: results under another of these are not comparable."""
        from harness.integrity import harness_files, harness_version

        return harness_version({**harness_files(), "<dataset>": self.dataset.folder.name,
                                "<profile>": f"{self.profile.name}/{self.profile.time_budget:g}"})

    def run(self, log_path: Path, cancel: threading.Event, on_progress: OnProgress | None = None,
            baseline: bool = False, tree: Path | None = None) -> Outcome:
        """One run of the code in `tree` (the slot's checkout of the experiment's commit; default
        the workspace). Every run, baseline or not, gets the session's allowance for compilation
        and export (allowance()); the baselines' step times bound the tolerance of later runs."""
        limits = runner.Limits.for_profile(self.profile)
        limits.credit, limits.export_estimate = self.allowance(baseline, cancel)
        limits.session_step = session_step(self.steps)
        script = self.script if tree is None else Path(tree) / self.script.relative_to(self.root)
        r = runner.run(script, self.dataset, self.profile, log_path, self.cache, on_progress=on_progress,
                       cancel=cancel, limits=limits, sandbox=self.sandbox, compile_cache=self.compile_cache,
                       slot=self.slot, env_extra=self.env_extra)
        return self.measured(r, baseline)

    def allowance(self, baseline: bool = False, cancel: threading.Event | None = None) -> tuple[float, float]:
        """The run's allowance for compilation and export, and the export's part of it: the same
        for every run of the session, baseline or not (`baseline` changes nothing: a run must not
        be able to tell). It comes from the harness's reference measurement (harness/calibrate.py,
        once, before the first run), never from a run; a resumed session keeps the one its
        baselines ran under."""
        from harness import calibrate

        p = self.profile
        caps = p.warmup_allowance + runner.EXPORT_ALLOWANCE, runner.EXPORT_ALLOWANCE
        with self._calibrating:  # the slots start their first runs at once: one measurement
            if "allowance" not in self.calibration:
                try:
                    first, export = calibrate.measure(p, self.cache, self.dataset.vocab_size, sandbox=self.sandbox,
                                                      base=self.root / ".cockpit" / "runs", env_extra=self.env_extra,
                                                      cancel=cancel)
                    self.calibration["allowance"] = calibrate.allowance(first, export, *caps)
                except calibrate.CalibrationError as e:
                    if cancel is not None and cancel.is_set():
                        return caps  # the run is cancelled before it starts; the next one measures
                    # a machine too busy to measure: the profile's caps (fixed, the same for every run)
                    print(f"cockpit: {e}; the allowance for compilation and export is the profile's cap", file=sys.stderr)
                    self.calibration["allowance"] = caps
        return session_allowance(self.calibration.get("allowance", caps), self.credits)

    def measured(self, r: "runner.RunResult", baseline: bool) -> Outcome:
        """The run's outcome; a baseline's step time is kept for the session's later runs."""
        if baseline and r.status == "ok":
            if r.credit_used is not None:
                self.credits.append(r.credit_used)
            if r.step_seconds:
                self.steps.append(r.step_seconds)
        return outcome_of(r, baseline)


def session_allowance(calibrated: tuple[float, float], stored: list[float]) -> tuple[float, float]:
    """(allowance, its export part) for every run of a session: the calibrated one, unless the
    session's baselines already ran under one (a resume): then the smallest of those, so that the
    session's runs stay comparable; the export part never exceeds the allowance."""
    credit, export = calibrated
    if stored:
        credit = min(stored)
    return credit, min(export, credit)


def session_step(steps: list[float]) -> float | None:
    """The session's step time, which bounds a run's step-based tolerance: the fastest of its
    baselines' median step times (the baselines run the same code, so a slower one was a busier
    machine, or a run that numbered its steps sparsely); None before any."""
    return min(steps) if steps else None


def outcome_of(r: "runner.RunResult", baseline: bool) -> Outcome:
    """The engine's view of a harness run (a baseline's allowance and step time kept)."""
    return Outcome(r.status, r.val_bpb, r.reason, r.training_seconds, r.total_seconds, r.peak_memory_gb, r.log_path,
                   r.log_tail, r.startup_seconds, r.eval_seconds, r.timing, r.holdout_bpb,
                   r.credit_used if baseline else None, r.sandbox, r.step_seconds if baseline else None)


def _remove_stale_run_folders(runs: Path) -> None:
    import shutil

    import psutil

    stale = [d for d in list(runs.glob(".run-*")) + list(runs.glob("*/.run-*")) if d.is_dir()]
    if not stale:
        return
    busy = set()
    for proc in psutil.process_iter():
        try:
            busy.add(proc.cwd())
        except (psutil.Error, OSError):
            pass
    for d in stale:
        if not any(c == str(d) or c.startswith(str(d) + os.sep) for c in busy):
            shutil.rmtree(d, ignore_errors=True)


_METRIC_LINE = re.compile(r"^\s*metric\s*:\s*([-+0-9.eEinfa]+)\s*$")


class CommandTarget(Target):
    def __init__(self, root: Path, cfg: TargetConfig, budget: float | None):
        super().__init__()
        self.root, self.cfg = root, cfg
        self.metric_name = cfg.metric
        self.direction = cfg.direction
        if cfg.run is None or cfg.measure is None:  # config.load refuses such a file: this is its rule
            raise ConfigError("a 'command' target needs both [target].run and [target].measure")
        self.run_command, self.measure_command = cfg.run, cfg.measure
        self._budget = float(budget or cfg.budget or 60.0)
        self.label = f"command/{self.budget:g}s"
        for tok in cfg.run.split() + cfg.measure.split():
            if tok.endswith((".py", ".sh")) and not (root / tok).is_file():
                raise ConfigError(f"cockpit.toml: [target] names {tok}, which does not exist in {root}")
        # The measure script (any file its command names) and the listed files are locked.
        named = [t for t in cfg.measure.split() if (root / t).is_file()]
        self.locked = sorted({*named, *cfg.locked})
        self.hashes = self._hash()

    @property
    def budget(self) -> float:
        return self._budget

    def rehash(self) -> None:
        """Hash the locked files again (the session branch is checked out now)."""
        self.hashes = self._hash()

    def version(self) -> str:
        """The measure script and locked files, the run command and the budget, as one short name."""
        from harness.integrity import harness_version

        return harness_version({**self.hashes, "<run>": f"{self.cfg.run}/{self.budget:g}"})

    def _hash(self, tree: Path | None = None) -> dict[str, str]:
        tree = tree or self.root
        return {rel: file_hash(tree / rel) for rel in self.locked if (tree / rel).is_file()}

    def run(self, log_path: Path, cancel: threading.Event, on_progress: OnProgress | None = None,
            baseline: bool = False, tree: Path | None = None) -> Outcome:
        """The run command, then the measure script, in `tree` (the slot's checkout of the
        experiment's commit; default the workspace); the locked files there must hash as at the
        session's start."""
        tree = Path(tree) if tree is not None else self.root
        now = self._hash(tree)
        changed = sorted(k for k in self.hashes.keys() | now.keys() if self.hashes.get(k) != now.get(k))
        if changed:
            raise IntegrityError(f"locked file changed since the session started: {changed[0]}")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(runner.scrub_env(dict(os.environ)), **self.env_extra)
        t0 = time.monotonic()

        def outcome(status: str, reason: str | None = None, metric: float | None = None, tail: bool = True) -> Outcome:
            return Outcome(status, metric, reason, train_s, time.monotonic() - t0, None, str(log_path),
                           runner.log_tail(log_path) if tail else None, timing=status == "timeout")

        with open(log_path, "ab") as log:
            status, reason = _run_group(self.run_command, tree, env, log, self.budget, cancel, "the run command")
            train_s = time.monotonic() - t0
            if status != "ok":
                return outcome(status, reason)
            measured = log_path.with_name("measure.out")
            with open(measured, "wb") as mout:
                # the measure step runs like the run step: its own group, cancellable, with a deadline
                mstatus, mreason = _run_group(self.measure_command, tree, env, mout, max(60.0, self.budget), cancel,
                                              "the measure script")
            text = measured.read_text(errors="replace")
            log.write(text.encode())
        if mstatus != "ok":
            return outcome(mstatus, mreason)
        values = [m.group(1) for line in text.splitlines() if (m := _METRIC_LINE.match(line))]
        try:
            metric = float(values[-1])
        except (IndexError, ValueError):
            return outcome("crash", "measure script printed no `metric: <number>` line")
        if not math.isfinite(metric):
            return outcome("crash", f"metric is {metric}", tail=False)
        return outcome("ok", metric=metric, tail=False)


def _run_group(cmd: str, cwd: Path, env: dict[str, str], log: IO[bytes], budget: float, cancel: threading.Event,
               what: str) -> tuple[str, str | None]:
    proc = subprocess.Popen(cmd, shell=True, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + budget
    try:
        while proc.poll() is None:
            if cancel.is_set():
                return "cancelled", "cancelled by request"
            if time.monotonic() > deadline:
                return "timeout", f"{what} ran past its {budget:g}s budget and was killed"
            cancel.wait(0.1)
        if proc.returncode != 0:
            return "crash", f"{what} exited with status {proc.returncode}"
        return "ok", None
    finally:
        runner.kill_group(proc)
