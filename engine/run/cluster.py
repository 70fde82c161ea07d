"""Slots on a Ray cluster (`--cluster ray`, `[run] cluster = "ray"`).

cockpit joins a running Ray cluster; the engine, journal, git, agent and TUI stay on this machine
(the head of the session). Every GPU of the cluster becomes a slot: one Ray actor per GPU
(`num_gpus=1`), placed on its node, which runs the experiment there through the same harness
runner as a local slot (the same sandbox, the same scrubbed environment, its own spare child).
With `--devices cpu:N`, each node gives N CPU slots (for tests and machines without GPUs).

What travels to an actor: the experiment's editable files, the profile's name and budget, the
run's allowance. Never the API key: the actors are started with no environment of this process
(Ray gives them their node's), and the runner scrubs secrets there as it does here.

What is checked, per node, before its slots are used:
- its harness is byte-identical to this machine's (the same file hashes); a node with another
  cockpit version is refused in one line that names it, and its slots are not used;
- its cache holds the prepared dataset (the manifest's key decides); if not, the dataset is sent
  once through Ray's object store (one `ray.put` per session, fetched once per node), written to
  the node's cache under a lock and verified against the manifest before use. No shared
  filesystem is assumed.

Faults: a veto reaches the actor at once and the runner there kills the run's process group. A
node that dies during a run gives the outcome `lost`: the experiment is recorded `interrupted`
("node lost") and its slots disappear; a node that joins later adds its slots. The actors are
owned by this process: when it dies (even by kill -9) Ray kills them, and their training
processes die with them (the sandbox's die-with-parent, the child's orphan watchdog).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

from .cluster_worker import NodeInfo, SlotWorker
from .slots import Device, check_spec
from .targets import GptTarget, OnProgress, Outcome, Target, session_step

if TYPE_CHECKING:
    from ray import ObjectRef

__all__ = ["Cluster", "ClusterError", "NodeInfo", "RayTarget", "SlotWorker", "RAY_MISSING"]

# A Ray actor handle of a SlotWorker (ray.actor.ActorHandle[SlotWorker]): its methods are called
# through `.remote(...)`, which Ray's type hints do not describe for a plain class's methods.
SlotActor = Any

RAY_MISSING = "--cluster ray needs Ray on this machine: pip install -e '.[ray]' (and the same cockpit on every node)"
JOIN_EVERY = 5.0  # seconds between looks for nodes that joined
HELLO_TIMEOUT = 300.0  # seconds a node's first actor may take to start (its worker imports)
POLL = 0.2  # seconds between progress polls of a running remote run


class ClusterError(HarnessError):
    """The cluster cannot be used (one line)."""


def _lost_errors() -> tuple[type[BaseException], ...]:
    """What Ray raises when a node or its actor is gone (all of them in Ray >= 2.11, the floor in
    pyproject.toml)."""
    from ray.exceptions import (ActorUnavailableError, NodeDiedError, ObjectLostError, OwnerDiedError, RayActorError,
                                WorkerCrashedError)

    return (RayActorError, ActorUnavailableError, NodeDiedError, ObjectLostError, OwnerDiedError, WorkerCrashedError)


class RayTarget(GptTarget):
    """The session's target on one remote slot: GptTarget's contract (run, warm_up, close,
    version, set_credit), with the run made by the slot's actor on its node."""

    def __init__(self, base: GptTarget, actor: SlotActor, node: str, slot: str):
        """The head's target `base` on a remote slot: its settings, and the measurements shared by
        all slots (the session's allowances, step times and calibration: the same objects)."""
        Target.__init__(self)
        self.root, self.cfg, self.cache, self.dataset, self.profile = base.root, base.cfg, base.cache, base.dataset, base.profile
        self.script, self.label, self.profile_name = base.script, base.label, base.profile_name
        self.sandbox, self.compile_cache = base.sandbox, base.compile_cache
        self.sandboxed, self.sandbox_reason = base.sandboxed, base.sandbox_reason
        self.credits, self.steps = base.credits, base.steps
        self.calibration, self._calibrating = base.calibration, base._calibrating
        self.actor, self.node, self.slot = actor, node, slot

    def for_slot(self, slot: str, env_extra: dict[str, str]) -> RayTarget:
        return self

    def warm_up(self) -> None:
        self.actor.warm_up.remote()  # not waited for: a head start only

    def close(self) -> None:
        try:
            self.actor.close.remote()
        except Exception:
            pass

    def run(self, log_path: Path, cancel: threading.Event, on_progress: OnProgress | None = None,
            baseline: bool = False, tree: Path | None = None) -> Outcome:
        import ray

        from harness.runner import Progress, RunResult

        tree = Path(tree) if tree is not None else self.root
        rel = self.script.relative_to(self.root).as_posix()
        files = {rel: (tree / rel).read_bytes()}
        credit, export = self.allowance(baseline)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        lost = _lost_errors()
        t0 = time.monotonic()
        try:
            run_id = uuid.uuid4().hex
            ref = self.actor.run.remote(run_id, files, rel, credit, export, session_step(self.steps))
            seen, stopped = 0, False
            while True:
                ready, _ = ray.wait([ref], timeout=POLL)
                if cancel.is_set() and not stopped:
                    self.actor.stop.remote(run_id)  # the runner there kills the run's process group
                    stopped = True
                try:
                    items = ray.get(self.actor.progress.remote(seen), timeout=10)
                except ray.exceptions.GetTimeoutError:
                    items = []
                for d in items:
                    seen += 1
                    if on_progress is not None:
                        on_progress(Progress(**d))
                if ready:
                    break
            result, log = ray.get(ref)
        except lost as e:
            log_path.write_text(f"[cockpit] node lost during the run: {self.node}: {type(e).__name__}\n")
            return Outcome("lost", None, f"node lost: {self.node}", None, time.monotonic() - t0, None, str(log_path))
        except ray.exceptions.RayTaskError as e:  # raised there: as if raised here (an integrity failure stops the session)
            raise e.as_instanceof_cause() from None  # type: ignore[no-untyped-call]  # Ray's, unannotated
        log_path.write_bytes(log)
        r = RunResult(**dict(result, log_path=str(log_path)))
        return self.measured(r, baseline)


