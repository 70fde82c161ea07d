"""What the red team of issue #22 did from train.py (section F: 18, 23, 26, 27, 29), each tried again
for real through the runner and the sandbox: the validation text's sources, the workspace on the
Python path, the environment, another slot's cores and GPU, a fork bomb, a memory spike, a disk fill.
The bounds come from the operating system (bubblewrap, control groups), so each test runs the
attack in a real sandboxed run; where this machine cannot give a bound, the test asserts the notice
that says so."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from harness import resources, runner, sandbox
from harness.dataset import current_dataset, open_dataset
from harness.errors import HarnessError, NotPreparedError, SourceError
from harness.integrity import lock_harness
from harness.paths import HARNESS_DIR
from harness.prepare import prepare, split_of, split_salt
from harness.sources import Source, text_source

from test_sandbox import attacks, run_attack  # noqa: E402  (skips the module where there is no sandbox)

from engine.run.slots import gpu_env, resolve


# ---- 27. the environment is an allow-list ----

def test_a_run_gets_no_variable_outside_the_allow_list(tmp_path, tiny_cache, monkeypatch):
    odd = "ZZ_" + uuid.uuid4().hex[:10].upper()
    monkeypatch.setenv("DB_PASS", "hunter2-db-password")
    monkeypatch.setenv(odd, "a-value-nobody-named")
    r = run_attack(tmp_path, tiny_cache, """
    attack("env", '''
    result = json.dumps({"env": dict(os.environ), "cwd": os.getcwd()})
    ''')
    rt.submit(Uniform())
    """)
    seen = json.loads(attacks(r)["env"])
    env = seen["env"]
    assert "DB_PASS" not in env and odd not in env
    assert "hunter2-db-password" not in json.dumps(env) and "a-value-nobody-named" not in json.dumps(env)
    assert env["HOME"] == seen["cwd"]  # HOME is the run's own folder
    assert "PATH" in env and r.status == "ok"


# ---- 26. no workspace, no journal, no other run in the view ----

def test_bindable_refuses_workspaces_repositories_and_run_folders(tmp_path):
    ws = tmp_path / "clone"
    (ws / ".cockpit" / "runs" / "t" / "3" / "files").mkdir(parents=True)
    (ws / ".git").mkdir()
    (ws / "src" / "pkg").mkdir(parents=True)
    venv = ws / ".venv"
    (venv / "lib" / "python3" / "site-packages").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    other = tmp_path / "packages" / "site-packages"
    other.mkdir(parents=True)
    table = {
        ws: False,  # the clone: the workspace of the README's set-up
        ws / ".cockpit": False,
        ws / ".cockpit" / "runs" / "t" / "3" / "files": False,  # another run's folder
        ws / "src": False,  # inside a workspace
        venv / "lib" / "python3" / "site-packages": True,  # the packages of its .venv
        other: True,
    }
    assert {p: sandbox.bindable(p) for p in table} == table


def test_a_workspace_on_the_python_path_is_not_in_the_view(tmp_path, tiny_cache, monkeypatch):
    """The README's set-up: the clone is the workspace and on the Python path (editable install),
    the harness inside it. The run must not read the journal nor an earlier run's files."""
    ws = tmp_path / "ws"
    runs = ws / ".cockpit" / "runs" / "t"
    (runs / "1" / "files").mkdir(parents=True)
    (runs / "1" / "files" / "ckpt.pt").write_bytes(b"weights of run 1")
    db = sqlite3.connect(ws / ".cockpit" / "journal.sqlite")
    db.execute("CREATE TABLE experiments(n, holdout)")
    db.execute("INSERT INTO experiments VALUES (1, 3.14159)")
    db.commit()
    db.close()
    (ws / ".git").mkdir()
    harness_dir = ws / "harness"
    shutil.copytree(HARNESS_DIR, harness_dir, ignore=shutil.ignore_patterns("__pycache__"))
    lock_harness(tiny_cache, harness_dir)
    monkeypatch.setenv("PYTHONPATH", str(ws))
    monkeypatch.syspath_prepend(str(ws))
    journal = ws / ".cockpit" / "journal.sqlite"
    real = hashlib.sha256(journal.read_bytes()).hexdigest()
    r = run_attack(tmp_path, tiny_cache, f"""
    attack("listing", '''
    result = json.dumps(sorted(os.path.join(d, f) for d, _, fs in os.walk({str(ws)!r}) for f in fs))
    ''')
    attack("journal", '''
    import hashlib
    result = hashlib.sha256(open({str(journal)!r}, "rb").read()).hexdigest()
    ''')
    attack("earlier_run", '''
    result = open({str(runs / "1" / "files" / "ckpt.pt")!r}, "rb").read().decode()
    ''')
    rt.submit(Uniform())
    """, n=2, harness_dir=harness_dir)
    seen = attacks(r)
    listing = json.loads(seen["listing"])
    own = str(runs) + "/.run-"  # its own folder
    assert listing and all(f.startswith((str(harness_dir) + "/", own)) for f in listing), listing  # and the harness
    assert seen["journal"] != real and "3.14159" not in seen["journal"], seen
    assert seen["earlier_run"].startswith("blocked"), seen
    assert r.status == "ok"


