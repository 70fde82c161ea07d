"""The operating system's walls around agent code: bubblewrap namespaces and resource limits.

Every training process (and every evaluation process) runs as

    bwrap --unshare-all --die-with-parent --new-session --cap-drop ALL
          read-only: /usr (and /lib*, /bin, /sbin), a few files of /etc, the Python environment's
                     prefixes and package folders (never a workspace or a repository: bindable()),
                     the harness package, the named data files, /sys
          hidden:    the stdlib's test suite and GUI tools (the built-in corpus's held-out text)
          writable:  the run's own folder (its working directory), a private /tmp
          --dev /dev (+ the slot's own NVIDIA device node), --proc /proc (its own PID namespace)
          python -P -B ...

with an allow-listed environment (allowed_env), so it has no network (a network namespace with
nothing in it), sees only its own processes (and so no ancestor's /proc/*/environ), cannot write
the journal, the cache, the harness or site-packages, cannot read the validation or holdout
data nor any source of their text, nor the workspace's journal or another run's folder, and
everything it starts dies with it: when the namespace's first process ends, the kernel kills the
rest. Resource limits come from setrlimit before bwrap starts (file size, processes, core dumps)
and from the run's control group (harness/resources.py: cores, memory, processes). Where
bubblewrap is missing or the kernel refuses user namespaces, `check()` says why and the run goes
without the walls (unless `[run] sandbox = "required"`).
"""
from __future__ import annotations

import functools
import glob
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

MODES = ("auto", "required", "off")
OFF_NOTICE = "sandbox: off — the agent's code runs with your rights"
FILE_SIZE_LIMIT = 32 << 30  # bytes: no single file written by a run may be larger (the exported model fits)
EXTRA_PROCESSES = 4096  # a run may have this many processes and threads beyond what the user has already
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "hosts", "localtime",
             "alternatives", "ssl/certs", "os-release", "debian_version", "lsb-release", "nvidia", "OpenCL", "vulkan")


class SandboxUnavailable(Exception):
    pass


