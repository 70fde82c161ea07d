"""The operating system's walls around agent code: bubblewrap namespaces and resource limits.

Every training process (and every evaluation process) runs as

    bwrap --unshare-all --die-with-parent --new-session --cap-drop ALL
          read-only: /usr (and /lib*, /bin, /sbin), a few files of /etc, the Python environment,
                     the harness package, the named data files, /sys
          writable:  the run's own folder (its working directory), a private /tmp
          --dev /dev (+ the NVIDIA device nodes), --proc /proc (its own PID namespace)
          python -P -B ...

so it has no network (a network namespace with nothing in it), sees only its own processes
(and so no ancestor's /proc/*/environ), cannot write the journal, the cache, the harness or
site-packages, cannot read the validation or holdout data, and everything it starts dies with
it: when the namespace's first process ends, the kernel kills the rest. Resource limits come
from setrlimit before bwrap starts (file size, processes, core dumps); memory is watched by the
runner. Where bubblewrap is missing or the kernel refuses user namespaces, `check()` says why
and the run goes without the walls (unless `[run] sandbox = "required"`).
"""

from __future__ import annotations

import functools
import glob
import os
import resource
import shutil
import subprocess
import sys
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
    """What the Python environment needs, read-only: prefixes and package folders."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    for p in sys.path:
        if p and ("site-packages" in p or "dist-packages" in p or p.startswith(tuple(roots))) and os.path.isdir(p):
            roots.add(p)
    return sorted({Path(os.path.realpath(r)) for r in roots} | {Path(r) for r in roots})


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


def command(cmd: list[str], *, workdir: Path | None, read: list[Path], gpu: bool, write: tuple = ()) -> list[str]:
    """`cmd` wrapped in bwrap: `workdir` writable and the working directory (None: nothing
    writable but the private /tmp), `read` read-only."""
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
    if gpu:
        for dev in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri/*")):
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