# ---- 18. no source of the validation or holdout text in the view ----

def _stdlib_subset() -> Source:
    """A small built-in-corpus source: the stdlib's json package, its tests and idlelib."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = sorted([*root.glob("json/*.py"), *root.glob("test/test_json/*.py"), *root.glob("idlelib/*.py")],
                   key=lambda p: p.relative_to(root).as_posix())
    return Source("stdlib", str(root), files, root=root)


@pytest.fixture(scope="module")
def stdlib_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("stdlib-cache")
    (cache / "split.salt").write_text("cockpit-tests-4\n")  # a split with enough validation and holdout text
    prepare(_stdlib_subset(), cache, vocab_size=512, show_progress=False)
    return cache


def test_the_validation_text_cannot_be_rebuilt_from_inside_a_run(tmp_path, stdlib_cache):
    """The red team's attack: the built-in corpus is the interpreter's stdlib, which the sandbox
    shows; with the public split rule and the manifest, train.py rebuilt the validation stream."""
    d = current_dataset(stdlib_cache)
    source = _stdlib_subset()
    idents = [p.relative_to(source.root).as_posix() for p in source.files]
    salt, scale = split_salt(stdlib_cache), source.holdout_scale()
    truly_held = [i for i in idents
                  if split_of(i, d.manifest["val_fraction"], salt=salt, eligible=source.eligible(i), scale=scale) != "train"]
    assert truly_held
    r = run_attack(tmp_path, stdlib_cache, f"""
    attack("rebuild", '''
    import numpy as np
    from harness import tokenizer as tok
    from harness.prepare import split_of
    folder = pathlib.Path(FOLDER)
    m = json.loads((folder / "manifest.json").read_text())
    enc = tok.load(folder)
    out, read = [], 0
    for ident in IDENTS:
        if split_of(ident, m["val_fraction"]) != "val":  # the public rule
            continue
        try:
            text = open(os.path.join(m["source"]["spec"], ident), encoding="utf-8").read()
        except OSError:
            continue
        read += 1
        out += [m["bos_id"]] + enc.encode_ordinary(text)
    np.asarray(out, dtype=np.uint16).tofile("rebuilt.bin")
    result = f"rebuilt {{len(out)}} tokens from {{read}} files"
    ''', FOLDER={str(d.folder)!r}, IDENTS={idents!r})
    attack("held_out_files", '''
    readable = []
    for ident in HELD:
        try:
            open(os.path.join(ROOT, ident), "rb").read(1)
            readable.append(ident)
        except OSError:
            pass
    result = f"readable {{len(readable)}} of {{len(HELD)}}"
    ''', HELD={truly_held!r}, ROOT={str(source.root)!r})
    rt.submit(Uniform())
    """)
    seen = attacks(r)
    assert seen["rebuild"].startswith("rebuilt"), seen
    assert seen["held_out_files"] == f"readable 0 of {len(truly_held)}", seen
    rebuilt = np.fromfile(Path(r.log_path).parent / "files" / "rebuilt.bin", dtype=np.uint16)
    val = np.asarray(d.stream("val"))
    n = min(len(rebuilt), len(val), 4096)
    assert n == 0 or not np.array_equal(rebuilt[:n], val[:n])
    assert r.status == "ok"


def test_a_cache_split_by_the_public_rule_is_refused_in_one_line(tmp_path, tiny_cache):
    old = tmp_path / "cache" / "datasets" / "text-0123456789abcdef"
    old.mkdir(parents=True)
    m = json.loads((current_dataset(tiny_cache).folder / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(dict(m, format=2)))
    (tmp_path / "cache" / "current").write_text(old.name + "\n")
    with pytest.raises(HarnessError) as e:
        current_dataset(tmp_path / "cache")
    assert not isinstance(e.value, NotPreparedError)  # not re-prepared silently from another corpus
    assert "\n" not in str(e.value) and "public rule" in str(e.value)
    assert f"cockpit prepare --text {m['source']['spec']}" in str(e.value)
    with pytest.raises(HarnessError):
        open_dataset(old)


def test_cockpit_train_on_a_cache_split_by_the_public_rule_says_so_in_one_line(tmp_path, tiny_cache):
    import subprocess

    cache = tmp_path / "cache"
    old = cache / "datasets" / "text-0123456789abcdef"
    old.mkdir(parents=True)
    m = json.loads((current_dataset(tiny_cache).folder / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(dict(m, format=2)))
    (cache / "current").write_text(old.name + "\n")
    (tmp_path / "train.py").write_text("print('never runs')\n")
    r = subprocess.run([sys.executable, "-m", "cockpit", "--cache-dir", str(cache), "train", "--workspace", str(tmp_path),
                        "--script", str(tmp_path / "train.py")], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "COCKPIT_CACHE"})
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "public rule" in r.stderr, r.stderr
    assert not list((cache / "datasets").glob("stdlib-*"))  # the built-in corpus was not prepared instead


def test_a_text_corpus_inside_the_python_environment_is_refused(tmp_path):
    site = Path(np.__file__).resolve().parent  # a folder the sandbox shows: site-packages/numpy
    with pytest.raises(SourceError) as e:
        prepare(text_source(str(site), include=["*.txt"]) if list(site.rglob("*.txt")) else text_source(str(site)),
                tmp_path / "cache", vocab_size=512, show_progress=False)
    assert "sandbox" in str(e.value) and "\n" not in str(e.value)


# ---- 23. a slot keeps to its own cores and its own GPU ----

def test_each_gpu_slot_is_given_only_its_own_device_node():
    present = ["/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
               "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2", "/dev/nvidia3", "/dev/nvidiactl", "/dev/dri/renderD128"]
    shared = ["/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
              "/dev/nvidiactl"]
    table = {
        (0,): shared[:4] + ["/dev/nvidia0"] + shared[4:],
        (3,): shared[:4] + ["/dev/nvidia3"] + shared[4:],
        (1, 2): shared[:4] + ["/dev/nvidia1", "/dev/nvidia2"] + shared[4:],
    }
    for minors, want in table.items():
        assert sandbox.gpu_nodes(list(minors), present) == want, minors
    assert sandbox.gpu_nodes(None, present) == sorted(present)  # not pinned (one device, no NVML)
    # a slot's environment names its GPU by UUID and its node by minor number (NVML's)
    ids = {"0": (0, "GPU-aaaa"), "1": (3, "GPU-bbbb")}
    assert gpu_env("1", ids) == {"CUDA_VISIBLE_DEVICES": "GPU-bbbb", "COCKPIT_GPU_MINORS": "3"}
    assert gpu_env("2", ids) == {"CUDA_VISIBLE_DEVICES": "2"}
    slots, _ = resolve("0,1", True, gpus=[("0", "H200"), ("1", "H200")], ids=ids)
    assert [s.env["COCKPIT_GPU_MINORS"] for s in slots] == ["0", "3"]
    wrapped = sandbox.command(["true"], workdir=None, read=[], gpu=True, gpu_minors=[3])
    assert not [a for a in wrapped if a.startswith("/dev/nvidia") and a[11:].isdigit() and a != "/dev/nvidia3"]


WIDEN = """
attack("widen", '''
everything = set(range(os.cpu_count()))
try:
    os.sched_setaffinity(0, everything)
except OSError as e:
    pass
mine = sorted(os.sched_getaffinity(0))
ran_on = set()
def burn():
    os.sched_setaffinity(0, everything) if hasattr(os, "sched_setaffinity") else None
    t = time.time()
    while time.time() - t < 1.0:
        pass
    ran_on.add(int(open("/proc/thread-self/stat").read().rsplit(")", 1)[1].split()[36]))
import threading, time
ts = [threading.Thread(target=burn) for _ in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
result = json.dumps({"affinity": mine, "ran_on": sorted(ran_on)})
''')
attack("cgroup", '''
wrote, tried = 0, 0
for f in glob.glob("/sys/fs/cgroup/**/cpuset.cpus", recursive=True) + glob.glob("/sys/fs/cgroup/**/cgroup.procs", recursive=True):
    tried += 1
    try:
        with open(f, "w") as fh:
            fh.write(str(os.getpid()) if f.endswith("procs") else "0-1023")
        wrote += 1
    except OSError:
        pass
result = f"wrote {wrote} of {tried}"
''')
rt.submit(Uniform())
"""


def test_a_cpu_slot_cannot_widen_its_cores(tmp_path, tiny_cache):
    if resources.backend() is None:
        assert "cores are an affinity the run can widen" in resources.notice()
        pytest.skip("no writable cgroup here: the notice says so at start")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: nothing to widen into")
    slots, _ = resolve("cpu:2", False, cores=cores)
    slot = slots[1]
    own = {int(c) for c in slot.env["COCKPIT_CPUS"].split(",")}
    r = run_attack(tmp_path, tiny_cache, WIDEN, env_extra=slot.env)
    seen = json.loads(attacks(r)["widen"])
    assert set(seen["affinity"]) <= own, (seen, own)
    assert set(seen["ran_on"]) <= own, (seen, own)
    assert attacks(r)["cgroup"].startswith("wrote 0 of "), attacks(r)["cgroup"]  # /sys is read-only in the sandbox
    assert r.status == "ok"


# ---- 29. a fork bomb, a memory spike, a disk fill ----

def _groups() -> set:
    b = resources.backend()
    return set() if b is None else {g for p in b.parents.values() for g in p.glob("run-*")}


def _no_groups_left(before: set) -> bool:
    """The run's own groups are gone (other cockpits on the machine may have theirs)."""
    return not (_groups() - before)


