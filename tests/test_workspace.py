"""A fresh workspace starts from what cockpit shipped, whatever a session did in the clone; and
cockpit.toml says where each setting goes. Real git repositories and real `cockpit` processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import config as configmod
from engine.store.workspace import PROGRAM_TEMPLATE, TRAINER, init_workspace

ROOT = Path(__file__).resolve().parents[1]


def git(cwd: Path, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def cockpit(cwd: Path, *args, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("ANTHROPIC_API_KEY", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "cockpit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


# ---- 7. `cockpit init` copies the shipped trainer and program.md, never the clone's working copies ----

def test_init_in_a_clone_a_session_changed_still_gives_the_shipped_trainer_and_program(tmp_path):
    # a copy of this checkout (not the real one), used as the README's set-up uses it: the clone is
    # a workspace, so a session left it on its branch with the agent's train.py and the human's
    # program.md edits, committed and uncommitted
    clone = tmp_path / "clone"
    for part in ("cockpit", "engine", "harness", "trainer"):
        shutil.copytree(ROOT / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(ROOT / "program.md", clone / "program.md")
    shutil.copyfile(TRAINER, clone / "trainer" / "train.py")  # the clone as it was cloned
    shutil.copyfile(PROGRAM_TEMPLATE, clone / "program.md")
    (clone / "cockpit.toml").write_text(configmod.DEFAULT_TOML)
    git(clone, "init", "-q", "-b", "main")
    git(clone, "add", "-A")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the release")
    git(clone, "checkout", "-q", "-b", "cockpit/s1")
    train = clone / "trainer" / "train.py"
    train.write_text(train.read_text().replace("\n", "\nSESSION_EDIT = 1  # the agent's kept change\n", 1))
    git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "#3 keep")
    with open(train, "a") as f:
        f.write("\nUNCOMMITTED = 2  # a run in flight\n")
    with open(clone / "program.md", "a") as f:
        f.write("\nFocus on the optimizer only.\n")

    r = cockpit(clone, "init", tmp_path / "fresh", pythonpath=clone)
    assert r.returncode == 0, r.stderr
    fresh = tmp_path / "fresh"
    assert (fresh / "trainer" / "train.py").read_bytes() == TRAINER.read_bytes()
    assert (fresh / "program.md").read_bytes() == PROGRAM_TEMPLATE.read_bytes()
    assert "SESSION_EDIT" not in (fresh / "trainer" / "train.py").read_text()
    assert "optimizer only" not in (fresh / "program.md").read_text()
    # and the clone is left as the session left it
    assert "UNCOMMITTED" in train.read_text() and git(clone, "rev-parse", "--abbrev-ref", "HEAD") == "cockpit/s1"


def test_the_shipped_trainer_and_program_are_the_repositorys_own():
    """The copies `cockpit init` ships agree with trainer/train.py and program.md as this repository
    last committed them outside a session (a session's commits are pinned under refs/cockpit*/, and
    the clone may be on a session branch): a change of the trainer is a change of both."""
    if not (ROOT / ".git").exists():  # an unpacked release: the working copies are the shipped ones
        assert (ROOT / "trainer" / "train.py").read_bytes() == TRAINER.read_bytes()
        return
    pinned = set(git(ROOT, "for-each-ref", "--format=%(objectname)", "refs/cockpit/", "refs/cockpit-sync/").split())
    touched = git(ROOT, "rev-list", "HEAD", "--", "trainer/train.py", "program.md", "engine/template").split()
    release = next(c for c in touched if c not in pinned)
    for mine, shipped in (("trainer/train.py", "engine/template/train.py"), ("program.md", "engine/template/program.md")):
        assert git(ROOT, "show", f"{release}:{mine}") == git(ROOT, "show", f"{release}:{shipped}"), (
            f"{mine} and {shipped} differ at {release[:10]}: change both")
    if git(ROOT, "rev-parse", "--abbrev-ref", "HEAD").startswith("cockpit/"):
        return
    # outside a session the copies on disk agree too (uncommitted work on the trainer included)
    assert (ROOT / "trainer" / "train.py").read_bytes() == TRAINER.read_bytes(), "copy trainer/train.py to engine/template/"
    assert (ROOT / "program.md").read_bytes() == PROGRAM_TEMPLATE.read_bytes(), "copy program.md to engine/template/"


def test_a_wheel_ships_the_trainer_and_program_that_init_copies(tmp_path):
    """Installed from a wheel (not editable), `cockpit init` still finds what it copies."""
    src, out = tmp_path / "src", tmp_path / "wheel"  # built from a copy: no build/ left in the checkout
    for part in ("cockpit", "engine", "harness", "trainer"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("no pip in this environment")
    assert r.returncode == 0, r.stderr
    import zipfile

    names = zipfile.ZipFile(next(out.glob("cockpit-*.whl"))).namelist()
    assert "engine/template/train.py" in names and "engine/template/program.md" in names


# ---- 17. cockpit.toml names the budget, and a key in the wrong section says where it goes ----

def test_the_generated_cockpit_toml_names_the_budget_under_target(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    text = (ws / "cockpit.toml").read_text()
    target = text.split("[target]", 1)[1].split("\n[", 1)[0]
    assert "# budget = " in target and "--budget" in target
    # uncommented as written, it is taken
    (ws / "cockpit.toml").write_text(text.replace("# budget = 300", "budget = 300", 1))
    assert configmod.load(ws).target.budget == 300.0


@pytest.mark.parametrize("toml,line", [
    ("[run]\nbudget = 30\n", "[run] budget: unknown key; the budget is set under [target] budget (or --budget)"),
    ("[decision]\nbudget = 30\n", "[decision] budget: unknown key; the budget is set under [target] budget (or --budget)"),
    ("[agent]\nbudget = 30\n", "[agent] budget: unknown key; the budget is set under [target] budget (or --budget)"),
    ('[target]\nsandbox = "off"\n', "[target] sandbox: unknown key; the sandbox is set under [run] sandbox"),
    ('[agent]\ndevices = "cpu:2"\n', "[agent] devices: unknown key; the devices is set under [run] devices (or --devices)"),
    ("[run]\nnoise_k = 3\n", "[run] noise_k: unknown key; the noise_k is set under [decision] noise_k"),
    ("[decision]\nmax_consecutive_crashes = 3\n", "the max_consecutive_crashes is set under [stop] max_consecutive_crashes"),
    ('[target]\nmodel = "x"\n', "[target] model: unknown key; the model is set under [agent] model (or --model)"),
    # a key no section has: the section's own keys
    ("[run]\nsandbx = 'off'\n", "unknown key [run].sandbx (known: address, cluster, compile_cache, devices, keep_files_mb, keep_files_total_mb, sandbox)"),
    ("[target]\nbudgt = 30\n", "unknown key [target].budgt (known: budget, direction, editable"),
])
def test_a_key_in_the_wrong_section_says_where_it_goes(tmp_path, toml, line):
    (tmp_path / "cockpit.toml").write_text(toml)
    with pytest.raises(configmod.ConfigError) as e:
        configmod.load(tmp_path)
    assert line in str(e.value) and "\n" not in str(e.value)


def test_run_budget_on_the_command_line_is_one_line_and_changes_nothing(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    (ws / "cockpit.toml").write_text((ws / "cockpit.toml").read_text() + "\n[run]\nbudget = 30\n")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "a budget in the wrong place")
    head = git(ws, "rev-parse", "HEAD")
    cache = tmp_path / "cache"
    r = cockpit(tmp_path, "--cache-dir", cache, "run", "--headless", "--workspace", ws, "--max-experiments", "1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert lines[0] == (f"cockpit: error: {ws / 'cockpit.toml'}: [run] budget: unknown key; "
                        "the budget is set under [target] budget (or --budget)")
    assert git(ws, "rev-parse", "HEAD") == head and git(ws, "status", "--porcelain") == ""
    assert not (ws / ".cockpit").exists() and not cache.exists()
