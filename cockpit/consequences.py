"""What a dialog says will happen (quit, veto, force-keep), and why a force-keep cannot be done:
pure functions of what the session holds, so each wording is a table test. No Textual here."""

from __future__ import annotations


def _runs(ns: list[int]) -> str:
    return ", ".join(f"#{n}" for n in ns)


# ---- quit ----

def quit_consequences(running: list[int], forced: list[int]) -> str:
    """The quit dialog's text: what "after this run" and "now" each do to the runs in flight and
    to a force-keep still pending."""
    head = "Stop the session? `cockpit` resumes it later."
    if not running:
        pending = [n for n in forced if n is not None]
        if pending:
            return f"{head} Nothing runs; the pending force-keep of {_runs(pending)} is applied first either way."
        return f"{head} Nothing runs: nothing is lost either way."
    runs = _runs(running)
    kept = [n for n in forced if n in running]
    verb = "finishes" if len(running) == 1 else "finish"
    after = f"After this run: {runs} {verb} and {'is' if len(running) == 1 else 'are'} recorded"
    after += f" ({_runs(kept)} force-kept)." if kept else "."
    now = f"Now: {runs} {'is' if len(running) == 1 else 'are'} stopped and recorded `interrupted` (the result is lost)"
    now += f"; the force-keep of {_runs(kept)} is dropped." if kept else "."
    return f"{head}\n{after}\n{now}"


# ---- veto ----

def veto_consequences(n: int, running: bool) -> str:
    """The veto dialog's text: a running experiment is killed; one that waits (at the review
    gate, or queued) never runs."""
    if running:
        return f"Veto experiment #{n}? Its training is killed and the code reset to the best."
    return f"Veto experiment #{n}? It has not run: it is dropped and never runs."


# ---- force-keep ----

def force_keep_consequences(n: int, *, metric: float | None, best: float | None, best_n: int | None,
                            direction: str, noise: float | None, metric_name: str = "val_bpb") -> str:
    """The force-keep dialog's text: how far the experiment is from the best (in the session's
    noise when it is known), and that the branch moves. `metric` None: the experiment still runs."""
    if metric is None:
        return (f"Force-keep #{n}? It is kept when it finishes, whatever its result: it becomes the best "
                f"and the session branch moves to its commit.")
    if best is None:
        return f"Force-keep #{n}? It becomes the best ({metric_name} {metric:.6f}) and the session branch moves to its commit."
    gap = metric - best
    worse = gap > 0 if direction == "min" else gap < 0
    than = f"the best (#{best_n})" if best_n is not None else "the best"
    if gap == 0:
        where = f"#{n} equals {than}"
    else:
        sigma = f" ({abs(gap) / noise:.1f}σ)" if noise else ""
        where = f"#{n} is {abs(gap):.4g} {'worse' if worse else 'better'} than {than}{sigma}"
    return f"{where}; force-keep makes it the best and moves the session branch to its commit. Force-keep #{n}?"