def test_a_fork_bomb_stops_at_the_runs_process_cap(tmp_path, tiny_cache, monkeypatch):
    if resources.backend() is None:
        assert "fork bomb is not bounded" in resources.notice() or os.geteuid() != 0
        pytest.skip("no writable cgroup here: the notice says so at start")
    monkeypatch.setattr(resources, "PIDS_MAX", 64)
    before = _groups()
    r = run_attack(tmp_path, tiny_cache, """
    attack("bomb", '''
    import threading, time
    stop = threading.Event()
    started = 0
    try:
        for _ in range(300):
            threading.Thread(target=stop.wait, daemon=True).start()
            started += 1
    except RuntimeError:
        pass
    children = 0
    try:
        for _ in range(100):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
    except OSError:
        pass
    stop.set()
    result = f"threads {started} forks {children}"
    ''')
    rt.submit(Uniform())
    """)
    seen = attacks(r)["bomb"].split()
    threads, forks = int(seen[1]), int(seen[3])
    assert threads < 64 and forks < 64, seen
    assert r.status == "ok"  # the run itself went on; the machine was never at risk
    assert _no_groups_left(before)


def test_a_memory_spike_is_stopped_by_the_kernel_not_a_poll(tmp_path, tiny_cache, monkeypatch):
    if resources.backend() is None:
        assert "memory is polled once a second" in resources.notice()
        pytest.skip("no writable cgroup here: the notice says so at start")
    monkeypatch.setattr(resources, "MEMORY_LIMIT", 1_200_000_000)
    before = _groups()
    limits = runner.Limits(startup=60, warmup=5, eval=60, over_budget_tolerance=1.0, memory_bytes=None)  # no poll
    r = run_attack(tmp_path, tiny_cache, """
    hog = torch.ones(3 * 1024, 1024, 256)  # 3 GB at once
    print("ATTACK spike: allocated", flush=True)
    rt.submit(Uniform())
    """, limits=limits)
    assert "spike" not in attacks(r)
    assert r.status == "crash" and "SIGKILL" in r.reason, r.reason
    assert _no_groups_left(before)


