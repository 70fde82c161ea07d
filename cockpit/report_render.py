"""`cockpit report`: a progress chart (progress.png) and a markdown summary (report.md) of one
session, read through the session's read-only view (engine/store/view.py) and summarised by the
engine's analysis (engine/report.py: summarize; engine/analysis.py: the series the TUI's plot
draws too). Read-only towards the workspace: nothing is written anywhere but the output folder,
and nothing at all when the input is bad.

matplotlib is imported lazily, inside render_progress, and drawn through the Agg canvas directly
(no pyplot, no global backend switch), so importing this module costs nothing and it is safe to
call from a worker thread of the TUI.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from engine import analysis
from engine.analysis import FINAL, KEPT, ProgressSeries, holdout_check, measured, never_ran, progress_series, versus, y_limits
from engine.report import Summary, summarize
from engine.store.view import Experiment, SessionView
from harness.errors import HarnessError

DESC_CHARS = 40
MAX_LABELS = 30  # more descriptions than this on one chart is ink, not information


# ---- what the chart labels (pure; unit-tested) ----

def label_rows(s: ProgressSeries, direction: str = "min", limit: int = MAX_LABELS) -> list[Experiment]:
    """The kept experiments whose description is written on the chart: all of them up to `limit`,
    else the `limit` largest steps of the running best (force-keeps always: a human decided them)."""
    rows = [e for e in s.kept if e.kind != "baseline"]
    if len(rows) <= limit:
        return rows
    prev: dict[int, float] = {}
    last = None
    for n, v in s.best:
        prev[n] = v if last is None else last
        last = v
    sign = 1.0 if direction == "min" else -1.0
    forced = [e for e in rows if e.status == "forced"]
    keeps = sorted((e for e in rows if e.status != "forced"), key=lambda e: sign * (prev[e.n] - e.metric), reverse=True)
    chosen = {e.n for e in forced[:limit]} | {e.n for e in keeps[: max(0, limit - len(forced))]}
    return [e for e in rows if e.n in chosen]


def _short(text: str | None, n: int = DESC_CHARS) -> str:
    t = " ".join((text or "").split())
    return t if len(t) <= n else t[: n - 1].rstrip() + "…"


# ---- the chart ----

def legend_keys(s: ProgressSeries) -> set[str]:
    """What the chart shows, so the legend names only that."""
    return {k for k, on in (
        ("kept", any(e.kind != "baseline" and e.status == "keep" for e in s.kept)),
        ("forced", any(e.kind != "baseline" and e.status == "forced" for e in s.kept)),
        ("baseline", any(e.kind == "baseline" for e in s.kept)),
        ("other", bool(s.other)),
        ("failed", bool(s.failed)),
    ) if on}


def render_progress(path: Path, s: ProgressSeries, title: str, metric_name: str = "val_bpb", direction: str = "min") -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise HarnessError("cockpit report needs matplotlib: pip install 'matplotlib>=3.7'") from None

    fig = Figure(figsize=(14, 7), dpi=110)
    FigureCanvasAgg(fig)  # the Agg backend, for this figure only
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlabel("experiment #")
    ax.set_ylabel(f"{metric_name} ({'lower' if direction == 'min' else 'higher'} is better)")
    ax.set_title(title, fontsize=11, parse_math=False)
    ax.grid(True, alpha=0.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    lims = y_limits(s, direction)
    all_n = [e.n for e in s.kept + s.other + s.failed]
    if all_n:
        ax.set_xlim(min(all_n) - 1, max(all_n) + max(2, 0.08 * (max(all_n) - min(all_n))))
    if lims is None:
        ax.text(0.5, 0.5, "no measured experiments yet", transform=ax.transAxes, ha="center", va="center",
                color="grey", parse_math=False)
    else:
        lo, hi = lims
        head = 0.06 * (hi - lo)  # room at the bad edge for failure markers
        if direction == "min":
            ax.set_ylim(lo, hi + head)
            bad_edge, clip_marker = hi + head * 0.5, "^"
        else:
            ax.set_ylim(lo - head, hi)
            bad_edge, clip_marker = lo - head * 0.5, "v"

        def inside(v: float) -> bool:
            return lo <= v <= hi

        # non-kept measured runs: faint grey; outliers pinned to the bad edge as small arrows
        near = [e for e in s.other if inside(e.metric)]
        far = [e for e in s.other if not inside(e.metric)]
        if near:
            ax.scatter([e.n for e in near], [e.metric for e in near], s=18, color="#8a8a8a", alpha=0.55,
                       linewidths=0, zorder=2)
        if far:
            ax.scatter([e.n for e in far], [min(max(e.metric, lo), hi) for e in far], s=22, color="#8a8a8a",
                       alpha=0.7, marker=clip_marker, linewidths=0, zorder=2)
        if s.failed:
            ax.scatter([e.n for e in s.failed], [bad_edge] * len(s.failed), s=22, color="#d62728", marker="x",
                       linewidths=1.2, alpha=0.8, zorder=3)
        if s.baseline is not None:
            ax.axhline(s.baseline, color="#555555", linestyle=":", linewidth=1, zorder=1)
        # the running best: a step line through the kept points
        if s.best:
            xs = [n for n, _ in s.best]
            ys = [v for _, v in s.best]
            last_n = max(all_n + [xs[-1]])
            ax.step(xs + [last_n], ys + [ys[-1]], where="post", color="#2ca02c", linewidth=1.8, zorder=4)
        base_rows = [e for e in s.kept if e.kind == "baseline"]
        keep_rows = [e for e in s.kept if e.kind != "baseline" and e.status == "keep"]
        forced_rows = [e for e in s.kept if e.kind != "baseline" and e.status == "forced"]
        if base_rows:
            ax.scatter([e.n for e in base_rows], [e.metric for e in base_rows], s=30, color="#555555", zorder=5)
        if keep_rows:
            ax.scatter([e.n for e in keep_rows], [e.metric for e in keep_rows], s=36, color="#2ca02c",
                       edgecolors="black", linewidths=0.5, zorder=5)
        if forced_rows:
            ax.scatter([e.n for e in forced_rows], [e.metric for e in forced_rows], s=44, color="#ff7f0e", marker="D",
                       edgecolors="black", linewidths=0.5, zorder=5)
        # labels lean into the empty side of the curve: up for "min" (worse is up), down for "max"
        up = direction == "min"
        labelled = label_rows(s, direction)
        for e in labelled:
            label = _short(e.description) + (" (forced)" if e.status == "forced" else "")
            if inside(e.metric):
                ax.annotate(label, (e.n, e.metric), xytext=(4, 5 if up else -5), textcoords="offset points",
                            rotation=28 if up else -28, rotation_mode="anchor", va="bottom" if up else "top",
                            fontsize=7, color="#1a5e1a" if e.status == "keep" else "#a85200", parse_math=False,
                            annotation_clip=True, clip_on=True, zorder=6)
        if s.hidden:
            ax.text(0.005, 0.995, f"{s.hidden} results under another budget or harness version: not shown",
                    transform=ax.transAxes, ha="left", va="top", fontsize=7, color="grey", parse_math=False)
        n_steps = len(keep_rows) + len(forced_rows)
        if len(labelled) < n_steps:
            ax.text(0.995, 0.005, f"labels: the {len(labelled)} largest of {n_steps} steps", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="grey", parse_math=False)

    present = legend_keys(s)
    handles = [h for key, h in (
        ("kept", Line2D([], [], color="#2ca02c", marker="o", markeredgecolor="black", linewidth=1.8, label="kept (running best)")),
        ("forced", Line2D([], [], color="#ff7f0e", marker="D", linestyle="none", label="force-kept")),
        ("baseline", Line2D([], [], color="#555555", marker="o", linestyle=":", label="baseline runs / mean")),
        ("other", Line2D([], [], color="#9a9a9a", marker="o", alpha=0.5, linestyle="none", label="not kept")),
        ("failed", Line2D([], [], color="#d62728", marker="x", linestyle="none", label="crash / timeout / invalid")),
    ) if key in present]
    # the corner the curve leaves empty: early runs are bad (top left for "min"), later ones good
    if handles:
        ax.legend(handles=handles, loc="upper left" if direction == "max" else "lower left", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():  # a description with glyphs the font lacks is not an error
        warnings.simplefilter("ignore")
        fig.savefig(tmp, format="png")
    tmp.replace(path)


# ---- report.md ----

def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _duration(hours: float | None) -> str:
    if hours is None:
        return "-"
    m = int(round(hours * 60))
    d, rem = divmod(m, 24 * 60)
    h, mm = divmod(rem, 60)
    return (f"{d}d " if d else "") + f"{h}h {mm:02d}m"


def _f(v: float | None, fmt: str = ".6f") -> str:
    return "-" if v is None else format(v, fmt)


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def title_for(sm: Summary) -> str:
    s = sm.session
    n = sm.finished_experiments
    kept = sum(sm.counts.get(k, 0) for k in KEPT)
    t = f"cockpit {s.tag}: {n} experiments, {kept} kept"
    if sm.best is not None:
        t += f"  |  best {sm.metric_name} {sm.best:.6f}"
    if sm.improvement is not None:
        t += f"  ({_versus_baseline(sm)} {sm.baseline:.6f})"
    return t


def _versus_baseline(sm: Summary) -> str:
    """"0.016000 better (1.60%) than the baseline": the one convention (engine/analysis.py: versus)."""
    pct = f" ({abs(sm.improvement_pct):.2f}%)" if sm.improvement_pct is not None and sm.improvement else ""
    return f"{versus(sm.improvement)}{pct} than the baseline"


def render_markdown(sm: Summary, png_name: str = "progress.png") -> str:
    s, m = sm.session, sm.metric_name
    L: list[str] = [f"# cockpit report: {s.tag}", ""]
    L += [
        "| | |", "|---|---|",
        f"| session | `{s.tag}` |",
        f"| branch | `{s.branch}` |",
        f"| base commit | `{(s.base_commit or '')[:7]}` |",
        f"| agent | {_cell(s.agent) or '-'} |",
        f"| target | {_cell(s.target) or '-'} ({m}, {'lower' if sm.direction == 'min' else 'higher'} is better) |",
        f"| status | {s.status}" + (f" ({_cell(s.stop_reason)})" if s.stop_reason else "") + " |",
        f"| started | {_when(sm.first)} |",
        f"| last activity | {_when(sm.last)} |",
        f"| duration | {_duration(sm.hours)} |",
        f"| experiments | {sm.finished_experiments} finished (+{sm.n_baselines} baseline runs"
        + (f"; {sm.never_ran} more never ran: the session stopped, or the human vetoed them, first" if sm.never_ran else "")
        + (f"; {sm.hidden} measured under another budget or harness version, not compared" if sm.hidden else "") + ") |",
        f"| experiments per hour | {_f(sm.per_hour, '.1f')} |",
        f"| cost | ${sm.cost:.2f} |",
        f"| tokens | {sm.tokens['tokens_in']:,} in, {sm.tokens['tokens_out']:,} out, "
        f"{sm.tokens['cache_read']:,} cache read, {sm.tokens['cache_write']:,} cache write |",
        "",
        "## Result", "",
    ]
    st = sm.standing
    L.append(f"- baseline {m}: **{_f(sm.baseline)}** (mean of {st.base.runs} baseline runs), noise {_f(s.noise)}")
    if sm.best is not None and st.is_baseline:
        L.append(f"- best {m}: **{sm.best:.6f}**, the baseline (nothing kept over it yet)")
    elif sm.best is not None:
        L.append(f"- best {m}: **{sm.best:.6f}** at `{(s.best_commit or '')[:7]}` (#{s.best_n})")
    elif st.measuring and s.best_metric is not None:
        L.append(f"- best {m}: - (a new baseline is measured under the current budget and harness; earlier results "
                 "are not compared)")
    else:
        L.append(f"- best {m}: - (no measured result yet)")
    shown = {e.n for e in analysis.comparable(sm.experiments, s.harness)}
    kept_exp = [e for e in sm.experiments if e.kind == "experiment" and (e.status in KEPT and measured(e)) and e.n in shown]
    if kept_exp and sm.best is not None:
        top = (min if sm.direction == "min" else max)(kept_exp, key=lambda e: e.metric)
        if top.metric != sm.best and analysis.gain(top.metric, sm.best, sm.direction) > 0:
            L.append(f"- best kept measurement: {top.metric:.6f} at `{(top.commit_sha or '')[:7]}` (#{top.n}); "
                     "the branch moved on from it by a force-keep")
    if sm.improvement is not None and not st.is_baseline:
        L.append(f"- vs baseline: **{_versus_baseline(sm)}**"
                 + (f", {abs(sm.improvement) / s.noise:.1f}x the noise" if s.noise else ""))
    hc = holdout_check(sm.experiments, s.best_n, sm.direction, s.harness)
    if hc.line(m):
        L.append(f"- holdout (a split the agent never sees): {hc.line(m)}"
                 + (" **(check this)**" if hc.carried is False else ""))
    else:
        L.append("- holdout: - (no holdout figures: data prepared before the holdout split; `cockpit prepare --force`)")
    L += ["", "### Counts by status", "", "| status | experiments |", "|---|---:|"]
    for k in sorted(sm.counts, key=lambda k: (FINAL.index(k) if k in FINAL else len(FINAL), k)):
        L.append(f"| {k} | {sm.counts[k]} |")
    L.append(f"| **total** | {sum(sm.counts.values())} |")
    L += ["", f"![progress]({png_name})", ""]

    kept = [e for e in sm.experiments if e.kind == "experiment" and e.status in KEPT]
    L += ["## Kept improvements", ""]
    if kept:
        L += [f"| # | commit | {m} | delta | confidence | holdout | description |", "|---:|---|---:|---:|---:|---:|---|"]
        for e in kept:
            conf = "-" if e.confidence is None else f"{e.confidence:.1f}σ"
            forced = (" *(forced)*" if e.status == "forced" else "") + ("" if e.n in shown else " (another budget or harness)")
            L.append(f"| {e.n} | `{(e.commit_sha or '')[:7]}` | {_f(e.metric)} | {_f(e.delta, '+.6f')} | {conf} | "
                     f"{_f(e.holdout)} | {_cell(e.description)}{forced} |")
    else:
        L.append("None yet.")
    L += ["", "## All experiments", "",
          f"| # | kind | commit | status | {m} | delta | train s | cost | description | reason |",
          "|---:|---|---|---|---:|---:|---:|---:|---|---|"]
    for e in sm.experiments:
        if never_ran(e):
            continue
        other = "" if e.n in shown else " (another budget or harness)"
        L.append(f"| {e.n} | {e.kind} | `{(e.commit_sha or e.parent_commit or '')[:7]}` | {e.status}{other} | {_f(e.metric)} | "
                 f"{_f(e.delta, '+.6f')} | {_f(e.training_seconds, '.0f')} | ${e.cost_usd or 0:.2f} | "
                 f"{_cell(e.description)} | {_cell(e.reason)} |")
    L += ["", f"*generated by `cockpit report` at {_when(time.time())}*", ""]
    return "\n".join(L)


# ---- entry point ----

@dataclass(frozen=True)
class ReportPaths:
    png: Path
    markdown: Path


def load_session(workspace: str | Path, tag: str | None = None) -> tuple[SessionView, list[Experiment]]:
    """The session `tag` (default: the latest) of the workspace, read through its read-only view;
    bad input is one HarnessError line."""
    view = SessionView.open(workspace, tag)
    try:
        return view, view.history()
    finally:
        view.close()


def write_report(workspace: str | Path = ".", tag: str | None = None, out: str | Path | None = None) -> ReportPaths:
    """Write progress.png and report.md for the session `tag` (default: the latest) into `out`
    (default: <workspace>/.cockpit/report/). Bad input raises HarnessError before anything is written."""
    view, exps = load_session(workspace, tag)
    session = view.session()
    view.close()
    out_dir = Path(out).expanduser().resolve() if out else view.state / "report"
    if out_dir.exists() and not out_dir.is_dir():
        raise HarnessError(f"--out {out_dir} exists and is not a folder")
    metric, direction = view.config.target.metric, view.config.target.direction
    sm = summarize(session, exps, metric, direction)
    series = progress_series(exps, direction, session.harness, (session.best_n, session.best_metric))
    try:
        import matplotlib  # noqa: F401  (checked before the output folder is made)
    except ImportError:
        raise HarnessError("cockpit report needs matplotlib: pip install 'matplotlib>=3.7'") from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HarnessError(f"cannot create {out_dir}: {e.strerror or e}") from None
    paths = ReportPaths(out_dir / "progress.png", out_dir / "report.md")
    render_progress(paths.png, series, title_for(sm), metric, direction)
    tmp = paths.markdown.with_name(paths.markdown.name + ".tmp")
    tmp.write_text(render_markdown(sm, paths.png.name), encoding="utf-8")
    tmp.replace(paths.markdown)
    return paths
