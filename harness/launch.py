"""Process launch: the harness's processes (the training child, the evaluation process, the
calibration), each started from harness sources only, in its own process group (and control
group), inside the sandbox when the run has one, with a scrubbed environment, a message pipe of
its own, and its output on a pipe that a LogPump writes to the run's log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import resources
from . import sandbox as sbx
from .dataset import Dataset
from .integrity import file_identity, harness_paths
from .paths import HARNESS_DIR, inductor_cache
from .profiles import Profile
from .runlog import LogPump

# Python loads the harness from its sources only: a planted __pycache__/*.pyc is never read, and
# -B writes none. The first argument is the harness folder; the rest is the module and its args.
BOOT = """import sys, importlib.machinery as m, importlib.util as u
H = sys.argv[1]
class L(m.SourceFileLoader):
    def get_code(self, name):
        path = self.get_filename(name)
        return compile(self.get_data(path), path, "exec", dont_inherit=True)
class F:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "harness" and not name.startswith("harness."):
            return None
        spec = m.PathFinder.find_spec(name, path)
        if spec is None or not (spec.origin or "").endswith(".py") or not spec.origin.startswith(H + "/"):
            raise ImportError("harness module " + name + " is not a source file under " + H)
        return u.spec_from_file_location(name, spec.origin, loader=L(name, spec.origin),
                                         submodule_search_locations=spec.submodule_search_locations)
sys.meta_path.insert(0, F)
mod = sys.argv[2]
sys.argv = [mod] + sys.argv[3:]
import runpy
runpy.run_module(mod, run_name="__main__", alter_sys=True)
"""

_SECRET_NAME = re.compile(
    r"(API_?KEY|_TOKEN|^TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|_KEY$|^ANTHROPIC_|SESSION_ID"
    r"|^SSH_AUTH_SOCK$|NETRC|ASKPASS|_URL$|_URI$|^DATABASE|PROXY$|^AWS_|^GOOGLE_APPLICATION)",
    re.I,
)


def scrub_env(env: dict[str, str]) -> dict[str, str]:
    """Drop every variable that looks like a secret: code an LLM wrote runs with this environment."""
    return {k: v for k, v in env.items() if not _SECRET_NAME.search(k)}


def child_env(cache: Path, harness_dir: Path = HARNESS_DIR, boxed: bool = False, shared_cache: bool = False) -> dict[str, str]:
    """The training subprocess's environment: of this one only the allowed names
    (sandbox.allowed_env: PATH, locale, the device and thread settings; a secret under any other
    name stays out), plus the harness's import path and the compile caches (in the sandbox: the
    run's own folder, so that nothing persists from one run to the next, unless
    `[run] compile_cache = "shared"`; outside it: shared under the cache dir). HOME is the run's
    own folder (set where the folder is made)."""
    env = sbx.allowed_env(scrub_env(dict(os.environ)))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(harness_dir.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if not boxed or shared_cache:
        ind = inductor_cache(cache)
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ind))
        env.setdefault("TRITON_CACHE_DIR", str(ind / "triton"))
    if boxed:
        for k in ("HOME", "XDG_CACHE_HOME", "TMPDIR") + (() if shared_cache else ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")):
            env.pop(k, None)
        env["TMPDIR"] = "/tmp"
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if env.get("COCKPIT_PROFILE"):  # the child runs in its own folder: a relative DIR means ours
        env["COCKPIT_PROFILE"] = os.path.abspath(env["COCKPIT_PROFILE"])
    return env


ChildKey = tuple[Any, ...]  # what a child was started with: it serves only a run that needs the same


def child_key(env: dict[str, str], harness_dir: Path, hashes: dict[str, str], dataset: Dataset, boxed: bool,
              profile: Profile) -> ChildKey:
    """What a child is started for. Besides the hashes, each harness file's identity (inode,
    mtime, ctime): a spare imports the harness while the previous run's train.py still runs,
    and a file that code rewrote and then put back hashes right again but has a new ctime."""
    stats = tuple((str(p), *file_identity(p.stat())) for p in harness_paths(harness_dir))
    return (sys.executable, str(harness_dir), tuple(sorted(env.items())), tuple(sorted(hashes.items())), stats,
            str(dataset.folder), boxed, profile.device, profile.compile)



# What the training process may read of a prepared dataset: never the validation or holdout split.
TRAIN_FILES = ("manifest.json", "train.bin", "train_docs.npy", "token_bytes.npy", "tokenizer.tiktoken", "tokenizer.json")


def python_command(module: str, harness_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-P", "-B", "-c", BOOT, str(harness_dir), module, *args]


def python_isolated(module: str, harness_dir: Path, *args: str) -> list[str]:
    """The evaluation process's interpreter: `-I -S` (no PYTHON* variables, no user site, no
    site-packages processing: a planted `.pth` or `sitecustomize` is never run) and an import path
    fixed here: the standard library, the folders torch and numpy are installed in, then the
    harness's parent (the harness itself is loaded from its sources by the bootstrap finder)."""
    path = [*_eval_import_path(), str(harness_dir.parent)]
    return [sys.executable, "-I", "-S", "-B", "-c", f"import sys\nsys.path[:] = {path!r}\n" + BOOT,
            str(harness_dir), module, *args]