def test_a_disk_fill_is_stopped_and_its_files_are_not_kept(tmp_path, tiny_cache, monkeypatch):
    monkeypatch.setattr(resources, "RUN_DISK_CAP", 40 << 20)
    monkeypatch.setattr(resources, "FILES_KEEP_CAP", 20 << 20)
    r = run_attack(tmp_path, tiny_cache, """
    attack("fill", '''
    import time
    for i in range(40):
        with open(f"fill-{i}.bin", "wb") as f:
            f.write(os.urandom(8 << 20))
        time.sleep(0.1)
    result = "wrote 320 MB"
    ''')
    rt.submit(Uniform())
    """)
    assert "fill" not in attacks(r)  # killed before it finished
    assert r.status == "crash" and "over its cap" in r.reason, r.reason
    run_dir = Path(r.log_path).parent
    assert not (run_dir / "files").exists()  # over the cap kept per run
    assert "were deleted" in Path(r.log_path).read_text()


def test_kept_files_are_capped_per_run_and_per_session_oldest_first(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "FILES_KEEP_CAP", 3 << 20)
    monkeypatch.setattr(resources, "FILES_TOTAL_CAP", 5 << 20)
    session = tmp_path / "runs" / "t"
    for n in (1, 2, 3):
        f = session / str(n) / "files"
        f.mkdir(parents=True)
        (f / "x.bin").write_bytes(os.urandom(2 << 20))
        os.utime(f, (time.time() - 100 + n, time.time() - 100 + n))
    big = session / "4" / "files"
    big.mkdir(parents=True)
    (big / "x.bin").write_bytes(os.urandom(4 << 20))
    assert "were deleted" in resources.keep_files(big) and not big.exists()
    assert resources.keep_files(session / "3" / "files") is None
    gone = resources.prune_files(session, keep=session / "3" / "files")
    assert gone == [session / "1" / "files"]  # 6 MB -> 4 MB: the oldest went
    assert (session / "2" / "files").exists() and (session / "3" / "files").exists()