@functools.lru_cache(maxsize=1)
def check() -> str | None:
    """None when the sandbox works on this machine, else one line saying why not."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed; install the distribution's `bubblewrap` package"
    try:
        p = subprocess.run(_base(exe) + ["--ro-bind", "/", "/", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not start ({e})"
    if p.returncode != 0:
        err = (p.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        return f"bwrap refused to make namespaces here ({err}); see the README's sandbox section"
    return None


def _base(exe: str) -> list[str]:
    return [exe, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


def python_paths() -> list[Path]:
    """What the Python environment needs, read-only: the interpreter's prefixes and the package
    folders on sys.path. Never a workspace or a repository (an editable install puts a clone's
    root on sys.path; in the README's set-up that clone is the workspace, with its journal and
    every run's folder): see bindable()."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    for p in sys.path:
        if p and ("site-packages" in p or "dist-packages" in p or p.startswith(tuple(roots))) and os.path.isdir(p):
            roots.add(p)
    out = {Path(os.path.realpath(r)) for r in roots} | {Path(r) for r in roots}
    return sorted(p for p in out if bindable(p))


def bindable(path: Path) -> bool:
    """Whether a folder may be shown (read-only) to agent code. Never a workspace (a folder with a
    `.cockpit`: its journal and every run's folder), anything inside one or inside a `.cockpit`,
    nor a repository's root (an editable install's clone; in the README's set-up the clone is the
    workspace). A virtual environment inside a workspace (`.venv`) holds packages only: its own
    folders may be shown."""
    p = Path(os.path.abspath(path))
    if ".cockpit" in p.parts or (p / ".cockpit").exists() or (p / ".git").exists():
        return False
    venv = next((a for a in [p, *p.parents] if (a / "pyvenv.cfg").is_file()), None)
    for a in p.parents:
        if venv is not None and a == venv.parent:
            return True  # a package folder of a virtual environment kept inside a clone or workspace
        if (a / ".cockpit").exists():
            return False
    return True


def toolchain_paths() -> list[Path]:
    """The C compiler that Triton and Inductor call (on PATH or named by $CC/$CXX), with its own
    prefix (headers, libraries): it may live outside /usr, e.g. /opt/gcc."""
    out = set()
    names = ["cc", "gcc", "c++", "g++", "clang", os.environ.get("CC", ""), os.environ.get("CXX", "")]
    for name in filter(None, names):
        exe = shutil.which(name)
        if exe:
            for p in {exe, os.path.realpath(exe)}:
                prefix = Path(p).parent.parent  # <prefix>/bin/gcc -> <prefix>
                if str(prefix) not in ("/", "/usr", "/usr/local"):
                    out.add(prefix)
    cuda = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda and os.path.isdir(cuda):
        out.add(Path(cuda))
    return sorted(out)


# Folders of every Python's standard library that the sandbox never shows: the built-in corpus
# (the stdlib's own sources) draws its validation and holdout documents from these only
# (harness/sources.py), and no run needs them (the test suite and the GUI tools).
STDLIB_HIDDEN = ("test", "idlelib", "turtledemo", "lib2to3", "tkinter")


def stdlib_dirs() -> list[Path]:
    """Every Python standard library on this machine that the view may show: this interpreter's,
    and the system's under /usr and /usr/local (bound with /usr)."""
    import sysconfig

    found = {Path(sysconfig.get_paths()["stdlib"])}
    for pattern in ("/usr/lib/python3*", "/usr/local/lib/python3*", "/usr/lib64/python3*"):
        found.update(Path(p) for p in glob.glob(pattern))
    return sorted(p for p in found if p.is_dir())


def hidden_paths() -> list[Path]:
    """What the view covers with an empty folder: the corpus's held-out stdlib folders."""
    out = []
    for lib in stdlib_dirs():
        for name in STDLIB_HIDDEN:
            for p in {lib / name, Path(os.path.realpath(lib / name))}:
                if p.is_dir():
                    out.append(p)
    return sorted(set(out))


def view_roots() -> list[Path]:
    """What the sandbox shows read-only, as folders (the system, the Python environment, the
    compiler)."""
    out = [Path(d) for d in ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/sys") if os.path.exists(d)]
    return out + python_paths() + toolchain_paths()


def view_overlap(root: Path, files: Sequence[Path] = ()) -> Path | None:
    """The folder of the view that a corpus overlaps (it lies inside it, or holds it), or None."""
    hidden = hidden_paths()
    for r in {Path(os.path.realpath(root)), Path(os.path.abspath(root)), *(Path(os.path.realpath(f)) for f in files[:1])}:
        for v in view_roots():
            if r == v or v in r.parents or r in v.parents:
                if any(h == r or h in r.parents for h in hidden):
                    continue  # inside a folder the view hides
                return v
    return None


def gpu_nodes(minors: list[int] | None, present: list[str]) -> list[str]:
    """The /dev nodes a run on the GPUs with these device minor numbers gets (None: the run is not
    pinned to a device: every NVIDIA node and the DRI nodes). A slot's run gets its own
    /dev/nvidiaN and the driver's shared control nodes, never another GPU's node, so changing
    CUDA_VISIBLE_DEVICES inside the run finds no other GPU."""
    if minors is None:
        return sorted(present)
    shared = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
    own = {f"/dev/nvidia{m}" for m in minors}
    return sorted(p for p in present if p in shared or p in own or p.startswith("/dev/nvidia-caps/"))


def present_gpu_nodes() -> list[str]:
    return sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/nvidia-caps/*") + glob.glob("/dev/dri/*"))


# The environment a run gets: these names, and nothing else of the user's (an allow-list: a
# secret under any name stays out). The runner then sets its own (PYTHONPATH, HOME, TMPDIR, the
# compile caches, the slot's device and threads).
ENV_NAMES = {"PATH", "PYTHONPATH", "LANG", "LANGUAGE", "TZ", "TERM", "CC", "CXX", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH",
             "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_MODULE_LOADING", "CUDA_LAUNCH_BLOCKING",
             "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "PYTORCH_CUDA_ALLOC_CONF", "COCKPIT_PROFILE", "COCKPIT_COMPILE_STATS", "COCKPIT_CPUS",
             "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}
ENV_PREFIXES = ("LC_",)


def allowed_env(env: dict[str, str]) -> dict[str, str]:
    """The user's variables a run may see (ENV_NAMES, LC_*)."""
    return {k: v for k, v in env.items() if k in ENV_NAMES or k.startswith(ENV_PREFIXES)}


def command(cmd: list[str], *, workdir: Path | None, read: Sequence[Path], gpu: bool, write: Sequence[Path] = (),
            gpu_minors: list[int] | None = None) -> list[str]:
    """`cmd` wrapped in bwrap: `workdir` writable and the working directory (None: nothing
    writable but the private /tmp), `read` read-only (each must be bindable()). `gpu_minors`: the
    slot's own GPUs (None: every GPU node)."""
    exe = shutil.which("bwrap")
    if exe is None:
        raise SandboxUnavailable(check() or "bwrap is missing")
    a = _base(exe)
    for d in ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin"):
        if os.path.exists(d):
            a += ["--ro-bind", d, d]
    for name in ETC_FILES:
        a += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    a += ["--ro-bind-try", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    seen: set[str] = set()
    for p in [*python_paths(), *toolchain_paths(), *read]:
        s = str(p)
        if s in seen or s.startswith("/usr/") or not os.path.exists(s):  # /usr is bound whole
            continue
        seen.add(s)
        a += ["--ro-bind", s, s]
    for p in hidden_paths():  # after the binds: an empty folder over each
        a += ["--tmpfs", str(p)]
    if gpu:
        for dev in gpu_nodes(gpu_minors, present_gpu_nodes()):
            a += ["--dev-bind-try", dev, dev]
    for p in write:  # measuring aids the user asked for (COCKPIT_PROFILE's folder)
        a += ["--bind", str(p), str(p)]
    if workdir is not None:
        a += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
    else:
        a += ["--chdir", "/tmp"]
    return a + ["--"] + cmd


def limit_resources() -> None:
    """Run in the child before exec (preexec_fn): the limits a run's processes inherit."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _lower(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT)
    _lower(resource.RLIMIT_NPROC, _user_tasks() + EXTRA_PROCESSES)


def _lower(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
    if soft == resource.RLIM_INFINITY or soft > cap:
        try:
            resource.setrlimit(which, (cap, hard))
        except (ValueError, OSError):
            pass


def _user_tasks() -> int:
    """Threads the current user runs now (RLIMIT_NPROC counts them all, machine-wide)."""
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                st = os.stat(f"/proc/{pid}")
                if st.st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n