def _eval_import_path() -> list[str]:
    """Where the evaluation process imports from: this interpreter's standard library, and the
    site folders that hold torch, numpy and what torch imports (found without importing them)."""
    import importlib.util

    out: list[str] = []
    for p in [os.path.dirname(os.__file__), *(p for p in sys.path if p.endswith("lib-dynload"))]:
        if p and os.path.isdir(p) and p not in out:
            out.append(p)
    for name in _EVAL_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        where = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
        site = os.path.dirname(where[0]) if where and where[0] else None
        if site and os.path.isdir(site) and site not in out:
            out.append(site)
    return out


# torch, numpy and the packages torch imports (typing_extensions ... mpmath: sympy's)
_EVAL_PACKAGES = ("torch", "numpy", "typing_extensions", "sympy", "mpmath", "filelock", "networkx", "jinja2",
                  "markupsafe", "fsspec")


class Process(subprocess.Popen[bytes]):
    """A harness process: a Popen that knows its control group (removed, with anything left in
    it killed, by `discard`)."""

    group: resources.Group | None = None


def _popen(cmd: list[str], env: dict[str, str], rfd_w: int, workdir: Path | None, boxed: bool, read: Sequence[Path],
           gpu: bool, cwd: str, write: Sequence[Path] = ()) -> tuple[Process, LogPump]:
    out_r, out_w = os.pipe()
    group = None
    if boxed:
        # What the user put on PYTHONPATH is importable (read-only), as it would be without the
        # sandbox, but never a workspace or a repository (sandbox.bindable): the harness's own
        # parent (a clone, in the README's set-up the workspace) is not bound, only the harness.
        harness_parent = Path(cmd[cmd.index(BOOT) + 1]).parent if BOOT in cmd else None
        extra = [Path(p) for p in env.get("PYTHONPATH", "").split(os.pathsep)
                 if p and os.path.isdir(p) and Path(p) != harness_parent and sbx.bindable(Path(p))]
        minors = [int(m) for m in env.get("COCKPIT_GPU_MINORS", "").split(",") if m.isdigit()] or None
        cmd = sbx.command(cmd, workdir=workdir, read=[*read, *extra], gpu=gpu, write=write, gpu_minors=minors)
        group = resources.make_group(env)
    try:
        proc = Process(
            cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out_w, stderr=out_w, pass_fds=(rfd_w,),
            start_new_session=True, preexec_fn=_preexec(env, group),
        )
    except BaseException:
        os.close(out_r)
        if group is not None:
            group.remove()
        raise
    finally:
        os.close(out_w)
    proc.group = group  # removed (and anything left in it killed) by discard
    pump = LogPump(out_r)
    pump.start()
    return proc, pump


def _preexec(env: dict[str, str], group: resources.Group | None = None) -> Callable[[], None]:
    """In the child before exec: into its control group (cores, memory, processes: bounds the run
    cannot widen), the resource limits, and a CPU slot's own cores (COCKPIT_CPUS)."""
    cpus = {int(c) for c in env.get("COCKPIT_CPUS", "").split(",") if c.strip().isdigit()}
    join = group.procs_files() if group is not None else []

    def pre() -> None:
        if join:
            resources.join(join)
        sbx.limit_resources()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return pre