def test_the_kept_files_caps_come_from_cockpit_toml(tmp_path, monkeypatch):
    from engine.config import ConfigError, load

    (tmp_path / "cockpit.toml").write_text("[run]\nkeep_files_mb = 5\nkeep_files_total_mb = 50\n")
    cfg = load(tmp_path)
    monkeypatch.setattr(resources, "FILES_KEEP_CAP", resources.FILES_KEEP_CAP)
    monkeypatch.setattr(resources, "FILES_TOTAL_CAP", resources.FILES_TOTAL_CAP)
    resources.keep_files_caps(cfg.keep_files_mb, cfg.keep_files_total_mb)
    assert (resources.FILES_KEEP_CAP, resources.FILES_TOTAL_CAP) == (5 << 20, 50 << 20)
    (tmp_path / "cockpit.toml").write_text("[run]\nkeep_files_mb = \"lots\"\n")
    with pytest.raises(ConfigError, match=r"\[run\]\.keep_files_mb must be a number of megabytes"):
        load(tmp_path)


def test_without_a_writable_cgroup_the_start_says_what_is_not_bounded(monkeypatch):
    monkeypatch.setattr(resources, "backend", lambda: None)
    line = resources.notice()
    assert "\n" not in line and "no writable cgroup" in line
    assert "cores are an affinity the run can widen" in line and "memory is polled once a second" in line
    assert ("fork bomb is not bounded" in line) == (os.geteuid() == 0)
    assert resources.make_group({"COCKPIT_CPUS": "0"}) is None  # runs go on, without the group
    monkeypatch.undo()
    if resources.backend() is not None:
        assert resources.notice() is None  # nothing to say where the kernel bounds every run