class Cluster:
    """This session's view of a Ray cluster: its nodes, their slots, and the nodes that join or
    die while the session runs."""

    def __init__(self, address: str, spec: str, target: Target | None, connect: bool = True):
        check_spec(spec)
        if spec != "auto" and not spec.startswith("cpu:"):
            raise ClusterError(f"--devices {spec}: with --cluster ray every GPU of the cluster is a slot (auto), "
                               "or cpu:N gives N CPU slots per node")
        self.address, self.spec = address, spec
        self.target = target  # the head's target, set by build_session when not given here: the gpt target
        self.known: set[str] = set()  # node ids looked at (used or refused)
        self.model: str | None = None  # the GPU model of the session's slots
        self.nodes: dict[str, str] = {}  # node id -> its label
        self.new: queue.Queue[tuple[Device, RayTarget]] = queue.Queue()  # (Device, RayTarget) of nodes that joined
        self.notices: queue.Queue[str] = queue.Queue()  # lines for the session's notices
        self._blob: ObjectRef[dict[str, bytes]] | None = None  # the dataset in the object store (put once, when a node first lacks it)
        self._blob_size = 0  # its bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if connect:
            self.ray = _connect(address)
            self.gpu = any(n.get("Resources", {}).get("GPU", 0) for n in self.ray.nodes() if n.get("Alive"))
            if spec.startswith("cpu:"):
                self.gpu = False

    def discover(self) -> list[tuple[Device, RayTarget]]:
        """The slots of every alive node not looked at yet (their actors started and checked)."""
        out: list[tuple[Device, RayTarget]] = []
        nodes = [n for n in self.ray.nodes() if n.get("Alive") and n["NodeID"] not in self.known]
        for n in nodes:
            self.known.add(n["NodeID"])
            try:
                out += self._node_slots(n)
            except Exception as e:  # one node's trouble never stops the session
                self.notices.put(f"node {n.get('NodeManagerHostname', n['NodeID'][:8])}: not used ({type(e).__name__}: {e})")
        return out

    def _label(self, n: dict[str, Any], info: NodeInfo) -> str:
        """The node's name in the table: its host name, with its id's start where several nodes
        share a machine (a test cluster)."""
        host = info["host"].split(".")[0][:12]  # the table's device column holds "node/3" whole
        alive = [x for x in self.ray.nodes() if x.get("Alive")]
        if sum(x.get("NodeManagerAddress") == n.get("NodeManagerAddress") for x in alive) > 1 \
                or any(v == host for v in self.nodes.values()):
            host = f"{host}~{n['NodeID'][:3]}"
        return host

    def _node_slots(self, n: dict[str, Any]) -> list[tuple[Device, RayTarget]]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from harness.integrity import harness_files

        t = self.target
        if not isinstance(t, GptTarget):  # the command line refuses a command target with --cluster ray
            raise ClusterError("a Ray cluster runs the gpt target only")
        res = n.get("Resources", {})
        if self.gpu:
            count = int(res.get("GPU", 0))
            opts = dict(num_gpus=1, num_cpus=0)
        else:
            count = int(self.spec[4:]) if self.spec.startswith("cpu:") else 1
            opts = dict(num_cpus=max(1, int(res.get("CPU", 1)) // count))
        if count < 1:
            return []
        cls = ray.remote(SlotWorker)
        where = NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        actors: list[SlotActor] = [cls.options(scheduling_strategy=where, max_concurrency=4, **opts).remote()
                                   for _ in range(count)]
        try:
            infos: list[NodeInfo] = ray.get([a.hello.remote() for a in actors], timeout=HELLO_TIMEOUT)
        except Exception:
            for a in actors:
                ray.kill(a)
            raise
        info = infos[0]
        label = self._label(n, info)
        head = harness_files()
        if info["harness"] != head:
            diff = sorted(k for k in head.keys() | info["harness"].keys() if head.get(k) != info["harness"].get(k))
            for a in actors:
                ray.kill(a)
            self.notices.put(f"node {label} ({info['ip']}) refused: its harness differs from this machine's "
                             f"(harness/{diff[0]}{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); "
                             "install the same cockpit version there; its slots are not used")
            return []
        models = [i["gpu"] for i in infos]
        if self.gpu:
            if self.model is None:
                counts = Counter(models)
                self.model = max(counts, key=lambda m: (counts[m], -models.index(m)))
            keep = [k for k, m in enumerate(models) if m == self.model]
            if len(keep) < len(actors):
                self.notices.put(f"node {label}: {len(actors) - len(keep)} GPU(s) of another model than {self.model} "
                                 "are not used (one model: one noise floor and one best)")
                for k in set(range(len(actors))) - set(keep):
                    ray.kill(actors[k])
                actors, infos = [actors[k] for k in keep], [infos[k] for k in keep]
            if not actors:
                return []
        ds = t.dataset
        key = ds.folder.name
        if key not in info["datasets"]:
            if self._blob is None:
                files = {p.relative_to(ds.folder).as_posix(): p.read_bytes() for p in sorted(ds.folder.rglob("*"))
                         if p.is_file()}
                self._blob = ray.put(files)
                self._blob_size = sum(map(len, files.values()))
            ray.get(actors[0].receive.remote(key, ds.manifest, self._blob), timeout=HELLO_TIMEOUT)
            self.notices.put(f"node {label} had no copy of the prepared data: sent once through Ray's object store "
                             f"({self._blob_size / 1e6:.1f} MB) and verified there")
        out: list[tuple[Device, RayTarget]] = []
        kind = "gpu" if self.gpu else "cpu"
        for k, (a, i) in enumerate(zip(actors, infos)):
            slot = f"{kind}{k}"
            ray.get(a.setup.remote(slot, key, head, t.profile.name, t.profile.time_budget, t.sandbox, t.compile_cache,
                                   {} if self.gpu else {"OMP_NUM_THREADS": str(opts["num_cpus"]),
                                                         "MKL_NUM_THREADS": str(opts["num_cpus"]),
                                                         "CUDA_VISIBLE_DEVICES": ""}), timeout=HELLO_TIMEOUT)
            out.append((Device(f"{label}/{k}" if self.gpu else f"{label}/c{k}", i["gpu"] if self.gpu else "cpu", {}, node=n["NodeID"]),
                        RayTarget(t, a, label, slot)))
        self.nodes[n["NodeID"]] = label
        self.notices.put(f"node {label} ({info['ip']}): {len(out)} slot(s)" + (f" ({self.model})" if self.gpu else ""))
        return out

    def alive(self) -> set[str]:
        return {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}

    def watch(self) -> None:
        """Look for nodes that join, every JOIN_EVERY seconds, in a thread of its own (a node's
        actors take seconds to start: the engine's thread never waits for them)."""

        def loop() -> None:
            while not self._stop.wait(JOIN_EVERY):
                try:
                    for slot in self.discover():
                        self.new.put(slot)
                except Exception as e:  # the cluster's trouble is said, never a reason to stop
                    self.notices.put(f"looking for new nodes failed: {type(e).__name__}: {e}")

        self._thread = threading.Thread(target=loop, name="cockpit-cluster", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()


def _connect(address: str) -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ClusterError(RAY_MISSING) from None
    if ray.is_initialized():
        return ray
    if address not in ("auto", "local") and not address.startswith("ray://"):
        # Ray retries an unreachable address for minutes, printing as it goes: a plain connect first
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            said = (e.strerror if isinstance(e, OSError) else None) or e  # a bad port is a ValueError
            raise ClusterError(f"no Ray cluster is reachable at {address} ({said}); start one with "
                               "`ray start --head` (see docs/CLUSTER.md)") from None
    try:
        ray.init(address=address, namespace="cockpit", log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    except Exception as e:  # ConnectionError, or a bad address
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"no Ray cluster is reachable at {address} ({first}); start one with `ray start --head` "
                           "(see docs/CLUSTER.md)") from None
    return ray