def private_compile_cache(env: dict[str, str], workdir: Path) -> None:
    """The compile caches (Inductor, Triton) inside the process's own folder: nothing persists to
    the next run, and a compile is cold, as a run's."""
    env["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / ".cache" / "inductor")
    env["TRITON_CACHE_DIR"] = str(workdir / ".cache" / "triton")


def piped(make_cmd: Callable[[int], list[str]], env: dict[str, str], workdir: Path | None, boxed: bool,
          read: Sequence[Path], gpu: bool, cwd: str, write: Sequence[Path] = (),
          owned: Path | None = None) -> tuple[Process, LogPump, int]:
    """A harness process with a message pipe of its own (its command is made with the pipe's write
    end): the process, its log pump and the pipe's read end. The write end is closed here (the
    child has it); if the start fails, the read end is closed and `owned` (a folder made for the
    process) removed."""
    rfd, wfd = os.pipe()
    try:
        proc, pump = _popen(make_cmd(wfd), env, wfd, workdir, boxed, read, gpu, cwd=cwd, write=write)
    except BaseException:
        os.close(rfd)
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    finally:
        os.close(wfd)
    return proc, pump, rfd


# ---- the child process: started fresh, or ahead of time as the spare ----

@dataclass
class Child:
    proc: Process
    rfd: int  # read end of its message pipe
    pump: LogPump  # its output, on its way to the run's log
    key: ChildKey  # what it was started with; it serves only a run that needs the same
    t_spawn: float
    workdir: Path  # its own writable folder (its working directory)
    ready: bool = False  # an evaluation process: it said its imports are done
    disk: resources.DiskWatch | None = None  # watches its folder's size while it runs


def spawn(env: dict[str, str], key: ChildKey, harness_dir: Path, preload_compile: bool, dataset: Dataset,
          boxed: bool, gpu: bool, base: Path) -> Child:
    """A training child (`harness.child`) in a folder of its own under `base`: it imports, then
    waits on its stdin for "go"."""
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".run-", dir=base))
    read = [harness_dir] + [dataset.folder / f for f in TRAIN_FILES if (dataset.folder / f).exists()]
    env = dict(env, HOME=str(workdir), XDG_CACHE_HOME=str(workdir / ".cache"))
    write: tuple[Path, ...] = ()
    if boxed and "TORCHINDUCTOR_CACHE_DIR" not in env:  # private: nothing persists to the next run
        private_compile_cache(env, workdir)
    elif boxed:  # [run] compile_cache = "shared": writable by every run (a channel between runs)
        os.makedirs(env["TORCHINDUCTOR_CACHE_DIR"], exist_ok=True)
        os.makedirs(env["TRITON_CACHE_DIR"], exist_ok=True)
        write += (Path(env["TORCHINDUCTOR_CACHE_DIR"]), Path(env["TRITON_CACHE_DIR"]))
    if boxed and env.get("COCKPIT_PROFILE"):  # a measuring aid: its traces go where the user asked
        os.makedirs(env["COCKPIT_PROFILE"], exist_ok=True)
        write += (Path(env["COCKPIT_PROFILE"]),)
    proc, pump, rfd = piped(
        lambda fd: python_command("harness.child", harness_dir, "--fd", str(fd),
                                  *([] if boxed else ["--parent", str(os.getpid())]),
                                  *(["--preload-compile"] if preload_compile else [])),
        env, workdir, boxed, read, gpu, cwd=str(workdir), write=write, owned=workdir)
    disk = resources.DiskWatch(workdir, proc.pid)
    disk.start()
    return Child(proc, rfd, pump, key, time.monotonic(), workdir, disk=disk)


def spawn_evaluator(env: dict[str, str], harness_dir: Path, workdir: Path, boxed: bool, gpu: bool) -> Child:
    """The evaluation process: harness code, the run's folder read-only, nothing writable."""
    env = {k: v for k, v in env.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    proc, pump, rfd = piped(lambda fd: python_isolated("harness.evaluator", harness_dir, "--fd", str(fd)),
                            env, None, boxed, [harness_dir, workdir], gpu, cwd=str(harness_dir.parent))
    return Child(proc, rfd, pump, (), time.monotonic(), workdir)


def stage(child: Child, source: bytes) -> None:
    """The run's train.py, copied into the child's folder (the child reads it there)."""
    (child.workdir / "train.py").write_bytes(source)


def send_go(child: Child, go: dict[str, Any]) -> bool:
    """Hand the run to the child; False when it is gone."""
    stdin = child.proc.stdin
    assert stdin is not None  # started with stdin=PIPE
    try:
        stdin.write((json.dumps(go) + "\n").encode())
        stdin.close()
    except (BrokenPipeError, OSError):
        return False
    return True


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's whole process group (it leads its own session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def discard(child: Child) -> None:
    """Kill the child's group (and its control group, with anything left in it), close our ends,
    and finish its log."""
    kill_group(child.proc)
    if child.disk is not None:
        child.disk.stop()
    group = child.proc.group
    if group is not None:
        group.remove()
        child.proc.group = None
    try:
        if child.proc.stdin is not None:
            child.proc.stdin.close()
    except (OSError, ValueError):  # the pipe broke: the child is gone, nothing left to flush
        pass
    try:
        os.close(child.rfd)
    except OSError:
        pass
    child.pump.stop()


def exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"the training process was killed by {name}{hint}"
    return f"the training process exited with status {code} without a result"


def bounds_verdict(child: Child, status: str, reason: str | None) -> tuple[str, str | None]:
    """A run that died of a bound (its folder's size, its control group's memory) says which."""
    if status in ("trained", "cancelled"):
        return status, reason
    if child.disk is not None and child.disk.reason:
        return "crash", child.disk.reason
    group = child.proc.group
    if status == "crash" and group is not None and group.oom_kills():
        return "crash", (f"the run went over its memory limit of {group.memory / 1e9:.1f} GB and the kernel "
                         "killed it (SIGKILL)")
    return status, reason
