"""The Ray actor of a slot on a cluster's node (engine/run/cluster.py is the head's side).

`SlotWorker` runs on a node: it says who the node is (`hello`), receives the prepared dataset
once per node (`receive`), takes the slot's settings (`setup`) and runs experiments there through
the same harness runner as a local slot (`run`, `progress`, `stop`). It imports Ray and the
harness only inside its methods: this module is imported on the head without Ray too.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.dataset import Dataset
    from harness.profiles import Profile


class NodeInfo(TypedDict):
    """What a node's actor says about its node (SlotWorker.hello)."""

    host: str
    ip: str
    node: str  # Ray's node id
    harness: dict[str, str]  # the node's harness files -> their hashes
    gpu: str  # the actor's GPU model, or "cpu"
    datasets: list[str]  # the prepared datasets in the node's cache
    cache: str
    pid: int


@dataclass(frozen=True)
class SlotSettings:
    """A slot's settings on its node (SlotWorker.setup)."""

    slot: str
    key: str  # the prepared dataset's folder name in the cache
    profile: str
    budget: float
    sandbox: str
    compile_cache: str
    env: dict[str, str]


class SlotWorker:
    """One slot on a node: runs experiments there through the harness runner. Its methods are
    called from the head; it keeps no state of the session but the slot's settings."""

    base: Path  # where its runs' folders go (set by setup)

    def __init__(self) -> None:
        from harness.paths import cache_root

        self.cache = cache_root(None)
        self.cancel = threading.Event()
        self.lock = threading.Lock()
        self.current: str | None = None  # the run being made
        self.stopped: set[str] = set()  # runs the head stopped (vetoed, stop now)
        self.items: list[dict[str, Any]] = []
        self.cfg: SlotSettings | None = None

    def hello(self) -> NodeInfo:
        """Who this node is, what it runs, and whether its cache has the data."""
        from harness.integrity import harness_files
        from harness.paths import datasets_dir

        from .slots import cuda_devices

        import ray

        gpus = cuda_devices()  # Ray set CUDA_VISIBLE_DEVICES to this actor's GPU
        ds = datasets_dir(self.cache)
        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]  # Ray's, unannotated
        return {"host": socket.gethostname(), "ip": ip,
                "node": ray.get_runtime_context().get_node_id(), "harness": harness_files(),
                "gpu": gpus[0][1] if gpus and os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu",
                "datasets": sorted(p.name for p in ds.iterdir()) if ds.is_dir() else [],
                "cache": str(self.cache), "pid": os.getpid()}

    def receive(self, key: str, manifest: dict[str, Any], files: dict[str, bytes]) -> int:
        """The prepared dataset, from the object store: written once per node (under a lock, so
        the node's other slots wait for it rather than write it again), verified, then in place."""
        from harness.dataset import open_dataset
        from harness.integrity import verify_dataset
        from harness.paths import datasets_dir

        root = datasets_dir(self.cache)
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".receive.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            final = root / key
            if final.is_dir():
                open_dataset(final).verify()
                return 0
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
            try:
                size = 0
                for rel, data in files.items():
                    _write_inside(tmp, rel, data)
                    size += len(data)
                verify_dataset(tmp, manifest)  # the bytes are what was prepared on the head
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            open_dataset(final).verify()
            return size

    def setup(self, slot: str, key: str, harness: dict[str, str], profile: str, budget: float, sandbox: str,
              compile_cache: str, env: dict[str, str]) -> None:
        """The slot's settings; the node's harness is locked in its cache as the head's (only when
        its files are the head's: checked again here)."""
        from harness.dataset import open_dataset
        from harness.integrity import harness_files, lock_harness
        from harness.paths import datasets_dir

        if harness_files() != harness:
            raise HarnessError("the harness differs from the head's")
        lock_harness(self.cache)
        open_dataset(datasets_dir(self.cache) / key).verify()
        self.cfg = SlotSettings(slot=slot, key=key, profile=profile, budget=budget, sandbox=sandbox,
                                compile_cache=compile_cache, env=dict(env))
        self.base = self.cache / "ray-runs" / f"{os.getpid()}-{slot}"
        self.base.mkdir(parents=True, exist_ok=True)

    def _settings(self) -> SlotSettings:
        if self.cfg is None:
            raise HarnessError("the slot has no settings yet (setup comes first)")
        return self.cfg

    def _dataset_profile(self) -> tuple[Dataset, Profile]:
        from harness.dataset import open_dataset
        from harness.paths import datasets_dir
        from harness.profiles import by_name

        c = self._settings()
        return open_dataset(datasets_dir(self.cache) / c.key), by_name(c.profile).with_budget(c.budget)

    def warm_up(self) -> None:
        from harness import runner

        ds, prof = self._dataset_profile()
        c = self._settings()
        runner.start_spare(self.cache, ds, preload_compile=prof.compile, gpu=prof.device != "cpu", base=self.base,
                           sandbox=c.sandbox, compile_cache=c.compile_cache, profile=prof, slot=c.slot,
                           env_extra=c.env)

    def run(self, run_id: str, files: dict[str, bytes], script: str, credit: float | None, export_estimate: float,
            session_step: float | None = None) -> tuple[dict[str, Any], bytes]:
        """One run of the experiment's files; returns the runner's result and the run's log."""
        from harness import runner

        with self.lock:  # a stop may come before the run has begun: it still holds
            self.current = run_id
            self.cancel = threading.Event()
            if run_id in self.stopped:
                self.cancel.set()
        self.items = []
        ds, prof = self._dataset_profile()
        c = self._settings()
        limits = runner.Limits.for_profile(prof)  # this node's memory
        limits.credit, limits.export_estimate, limits.session_step = credit, export_estimate, session_step
        # the run's log in <base>/exp-*/ (the runner puts the sandbox folders of this run and of
        # the next run's spare beside it, in <base>), its files in <base>/tree-*/
        work = Path(tempfile.mkdtemp(prefix="exp-", dir=self.base))
        tree = Path(tempfile.mkdtemp(prefix="tree-", dir=self.base))
        try:
            for rel, data in files.items():
                _write_inside(tree, rel, data)
            log = work / "run.log"
            r = runner.run(tree / script, ds, prof, log, self.cache, on_progress=lambda p: self.items.append(asdict(p)),
                           cancel=self.cancel, limits=limits, sandbox=c.sandbox, compile_cache=c.compile_cache,
                           slot=c.slot, env_extra=c.env)
            return asdict(r), log.read_bytes() if log.exists() else b""
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(tree, ignore_errors=True)

    def progress(self, since: int) -> list[dict[str, Any]]:
        return self.items[since:]

    def stop(self, run_id: str) -> None:
        with self.lock:
            self.stopped.add(run_id)
            if self.current == run_id:
                self.cancel.set()

    def close(self) -> None:
        from harness import runner

        runner.shutdown_spare()


def _write_inside(root: Path, rel: str, data: bytes) -> None:
    """A file the head sent, written under `root` only (a name that leaves it is refused)."""
    if rel.startswith("/") or ".." in Path(rel).parts:
        raise HarnessError(f"refused a file name from the head: {rel!r}")
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
