"""`cockpit report`: progress.png + report.md from a real journal, built without any training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.store.journal import Journal
from cockpit.report_render import label_rows, legend_keys, write_report
from engine.analysis import progress_series, running_best, y_limits
from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000.0

# (n, kind, status, metric, delta, confidence, description)
ROWS = [
    (1, "baseline", "keep", 1.000, None, None, "baseline 1/2"),
    (2, "baseline", "keep", 1.002, None, None, "baseline 2/2"),
    (3, "experiment", "keep", 0.990, -0.011, 7.8, "double the learning rate"),
    (4, "experiment", "discard", 0.995, 0.005, -3.5, "remove weight decay"),
    (5, "experiment", "crash", None, None, None, "fused attention kernel"),
    (6, "experiment", "keep", 0.980, -0.010, 7.1, "rotary embeddings | base 10000 with a long description that runs on"),
    (7, "experiment", "discard", 5.000, 4.02, -2800.0, "lr x100 (diverges)"),
    (8, "experiment", "forced", 0.985, 0.005, -3.5, "wider MLP, kept by the human"),
    (9, "experiment", "timeout", None, None, None, "deeper model"),
    (10, "experiment", "discard", 0.983, 0.003, -2.1, "label smoothing"),
]
NOISE = 0.0014142


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, toml: str | None = None) -> str:
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('hi')\n")
    if toml is not None:
        (path / "cockpit.toml").write_text(toml)
    (path / ".gitignore").write_text(".cockpit/\n")
    _git(path, "add", "-A")
    _git(path, "commit", "-qm", "init")
    return _git(path, "rev-parse", "HEAD")


def fill_journal(ws: Path, base: str, tag: str = "t1", rows=ROWS, scale: float = 1.0) -> None:
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.create_session(tag, f"cockpit/{tag}", base, "tuner", "gpt/cpu")
    best_n, best_sha, best = None, base, None
    for i, (n, kind, status, metric, delta, conf, desc) in enumerate(rows):
        sha = base if kind == "baseline" else f"{n:02d}" + "ab" * 19
        j.add_experiment(s.id, n, kind, base, "running", desc)
        j.update_experiment(
            s.id, n, status=status, commit_sha=sha, metric=None if metric is None else metric * scale,
            delta=delta, confidence=conf, training_seconds=300.0, total_seconds=330.0, memory_gb=12.5,
            tokens_in=1000 * n, tokens_out=100 * n, cost_usd=0.05 if kind == "experiment" else 0.0,
            started=T0 + 360 * i, finished=T0 + 360 * i + 330,
            reason="exit code 1" if status == "crash" else None,
        )
        if status in ("keep", "forced") and kind == "experiment":
            best_n, best_sha, best = n, sha, metric * scale
    j.update_session(s.id, best_n=best_n, best_commit=best_sha, best_metric=best, noise=NOISE)
    j.close()


def cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "cockpit", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def _experiments(tmp_path: Path):
    ws = tmp_path / "ws"
    fill_journal(ws, make_repo(ws))
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    try:
        return j.experiments(j.session_by_tag("t1").id)
    finally:
        j.close()


# ---- the data behind the chart ----

def test_running_best_is_the_line_through_the_kept_points(tmp_path):
    exps = _experiments(tmp_path)
    best = running_best(exps)
    assert [n for n, _ in best] == [1, 2, 3, 6, 8]
    # the baselines' mean from the first baseline on; the forced #8 (worse) is the engine's best from then on
    assert [v for _, v in best] == pytest.approx([1.001, 1.001, 0.990, 0.980, 0.985])

    s = progress_series(exps)
    assert s.baseline == pytest.approx(1.001)
    assert [e.n for e in s.kept] == [1, 2, 3, 6, 8]
    assert [e.n for e in s.other] == [4, 7, 10]
    assert [e.n for e in s.failed] == [5, 9]

    lo, hi = y_limits(s, "min")
    assert lo < 0.980 and 1.002 < hi < 1.1, "kept points and baseline are in range; the 5.0 outlier is not"
    lo, hi = y_limits(s, "max")
    assert lo < 0.980 and hi < 1.1


def test_only_the_largest_steps_are_labelled_on_a_long_run(tmp_path):
    exps = _experiments(tmp_path)
    s = progress_series(exps)
    assert [e.n for e in label_rows(s, "min")] == [3, 6, 8]
    # limit 2: the forced keep always, then the larger of the two steps (#3: 1.001 -> 0.990)
    assert [e.n for e in label_rows(s, "min", limit=2)] == [3, 8]


def test_a_session_with_nothing_measured_yet_still_reports(tmp_path):
    ws = tmp_path / "ws"
    fill_journal(ws, make_repo(ws), rows=[(1, "baseline", "crash", None, None, None, None)])
    paths = write_report(ws)
    assert paths.png.read_bytes()[:8] == PNG_SIGNATURE
    text = paths.markdown.read_text()
    assert "no measured result yet" in text and "| **total** | 0 |" in text


def test_running_best_without_measurements_is_empty():
    assert running_best([]) == []
    assert y_limits(progress_series([]), "min") is None


# ---- the command ----

def test_report_writes_a_chart_and_a_summary(tmp_path):
    ws = tmp_path / "ws"
    base = make_repo(ws)
    fill_journal(ws, base)
    r = cli("report", "--workspace", ws)
    assert r.returncode == 0, r.stderr
    png, md = ws / ".cockpit" / "report" / "progress.png", ws / ".cockpit" / "report" / "report.md"
    assert r.stdout.split() == [str(png), str(md)]

    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.shape[1] > 600 and img.shape[0] > 300

    text = md.read_text()
    assert "# cockpit report: t1" in text
    assert "`cockpit/t1`" in text and "tuner" in text
    assert "0.985000" in text, "the session's best"
    assert "1.001000" in text, "the baseline mean"
    assert "0.016000 better (1.60%) than the baseline" in text, "improvement vs baseline, absolute and relative, in words"
    assert "0.001414" in text, "the noise"
    assert "double the learning rate" in text
    assert "rotary embeddings \\| base 10000" in text, "a pipe in a description is escaped in the tables"
    assert "wider MLP, kept by the human" in text
    for status, count in (("keep", 2), ("discard", 3), ("crash", 1), ("timeout", 1), ("forced", 1)):
        assert f"| {status} | {count} |" in text
    assert "| **total** | 8 |" in text
    assert "$0.40" in text, "total cost"
    assert "![progress](progress.png)" in text
    assert "`08abab" in text, "best commit, short"
    assert "best kept measurement: 0.980000" in text, "a force-keep moved the branch off the best measurement"
    # 8 finished experiments from the first start to the last finish (9 * 360 + 330 s)
    assert f"{8 / ((9 * 360 + 330) / 3600):.1f}" in text
    assert _git(ws, "status", "--porcelain") == "", "the workspace tree is untouched"


def test_report_with_tag_out_and_a_maximised_metric(tmp_path):
    ws = tmp_path / "ws"
    base = make_repo(ws, '[target]\nkind = "command"\nrun = "true"\nmeasure = "true"\nmetric = "score"\ndirection = "max"\n')
    # a higher-is-better metric: mirror the rows so that keeps go up
    rows = [(n, k, s, None if m is None else 2.0 - m, d, c, desc) for n, k, s, m, d, c, desc in ROWS]
    fill_journal(ws, base, tag="first", rows=rows)
    fill_journal(ws, base, tag="second", rows=rows[:3])
    out = tmp_path / "out"
    paths = write_report(ws, "first", out)
    assert paths.png == out / "progress.png" and paths.png.read_bytes()[:8] == PNG_SIGNATURE
    text = paths.markdown.read_text()
    assert "# cockpit report: first" in text
    assert "| # | commit | score | delta |" in text
    assert "1.015000" in text and "0.016000 better" in text


@pytest.mark.parametrize("case", ["not-a-dir", "not-git", "no-journal", "unknown-tag", "out-is-file", "broken-journal"])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, case):
    ws = tmp_path / "ws"
    args = ["report", "--workspace", ws]
    if case == "not-a-dir":
        args[2] = tmp_path / "missing"
    elif case == "not-git":
        ws.mkdir()
    else:
        base = make_repo(ws)
        if case == "unknown-tag":
            fill_journal(ws, base)
            args += ["--tag", "nope"]
        elif case == "out-is-file":
            fill_journal(ws, base)
            (tmp_path / "afile").write_text("x")
            args += ["--out", tmp_path / "afile"]
        elif case == "broken-journal":
            (ws / ".cockpit").mkdir()
            (ws / ".cockpit" / "journal.sqlite").write_bytes(b"this is not a database" * 100)

    def snapshot():
        return sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*"))

    before = snapshot()
    r = cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cockpit: error: "), r.stderr
    assert r.stdout == ""
    assert snapshot() == before, "nothing is written on bad input"
    if case == "unknown-tag":
        assert "'nope'" in lines[0] and "t1" in lines[0]


def test_write_report_raises_harness_error_for_an_unknown_tag(tmp_path):
    ws = tmp_path / "ws"
    fill_journal(ws, make_repo(ws))
    with pytest.raises(HarnessError, match="no session 'x'"):
        write_report(ws, "x")


def test_importing_the_report_modules_loads_neither_matplotlib_nor_textual():
    code = "import sys, engine.report, cockpit.report_render; bad = [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'textual')]; print(bad)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("holdouts,carried", [
    ({1: 1.100, 2: 1.102, 3: 1.089, 6: 1.080, 8: 1.085}, True),   # the holdout gains as much as validation
    ({1: 1.100, 2: 1.102, 3: 1.101, 6: 1.099, 8: 1.104}, False),  # validation gained 0.016, the holdout nothing
])
def test_the_report_sets_the_holdout_gain_beside_the_validation_gain_and_flags_overfitting(tmp_path, holdouts, carried):
    from engine.report import holdout_check

    ws = tmp_path / "ws"
    base = make_repo(ws)
    fill_journal(ws, base)
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.latest_session()
    for n, h in holdouts.items():
        j.update_experiment(s.id, n, holdout=h)
    hc = holdout_check(j.experiments(s.id), s.best_n)
    j.close()
    assert hc.val_gain == pytest.approx(1.001 - 0.985)
    assert hc.holdout_gain == pytest.approx(1.101 - holdouts[8])
    assert hc.carried is carried
    r = cli("report", "--workspace", ws)
    assert r.returncode == 0, r.stderr
    text = (ws / ".cockpit" / "report" / "report.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("- holdout"))
    assert "validation 0.016000 better" in line and f"holdout {abs(hc.holdout_gain):.6f} " in line
    assert ("may be overfitting" in line) is (not carried)
    assert f"| {holdouts[6]:.6f} |" in text, "each kept row's holdout in the table"


def test_a_report_without_holdout_figures_says_why(tmp_path):
    ws = tmp_path / "ws"
    base = make_repo(ws)
    fill_journal(ws, base)
    assert cli("report", "--workspace", ws).returncode == 0
    assert "- holdout: - (no holdout figures" in (ws / ".cockpit" / "report" / "report.md").read_text()


def test_the_running_best_steps_only_at_keeps_and_force_keeps(tmp_path):
    """A second baseline far worse than the first, and a force-kept worse experiment: the line
    starts at the baselines' mean, a keep improves it, the force-keep sets it (worse: the engine's
    best is what the human forced), for a lower- and a higher-is-better metric alike."""
    rows = [(1, "baseline", "keep", 2.287, None, None, "baseline 1/2"), (2, "baseline", "keep", 2.939, None, None, "baseline 2/2"),
            (3, "experiment", "keep", 2.50, -0.11, 3.0, "a"), (4, "experiment", "forced", 2.70, 0.2, -3.0, "b"),
            (5, "experiment", "keep", 2.40, -0.1, 3.0, "c")]
    ws = tmp_path / "ws"
    fill_journal(ws, make_repo(ws), rows=rows)
    exps = Journal(ws / ".cockpit" / "journal.sqlite").experiments(1)
    for direction in ("min", "max"):
        assert [v for _, v in running_best(exps, direction)] == pytest.approx([2.613, 2.613, 2.50, 2.70, 2.40])


def test_report_md_never_cuts_a_reason(tmp_path):
    long = "the training process was killed by SIGKILL (out of memory?) " + "and then some more words " * 12 + "END"
    rows = [(1, "baseline", "keep", 1.0, None, None, "baseline 1/1"), (2, "experiment", "crash", None, None, None, "x")]
    ws = tmp_path / "ws"
    fill_journal(ws, make_repo(ws), rows=rows)
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    j.update_experiment(1, 2, reason=long)
    j.close()
    assert cli("report", "--workspace", ws).returncode == 0
    assert long in (ws / ".cockpit" / "report" / "report.md").read_text()


def test_the_legend_names_only_what_the_chart_shows(tmp_path):
    exps = _experiments(tmp_path)
    assert legend_keys(progress_series(exps)) == {"kept", "forced", "baseline", "other", "failed"}
    no_force = [e for e in exps if e.status != "forced" and e.status not in ("crash", "timeout")]
    assert legend_keys(progress_series(no_force)) == {"kept", "baseline", "other"}
