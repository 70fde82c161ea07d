"""The session's best: its code (`best_commit`), the metric it measured (`best_metric`), the
experiment that measured it (`best_n`) and the noise of repeated runs of it (`noise`; None: to be
measured again). `Best` is the only writer of these four fields of the journal's session row
(tests/test_parts.py reads the engine's source to hold that); the parts that change the best
(Baselines, Ledger, SessionBranch) say what happened, and Best writes it."""

from __future__ import annotations

from ..store.journal import Journal

FIELDS = ("best_commit", "best_metric", "best_n", "noise")


class Best:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def measured(self, session_id: int, metric: float, noise: float, n: int) -> None:
        """The baselines of the best code measured it: their mean, their spread, the last of them."""
        self.journal.update_session(session_id, best_metric=metric, noise=noise, best_n=n)

    def kept(self, session_id: int, n: int, commit: str | None, metric: float | None) -> None:
        """Experiment n (kept, confirmed or force-kept) is the new best."""
        self.journal.update_session(session_id, best_n=n, best_commit=commit, best_metric=metric)

    def moved(self, session_id: int, commit: str, code_changed: bool = False) -> None:
        """The best code is now at `commit` (the human's commit or program.md edit); a changed code
        is measured again."""
        self.journal.update_session(session_id, best_commit=commit, **({"noise": None} if code_changed else {}))

    def remeasure(self, session_id: int) -> None:
        """The measure changed (the harness, the budget, the target): the best code is measured again."""
        self.journal.update_session(session_id, noise=None)
