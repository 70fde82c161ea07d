"""The research loop: propose -> validate -> commit -> run -> decide -> record, one run at a time.

The engine owns the journal, the git branch and the target; agents only edit files through
Tools, in their own worktree (.cockpit/agent), where the next proposal is prepared while a run
trains (pipelining; see _start_next and _take). Every state change is an event; every key the UI offers is a Control command. Records are
written before the tree moves, so a kill -9 at any instant resumes cleanly: the unfinished
experiment becomes `interrupted`, the tree returns to the best commit, numbering continues.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError

from . import events as ev
from .agents.base import AgentFatal, Context, PastExperiment, ProposalRejected, ProposalSkipped
from .control import Control
from .decide import decide, noise_of
from .git import GitError
from .journal import CURVE_POINTS, KEPT, Journal, Session, thin, write_results_tsv
from .merge import merge3
from .tools import Tools
from .workspace import Workspace

MAX_AGENT_FAILURES = 20  # consecutive agent failures (with back-off between them) before the session stops
BASELINE_TIMING_RETRIES = 3  # a baseline run that broke a timing rule is run again this often (a busy machine)
NOISY_SHARE = 0.02  # a keep threshold above this share of the metric is said at once
ABANDON_WAIT = 10.0  # seconds a stopping session waits for an abandoned proposal before leaving it to finish alone
HISTORY_DIFFS = 10  # the most recent experiments whose diffs go into the agent's context
DIFF_CHARS = 4000


@dataclass(frozen=True)
class Limits:
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost: float | None = None
    max_consecutive_crashes: int = 5


class Engine:
    def __init__(self, ws: Workspace, agent, target, control: Control | None = None, tag: str | None = None,
                 limits: Limits = Limits(), journal: Journal | None = None):
        self.ws, self.agent, self.target = ws, agent, target
        self.control = control or Control()
        self.tag = tag
        self.limits = limits
        self.journal = journal or Journal(ws.journal_path)
        self.git = ws.git
        self.dcfg = ws.config.decision
        self.editable = list(ws.config.target.editable)
        self.human_files = ("program.md",)  # the human edits these mid-run; resets never touch them
        self._subscribers: list[Callable[[ev.Event], None]] = []
        self.session: Session | None = None
        self._started = time.monotonic()
        self._ran = 0
        self._crashes = 0
        self._stop_reason: str | None = None
        self._agent_failures = 0
        if hasattr(agent, "interrupt"):
            agent.interrupt = self.control.stopping  # stop-now reaches an agent waiting on the API
        self.pipeline = ws.config.pipeline
        self.wt = None  # the agent's working tree (a git worktree under .cockpit/)
        self._pending: _Attempt | None = None  # the next experiment, proposed while one trains
        self.error: str | None = None  # set when the session stopped on an error, not a limit
        self.harness: str | None = None  # the target's harness version (set at start)
        self._head: str | None = None  # where cockpit last put the session branch (anything else there is the human's)
        self._fatal: AgentFatal | None = None  # the agent can make no more requests: the session stops now

    # ---- events ----
    def subscribe(self, fn: Callable[[ev.Event], None]) -> None:
        self._subscribers.append(fn)

    def set_state(self, text: str, n: int | None = None, phase: str | None = None) -> None:
        """The one line that says what the session is doing; journaled (for `cockpit status`)
        and emitted, only when it changes."""
        if text == getattr(self, "_state", None):
            return
        self._state = text
        if self.session is not None:
            try:
                self.journal.update_session(self.session.id, state=text, pid=os.getpid())
            except Exception:  # the state line is a display: never a reason to stop
                traceback.print_exc()
        self.emit(ev.StateChanged(text=text, n=n, phase=phase))

    def emit(self, e: ev.Event) -> None:
        if not e.HIGH_RATE and self.session is not None:
            self.journal.add_event(self.session.id, e.type, e.to_dict())
        for fn in self._subscribers:
            try:
                fn(e)
            except Exception:  # a broken consumer must never stop the loop
                traceback.print_exc()

    # ---- the session ----
    def start(self) -> Session:
        self.git.ensure_clean(allow=(*self.human_files, *self.editable))
        j = self.journal
        s = j.session_by_tag(self.tag) if self.tag else j.latest_session()
        resumed = s is not None
        dirty = [f for f in self.git.changed_files(self.editable) if f in self.editable]
        if dirty:  # the agent edits only its own tree (.cockpit/agent): these edits are the human's
            raise GitError(f"the working tree has uncommitted changes: {', '.join(dirty[:3])}; commit or stash them first")
        if s is None:
            tag = self.tag or time.strftime("%b%d-%H%M").lower()
            base = self.git.head()
            origin = self.git.branch()
            branch = self.git.checkout_session_branch(tag, base)
            s = j.create_session(tag, branch, base, self.agent.name, self.target.label)
            self.harness = self._version()
            j.update_session(s.id, harness=self.harness, origin=origin)
        else:
            for n in j.mark_interrupted(s.id):
                self.emit(ev.Notice(text=f"experiment #{n} was interrupted when cockpit stopped; recorded `interrupted`"))
            self.git.checkout_session_branch(s.tag)
            s = self._take_human_commits(s)
            self.git.reset_hard(s.best_commit, keep=self.human_files)
            self.harness = self._version()  # of the files on the session branch, now checked out
            j.update_session(s.id, status="running", stop_reason=None, agent=self.agent.name)
            self._check_harness_version(j.session(s.id))
            s = j.session(s.id)
        self._head = self.git.head()
        self.session = s
        self.tag = s.tag
        self._agent_tree(s.best_commit)  # an unsubmitted edit left there by a killed cockpit goes
        if hasattr(self.target, "warm_up"):
            try:
                self.target.warm_up()
            except Exception as e:  # only a head start: the first run starts its own process
                self.emit(ev.Notice(text=f"could not start the first run's process early: {e}"))
        if self.git.removed_stale_lock:
            self.emit(ev.Notice(text="removed a stale .git/index.lock left by a git command that was killed"))
        self._sync_human_files()
        self._write_results()
        self.emit(ev.SessionStarted(session_id=s.id, tag=s.tag, branch=s.branch, agent=self.agent.name, resumed=resumed,
                                    best_commit=s.best_commit, best_metric=s.best_metric, next_experiment=j.next_number(s.id)))
        return s

    def _version(self) -> str | None:
        if hasattr(self.target, "rehash"):
            self.target.rehash()  # the locked files as the session branch has them
        return self.target.version() if hasattr(self.target, "version") else None

    def _move(self, sha: str) -> None:
        """Move the session branch and the tree to sha (a commit cockpit made or recorded). What
        the human committed or changed in the tree since cockpit last moved it is never reset
        away: the session stops first, with it kept (the next start takes it into the session)."""
        others = self._check_tree()
        self.git.reset_hard(sha, keep=(*self.human_files, *others))
        self._head = sha

    def _check_tree(self) -> list[str]:
        """Before cockpit moves the branch: stop (keeping it) on the human's commit or edited code;
        the other files the human changed in the tree, to keep across the move."""
        s = self.session
        if self._branch_moved(s):
            raise _Stop(f"a commit was made on {s.branch} while the session ran ({self.git.subject(self.git.head())[:80]}); "
                        "the session stopped so that it is not reset away: run `cockpit` again to go on from it")
        code, others = self._unsaved()
        if code:
            raise _Stop(f"{', '.join(code[:3])} changed in the working tree while the session ran; the session "
                        "stopped so that the change is not reset away: commit it (the session then goes on from it) "
                        "or stash it, and run `cockpit` again")
        return others

    def _branch_moved(self, s) -> bool:
        """The branch is not where cockpit left it: the human committed. Their commit is marked
        (kept reachable) for the next start."""
        head = self.git.head()
        if self._head is None or head == self._head:
            return False
        self.git.mark("human", s.tag, head)
        return True

    def _unsaved(self) -> tuple[list[str], list[str]]:
        """Tracked files the human changed in the tree: (editable ones, others). cockpit's commits
        never change the others (cockpit.toml, notes): they are kept as they are across a reset."""
        dirty = [f for f in self.git.dirty_files() if f not in self.human_files]
        return [f for f in dirty if f in self.editable], [f for f in dirty if f not in self.editable]

    def _take_human_commits(self, s):
        """Commits the human made are never reset away. On the session branch, on top of its best:
        the session goes on from them (measured again as the new baseline when the code changed).
        On the branch the session started from, while nothing has been kept yet (a failed
        baseline, fixed there): the same. Otherwise they are named, with how to use them."""
        head, best = self.git.head(), s.best_commit
        if head != best:
            if not self.git.is_ancestor(best, head):
                raise GitError(f"the session branch {s.branch} no longer holds the session's best commit {best[:7]} "
                               f"(it was reset or rewritten): start a new session from it with `cockpit --tag NEW`, "
                               f"or put it back with `git branch -f {s.branch} {best[:7]}`")
            ours = set(self.git.pinned(s.tag).values()) | self.git.marked("sync", s.tag)
            commits = self.git.commits_between(best, head)
            human = [c for c in commits if c not in ours]
            if human:
                self.git.mark("human", s.tag, head)  # reachable whatever happens next
                what = f"the human committed {len(human)} change(s) on {s.branch} (latest: {self.git.subject(human[-1])[:80]})"
                k = len(commits) - len(human)
                if commits[k:] != human:
                    raise GitError(f"{what}, mixed with commits of this session's experiments; put yours on top of the "
                                   f"best commit ({best[:7]}) with `git rebase`, then run `cockpit` again")
                if k == 0:
                    return self._adopt(s, head, what)
                # On top of an experiment that was not kept (a kill during its run): only the human's
                # commits are taken, re-applied onto the best; that experiment's change is not.
                self.git.reset_hard(best, keep=self.human_files)
                if not self.git.cherry_pick(human):
                    self.git.reset_hard(head, keep=self.human_files)
                    raise GitError(f"{what}, on top of experiment commit {commits[k - 1][:7]}, which was not kept, and they "
                                   f"do not apply to the best code: `git rebase --onto {best[:7]} {commits[k - 1][:7]} "
                                   f"{s.branch}`, then run `cockpit` again")
                return self._adopt(s, self.git.head(), what + ", re-applied onto the best code without the unkept "
                                   "experiment under them")
        tip = self.git.resolve(s.origin) if s.origin else None
        if tip and tip != s.base_commit and self.git.is_ancestor(s.base_commit, tip) and not self.git.is_ancestor(tip, head):
            new = self.git.commits_between(s.base_commit, tip)
            kept = any(e.status in KEPT and e.kind == "experiment" for e in self.journal.experiments(s.id))
            what = f"{s.origin} has {len(new)} new commit(s) since this session started (latest: {self.git.subject(tip)[:80]})"
            if not kept:  # nothing of the session's own to keep: it goes on from there
                return self._adopt(s, tip, what)
            self.emit(ev.Notice(text=f"{what}; they are not in this session: `cockpit --tag NEW` starts a new "
                                     f"session from {s.origin}"))
        return s

    def _same_code(self, a: str, b: str) -> bool:
        """Commits a and b hold the same editable files (a program.md commit changes no code)."""
        return a == b or all(self.git.show(a, f) == self.git.show(b, f) for f in self.editable)

    def _adopt(self, s, sha: str, what: str):
        """The session goes on from the human's commit `sha`; a changed code is measured again."""
        code_changed = not self._same_code(s.best_commit, sha)
        self.journal.update_session(s.id, best_commit=sha, **({"noise": None} if code_changed else {}))
        text = (f"{what}: the session goes on from {sha[:7]}"
                + ("; its code changed, so it is measured again as the new baseline" if code_changed else ""))
        self.journal.add_note(s.id, "human", "commit", text)
        self.emit(ev.Notice(text=text))
        return self.journal.session(s.id)

    def _check_harness_version(self, s) -> None:
        """Results measured by another version of the harness (or of the measure script, or with
        other prepared data) are never compared with new ones: a new version means a new baseline
        of the best code, and the agent is told."""
        if self.harness is None or s.harness == self.harness:
            return
        if s.harness is None:  # a journal from before versions were recorded: its rows are taken as this version
            self.journal.update_session(s.id, harness=self.harness)
            self.journal.set_harness(s.id, self.harness)
            return
        self.journal.update_session(s.id, harness=self.harness, noise=None)
        self.journal.add_note(s.id, "human", "harness", f"the harness changed ({s.harness} -> {self.harness}): results "
                              "before this point were measured by the old one; the best code is measured again")
        self.emit(ev.Notice(text=f"the harness changed since this session's baseline ({s.harness} -> {self.harness}): "
                                 "measuring a new baseline of the best code; earlier results are not compared with new ones"))

    def run(self) -> str:
        """Run until a stop condition; returns the reason. Any failure ends the session with its
        reason recorded, the unfinished experiment `interrupted` and the tree at the best commit."""
        reason = "stopped"
        try:
            if self.session is None:
                self.start()
            if getattr(self.target, "sandboxed", None) is False:  # said at every start, and kept in the journal
                from harness.sandbox import OFF_NOTICE

                self.emit(ev.Alert(text=f"{OFF_NOTICE} ({self.target.sandbox_reason})"))
            if self._baseline_needed():
                self._baseline()
            while True:
                self._apply_past_force_keeps()
                stop = self._stop_condition()
                if stop:
                    reason = stop
                    break
                if self.control.paused:
                    self.set_state("paused")
                self.control.wait_while_paused()
                if self.control.stop_mode:
                    reason = self._stop_condition() or "stopped"
                    break
                self._experiment()
        except _Stop as e:
            reason = str(e)
        except Exception as e:  # integrity failures, git, disk, the database: stop with one clear line
            reason = self.error = str(e) if isinstance(e, HarnessError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, HarnessError):
                traceback.print_exc()
            self.emit(ev.Error(text=reason))
        finally:
            s = self.session
            if s is not None:
                try:
                    self._abandon_pending()
                except Exception:  # best effort: _repair marks what is left `interrupted`
                    traceback.print_exc()
                if self._fatal is not None and self.error is None:  # a proposal ended it as the session stopped anyway
                    reason = self.error = str(self._fatal)
                    self.emit(ev.Error(text=reason))
                if hasattr(self.target, "close"):
                    self.target.close()  # no spare training process outlives the session
                self._repair(s)
                self.journal.update_session(s.id, status="stopped", stop_reason=reason)
                self.set_state(f"stopped: {reason}")
                self._write_results()
                self.emit(ev.SessionStopped(session_id=s.id, reason=reason))
        return reason

    def _repair(self, s) -> None:
        """After a failure mid-experiment: nothing stays `running`, the tree is at the best."""
        try:
            self.journal.mark_interrupted(s.id)
            best = self.journal.session(s.id).best_commit
            if self._branch_moved(s):  # the human's commit: kept for the next start
                return
            code, others = self._unsaved()
            if code:
                return  # the human's edited code: never discarded
            if best and self.git.head() != best:
                self.git.reset_hard(best, keep=(*self.human_files, *others))
        except Exception:  # best effort: the next start repairs what is left
            traceback.print_exc()

    def _stop_condition(self) -> str | None:
        L, s = self.limits, self.session
        if self._stop_reason:
            return self._stop_reason
        by = self.control.stopped_by  # "the human", or e.g. "signal SIGTERM"
        if self.control.stop_mode == "now":
            return f"stopped by {by}" + (" (now)" if by == "the human" else "")
        if self.control.stop_mode == "after_run":
            return f"stopped by {by} (after the run)"
        if L.max_experiments is not None and self._ran >= L.max_experiments:
            return f"reached --max-experiments {L.max_experiments}"
        if L.max_hours is not None and time.monotonic() - self._started >= L.max_hours * 3600:
            return f"reached --max-hours {L.max_hours:g}"
        if L.max_cost is not None and self.journal.total_cost(s.id) >= L.max_cost:
            return f"reached --max-cost ${L.max_cost:g} (spent ${self.journal.total_cost(s.id):.2f})"
        if self._crashes >= L.max_consecutive_crashes:
            return f"{self._crashes} consecutive crashes"
        return None

    # ---- baseline: the unchanged code, run repeatedly to measure the noise ----
    def _baseline_needed(self) -> bool:
        s = self.journal.session(self.session.id)
        return s.noise is None

    def _baseline(self) -> None:
        s = self.session
        done = [e for e in self.journal.experiments(s.id)  # the best code, as measured by this harness
                if e.kind == "baseline" and e.status == "keep" and e.harness == self.harness
                and e.commit_sha and self._same_code(e.commit_sha, s.best_commit)]
        values = [e.metric for e in done]
        if hasattr(self.target, "set_credit"):  # a resumed session keeps its measured allowance
            self.target.set_credit([e.credit for e in done])
        timing_failures = 0
        while len(values) < self.dcfg.baseline_runs:
            if self.control.stop_mode:
                raise _Stop(f"stopped by {self.control.stopped_by} during the baseline")
            n = self.journal.next_number(s.id)
            self.control.begin_run(n)
            self.journal.add_experiment(s.id, n, "baseline", s.base_commit, "running", f"baseline {len(values) + 1}/{self.dcfg.baseline_runs}")
            self.journal.update_experiment(s.id, n, commit_sha=s.best_commit, diff_stat="")
            self.emit(ev.ExperimentProposed(n=n, description=f"baseline {len(values) + 1}/{self.dcfg.baseline_runs}", diff_stat="", kind="baseline"))
            if len(values) == self.dcfg.baseline_runs - 1:
                self._start_next()  # the first proposal is prepared during the last baseline run
            out = self._run(n, s.best_commit, kind="baseline")
            status = "keep" if out.status == "ok" else ("vetoed" if out.status == "cancelled" else out.status)
            reason = out.reason
            if out.status == "cancelled" and self._fatal is not None:
                status, reason = "interrupted", f"the session stopped: {self._fatal}"
            elif out.status == "cancelled" and self.control.peek_veto() is None:  # stop-now: the human's or a signal's
                status, reason = "interrupted", f"stopped by {self.control.stopped_by} during the run"
            e = self.journal.update_experiment(
                s.id, n, status=status, reason=reason, metric=out.metric, training_seconds=out.training_seconds,
                total_seconds=out.total_seconds, memory_gb=out.memory_gb, finished=time.time(), log_path=out.log_path,
                startup_seconds=out.startup_seconds, eval_seconds=out.eval_seconds, holdout=out.holdout, credit=out.credit,
            )
            self.emit(ev.ExperimentFinished(n=n, commit=s.best_commit, status=status, metric=out.metric, delta=None, confidence=None,
                                            best_metric=None, description=e.description, reason=reason, kind="baseline"))
            self._write_results()
            if status == "interrupted" and self._fatal is not None:
                raise self._fatal
            if out.status == "cancelled" and self.control.take_veto() is not None:
                self.emit(ev.Notice(text=f"baseline run #{n} was vetoed; running it again"))
                continue
            if out.status != "ok":
                if self.control.stop_mode:
                    raise _Stop(f"stopped by {self.control.stopped_by} during the baseline")
                if out.timing and timing_failures < BASELINE_TIMING_RETRIES:  # unchanged code: the machine, not the code
                    timing_failures += 1
                    self.emit(ev.Notice(text=f"baseline run #{n} broke a timing rule ({out.reason}); the machine may be "
                                             f"busy: running it again ({timing_failures}/{BASELINE_TIMING_RETRIES})"))
                    continue
                self.error = (f"the baseline run failed ({out.status}: {out.reason}); fix the code and commit it on "
                              f"{s.branch} (or on {s.origin or 'the branch it started from'}), then run `cockpit` "
                              "again; or start a new session from HEAD with `cockpit --tag NEW`")
                raise _Stop(self.error)  # an error, not a limit: the CLI exits non-zero
            values.append(out.metric)  # baselines do not count against --max-experiments
        best = sum(values) / len(values)
        noise = noise_of(values)
        last = max(e.n for e in self.journal.experiments(s.id) if e.kind == "baseline")  # the next may be proposing
        self.journal.update_session(s.id, best_metric=best, noise=noise, best_n=last)
        self.session = self.journal.session(s.id)
        self.emit(ev.Notice(text=f"baseline {self.target.metric_name} {best:.6f} over {len(values)} runs; noise {noise:.6f}"))
        self.emit(ev.BestChanged(n=last, commit=s.best_commit, metric=best))
        threshold = max(self.dcfg.min_delta, self.dcfg.noise_k * noise)
        if best and threshold > NOISY_SHARE * abs(best):
            self.emit(ev.Alert(text=(
                f"the noise is high: repeated runs of the same code differ by {noise:.4g} (std), so a change must beat "
                f"the best by {threshold:.4g} ({100 * threshold / abs(best):.1f}% of {self.target.metric_name}) to be "
                "kept, and small gains never will; use a longer --budget, a quieter machine, or more "
                "[decision] baseline_runs")))

    # ---- one experiment ----
    def _experiment(self) -> None:
        s = self.session = self.journal.session(self.session.id)
        j = self.journal
        if self._sync_human_files():
            s = self.session
        a, self._pending = self._pending, None
        if a is None:
            n = j.next_number(s.id)
            self.control.begin_run(n)
            self._new_row(n, s.best_commit)
            self.set_state(f"proposing #{n}", n=n)
            a = self._propose(n, s.best_commit, background=False)
        else:
            n = a.n
            if not a.done:
                self.set_state(f"proposing #{n}", n=n)
            # The human rewrote the instructions while this proposal was prepared: ask again under them.
            stale = a.base != s.best_commit and self._program_changed_since(a.base)
            if stale:
                a.cancel.set()
            self._await(a)
            self.control.begin_run(n)
            if stale:
                self._record_usage(n, a.usage)
                self._save_notes(a.tools)
                if a.failure is not None and a.failure is self._fatal:
                    self._fatal = None  # that answer is thrown away with its proposal; the new one will tell
                a = self._ask_again(_AskAgain(f"program.md changed while #{n} was prepared; asking the agent again"), n)
        self._ran += 1
        sha = self._take(a)
        if isinstance(sha, _AskAgain):  # made before the last result was known: ask again, now knowing it
            sha = self._take(self._ask_again(sha, n))
        if sha is None or isinstance(sha, _AskAgain):
            return
        if self.control.review:
            self.emit(ev.AwaitingApproval(n=n))
            self.set_state(f"awaiting approval of #{n}", n=n)
        verdict = self.control.wait_for_approval()
        if verdict != "approved":
            reason = self.control.take_veto() if verdict == "vetoed" else "stopped before the run"
            self._finish(n, "vetoed" if verdict == "vetoed" else "interrupted", reason, sha=sha)
            return
        self._start_next()  # the agent prepares the next experiment while this one trains
        out = self._run(n, sha)
        if out.status == "cancelled" and self._fatal is not None:
            self._finish(n, "interrupted", f"the session stopped: {self._fatal}", sha=sha, out=out)
            raise self._fatal
        veto = self.control.take_veto()
        if veto is not None:
            self._finish(n, "vetoed", veto, sha=sha, out=out)
            return
        if out.status == "cancelled":  # stop-now: by the human, or by a signal (SIGTERM, SIGHUP)
            self._finish(n, "interrupted", f"stopped by {self.control.stopped_by} during the run", sha=sha, out=out)
            return
        if out.status != "ok":
            self._finish(n, out.status, out.reason, sha=sha, out=out)
            return
        d = decide(out.metric, s.best_metric, s.noise or 0.0, self.dcfg.min_delta, self.dcfg.noise_k, self.target.direction)
        forced = self.control.take_force(n)
        status = "keep" if d.keep else ("forced" if forced else "discard")
        reason = None if d.keep else f"improvement {d.improvement:+.6f} not above the threshold {d.threshold:.6f}"
        self._finish(n, status, reason, sha=sha, out=out, decision=d)

    # ---- proposals: the agent works in its own tree, in the background while a run trains ----
    def _new_row(self, n: int, base: str) -> None:
        self.journal.add_experiment(self.session.id, n, "experiment", base, "proposing")
        if self.control.take_instructions_changed():
            self.journal.add_note(self.session.id, "human", "instructions", "program.md was changed by the human; re-read it")

    def _agent_tree(self, base: str):
        """The agent's working tree (.cockpit/agent), clean at `base`."""
        if self.wt is not None:
            try:
                self.wt.reset_hard(base)
                self.wt.g.clean("-fdq")
                return self.wt
            except Exception:  # a broken tree is made again
                traceback.print_exc()
        self.wt = self.git.agent_worktree(self.ws.state / "agent", base)
        return self.wt

    def _propose(self, n: int, base: str, background: bool) -> "_Attempt":
        """Ask the agent for experiment n against `base`, now or in a background thread."""
        wt = self._agent_tree(base)
        tools = Tools(wt.root, self.editable)
        ctx = self._context(n)
        a = _Attempt(n, base, tools, threading.Event())
        if hasattr(self.agent, "interrupt"):
            self.agent.interrupt = _AnyOf(self.control.stopping, a.cancel)

        def work() -> None:
            t0 = time.monotonic()
            try:
                a.proposal = self.agent.propose(ctx, tools, self.emit)
            except Exception as e:  # handled by the loop when the proposal is taken
                a.failure = e
                if isinstance(e, AgentFatal) and background:  # nothing more can be proposed: end the run now
                    self._fatal = e
                    self.control.cancel_run.set()
            a.seconds = time.monotonic() - t0
            a.usage = getattr(self.agent, "last_usage", None)
            with a.lock:
                a.done = True
                late = a.late
            if late:  # abandoned while it still ran: what it cost is still recorded
                try:
                    self._record_usage(a.n, a.usage)
                    self._save_notes(tools)
                except Exception:  # the journal may be closed by now
                    traceback.print_exc()

        if background:
            a.thread = threading.Thread(target=work, name=f"cockpit-propose-{n}", daemon=True)
            a.thread.start()
        else:
            work()
        return a

    def _start_next(self) -> None:
        """While the run about to start trains, the agent prepares the next experiment against the
        current best (the run's parent). Not when a limit or a stop would end the session first."""
        L = self.limits
        if (not self.pipeline or self._pending is not None or self._agent_failures or self.control.stop_mode
                or self.control.paused or self._stop_condition()
                or (L.max_experiments is not None and self._ran >= L.max_experiments)):
            return
        s = self.session
        m = self.journal.next_number(s.id)
        self._new_row(m, s.best_commit)
        self._pending = self._propose(m, s.best_commit, background=True)

    def _ask_again(self, why: "_AskAgain", n: int) -> "_Attempt":
        self.emit(ev.Notice(text=why.why))
        return self._propose(n, self.session.best_commit, background=False)

    def _program_changed_since(self, base: str) -> bool:
        return any(self.git.show(base, f) != self.git.show(self.session.best_commit, f) for f in self.human_files)

    def _await(self, a: "_Attempt") -> None:
        """Wait for a background proposal; the GPU is idle meanwhile, so say so."""
        if a.thread is None or not a.thread.is_alive():
            return
        self.emit(ev.Waiting(reason=f"the GPU is idle: waiting for the agent's proposal #{a.n}", seconds=0.0))
        while a.thread.is_alive():
            if self.control.stop_mode == "now":
                self._pending = a  # abandoned by run()'s cleanup
                raise _Stop(f"stopped by {self.control.stopped_by} (now)")
            a.thread.join(0.2)

    def _abandon_pending(self) -> None:
        a, self._pending = self._pending, None
        if a is None:
            return
        a.cancel.set()
        if a.thread is not None:
            a.thread.join(ABANDON_WAIT)
        with a.lock:
            finished = a.thread is None or a.done
            a.late = not finished
        if finished:
            self._record_usage(a.n, a.usage)
            self._save_notes(a.tools)
        reason = ("prepared while the previous run trained; the session stopped before it ran"
                  if not isinstance(a.failure, AgentFatal) else f"not proposed: {a.failure}")
        self.journal.update_experiment(self.session.id, a.n, status="interrupted", finished=time.time(), reason=reason)
        self.emit(ev.ExperimentFinished(n=a.n, commit="", status="interrupted", metric=None, delta=None, confidence=None,
                                        best_metric=self.session.best_metric, description="(not run)",
                                        reason=reason))

    def _take(self, a: "_Attempt"):
        """Record the agent's answer and land it as the run's commit on the session branch.
        Returns the commit, None when the experiment ended here (recorded), or _AskAgain."""
        s, j, n = self.session, self.journal, a.n
        if a.proposal is not None:
            j.update_experiment(s.id, n, propose_seconds=a.seconds)
        self._record_usage(n, a.usage)
        self._save_notes(a.tools)
        failure = a.failure
        if isinstance(failure, AgentFatal):
            self._finish(n, "interrupted", f"not proposed: {failure}", description="(not proposed)", agent_error=True)
            raise failure
        if isinstance(failure, HarnessError):
            raise failure
        if isinstance(failure, ProposalSkipped):  # the model refused, or its reply did not fit: recorded, not retried
            self._finish(n, "invalid", str(failure), description="(no proposal)")
            return None
        if isinstance(failure, ProposalRejected):  # nothing valid after the agent's own retries: skipped
            self._finish(n, "invalid", f"proposal rejected {failure}", description="(no valid change)")
            return None
        if failure is not None:  # the agent's own failure is recorded, not fatal
            e = failure
            self._finish(n, "crash", f"agent failed: {type(e).__name__}: {e}", description="(agent error)", agent_error=True)
            self._agent_failures += 1
            if self._agent_failures >= MAX_AGENT_FAILURES:
                self.error = f"the agent failed {self._agent_failures} times in a row (last: {type(e).__name__}: {e})"
                raise _Stop(self.error)
            wait = min(600.0, 30.0 * 2 ** (self._agent_failures - 1))
            self.emit(ev.Waiting(reason=f"the agent failed ({type(e).__name__}); next proposal in {wait:.0f}s", seconds=wait))
            self.control.stopping.wait(wait)
            return None
        self._agent_failures = 0
        if a.proposal is None and a.thread is not None:  # it may have counted the run in flight as failed
            return _AskAgain(f"the agent had nothing to propose for #{n} while the previous run trained; asking again")
        if a.proposal is None:
            j.update_experiment(s.id, n, status="discard", reason="the agent had nothing to propose", finished=time.time())
            raise _Stop("the agent has nothing left to propose")
        text = a.proposal.description.strip()
        description = text.splitlines()[0][:200] if text else "(no description)"
        wt = self.wt
        try:
            problem = self._validate(wt)
            if problem:
                self._finish(n, "invalid", problem, description=description, diff_stat=wt.diff_stat("HEAD"))
                return None
            changed = [f for f in wt.changed_files(self.editable) if f not in self.human_files]
            message = f"cockpit {s.tag} #{n}: {description}"
            sha = wt.commit_all(changed, message)
            if a.base != s.best_commit:  # the best moved while the agent worked (a keep, a human edit)
                sha = self._rebase(sha, a.base, s.best_commit, message)
                if sha is None:
                    return _AskAgain(f"#{n}'s change conflicts with the new best #{s.best_n}; asking the agent again")
        except Exception as e:
            if (wt.root / ".git").is_file():
                raise
            self.wt = None  # removed under the agent (a person, a clean-up script): made again next time
            self._finish(n, "crash", f"the agent's tree {wt.root} was removed during the proposal ({type(e).__name__})",
                         description=description, agent_error=True)
            return None
        self.git.pin(s.tag, n, sha)  # first: a commit on the branch is always one cockpit knows
        self._move(sha)
        stat = self.git.diff_stat(s.best_commit, sha)
        j.update_experiment(s.id, n, parent_commit=s.best_commit, commit_sha=sha, diff_stat=stat, description=description,
                            status="running")
        self.emit(ev.DiffUpdated(n=n, diff=self.git.diff(s.best_commit, sha)))
        self.emit(ev.ExperimentProposed(n=n, description=description, diff_stat=stat))
        return sha

    def _rebase(self, sha: str, base: str, best: str, message: str) -> str | None:
        """Re-apply commit `sha` (made on `base`) onto `best` with a 3-way merge of each file it
        changed; None on a conflict."""
        wt = self.wt
        merged = {}
        for f in wt.files_changed(base, sha):
            b, ours, theirs = wt.show(base, f), wt.show(best, f), wt.show(sha, f)  # None: no such file
            if ours == b or ours == theirs:
                merged[f] = theirs
            elif theirs == b:
                merged[f] = ours
            elif None in (b, ours, theirs):  # created or deleted on one side, changed on the other
                return None
            else:
                merged[f] = merge3(b, ours, theirs)
                if merged[f] is None:
                    return None
        wt.reset_hard(best)
        for f, text in merged.items():
            p = wt.root / f
            if text is None:
                p.unlink(missing_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text, encoding="utf-8")
        changed = wt.changed_files(self.editable)
        if not changed:
            return None  # the new best already holds this change: ask again
        if _syntax_error(wt.root, changed):  # a merge that does not compile is a conflict, not an experiment
            return None
        return wt.commit_all(changed, message)

    def _record_usage(self, n: int, u) -> None:
        """Add one proposal's tokens and cost to experiment n (a re-asked proposal costs twice)."""
        if u is None:
            return
        e = self.journal.experiment(self.session.id, n)
        self.journal.update_experiment(self.session.id, n, tokens_in=e.tokens_in + u.input_tokens,
                                       tokens_out=e.tokens_out + u.output_tokens,
                                       cache_write=e.cache_write + u.cache_write_tokens,
                                       cache_read=e.cache_read + u.cache_read_tokens, cost_usd=e.cost_usd + u.cost_usd)

    def _save_notes(self, tools: Tools) -> None:
        for text in tools.notes:
            self.journal.add_note(self.session.id, "agent", "note", text)
        tools.notes.clear()

    def _show(self, number: int) -> str:
        e = self.journal.experiment(self.session.id, number)
        if e is None or not e.log_path:
            return ""
        from harness.runner import log_tail

        tail = log_tail(Path(e.log_path), 30)
        return f"\nlog tail:\n{tail}" if tail else ""

    def _sync_human_files(self) -> bool:
        """Commit the human's edits to program.md on the session branch; the best commit moves
        with them (same code, same metric) and the agent is told."""
        s = self.session
        dirty = [f for f in self.git.dirty_files() if f in self.human_files]
        if not dirty:
            return False
        self._check_tree()
        sha = self.git.commit_all(dirty, f"cockpit {s.tag}: the human updated {', '.join(dirty)}")
        self.git.mark("sync", s.tag, sha)
        self._head = sha
        self.journal.update_session(s.id, best_commit=sha)
        self.journal.add_note(s.id, "human", "instructions", f"the human edited {', '.join(dirty)}; re-read it")
        self.session = self.journal.session(s.id)
        self.emit(ev.Notice(text=f"{', '.join(dirty)} changed: committed at {sha[:7]}; the agent is told"))
        return True

    def _validate(self, tree) -> str | None:
        changed = [f for f in tree.changed_files(self.editable) if f not in self.human_files]
        if not changed:
            return "the proposal changed nothing"
        outside = [f for f in changed if f not in self.editable]
        if outside:
            return f"the proposal changed files outside the editable list: {', '.join(outside[:3])}"
        return _syntax_error(tree.root, changed)

    def _run(self, n: int, sha: str, kind: str = "experiment"):
        self.journal.update_experiment(self.session.id, n, run_started=time.time(), harness=self.harness)
        self.emit(ev.ExperimentStarted(n=n, commit=sha, kind=kind))
        what = "baseline" if kind == "baseline" else "running"
        self.set_state(f"{what} #{n} (startup)", n=n, phase="startup")
        log = self.ws.run_dir(self.session.tag, n) / "run.log"

        curve: list[tuple[float, float]] = []

        def progress(p):
            phase = getattr(p, "phase", None) or "train"
            self.set_state(f"{what} #{n} ({phase})", n=n, phase=phase)
            if phase == "train":
                self.emit(ev.RunProgress(n=n, step=p.step, loss=p.loss, tokens_per_second=p.tokens_per_second, mfu=p.mfu,
                                         fraction=p.fraction, elapsed=p.elapsed))
                if p.loss is not None and p.fraction is not None:
                    curve.append((p.fraction, p.loss))
                    if len(curve) > 4 * CURVE_POINTS:
                        curve[:] = thin(curve)

        try:
            if kind == "baseline":
                return self.target.run(log, self.control.cancel_run, progress, baseline=True)
            return self.target.run(log, self.control.cancel_run, progress)
        finally:
            if curve:
                self.journal.save_curve(self.session.id, n, curve)

    def _finish(self, n, status, reason, description=None, diff_stat=None, sha=None, out=None, decision=None,
                agent_error=False) -> None:
        """Record the outcome, then move the tree: advance on keep/forced, else reset to the best."""
        s, j = self.session, self.journal
        fields = dict(status=status, reason=reason, finished=time.time())
        if description is not None:
            fields["description"] = description
        if diff_stat is not None:
            fields["diff_stat"] = diff_stat
        if out is not None:
            fields.update(metric=out.metric, training_seconds=out.training_seconds, total_seconds=out.total_seconds,
                          memory_gb=out.memory_gb, log_path=out.log_path, startup_seconds=out.startup_seconds,
                          eval_seconds=out.eval_seconds, holdout=out.holdout)
        if decision is not None:
            fields.update(delta=decision.delta, confidence=decision.confidence)
        self.control.take_force(n)  # a force-keep of this experiment ends with it, whatever the outcome
        kept = status in KEPT and out is not None and out.metric is not None
        with j.transaction():
            e = j.update_experiment(s.id, n, **fields)
            if kept:
                j.update_session(s.id, best_n=n, best_commit=sha, best_metric=out.metric)
        if kept:
            self.emit(ev.BestChanged(n=n, commit=sha, metric=out.metric, forced=status == "forced"))
        else:
            self._move(s.best_commit)
        if status == "vetoed":
            j.add_note(s.id, "human", "veto", f"experiment #{n} ({e.description}) was vetoed: {reason}")
        if not agent_error:  # the agent's failures (API outages) have their own counter and back-off
            self._crashes = self._crashes + 1 if status in ("crash", "timeout") else 0
        self.session = j.session(s.id)
        self._write_results()
        self.emit(ev.ExperimentFinished(n=n, commit=sha or "", status=status, metric=e.metric, delta=e.delta,
                                        confidence=e.confidence, best_metric=self.session.best_metric,
                                        description=e.description or "", reason=reason))

    def _apply_past_force_keeps(self) -> None:
        s = self.session
        for n in self.control.take_forced_past():
            e = self.journal.experiment(s.id, n)
            if e is None or e.commit_sha is None or e.metric is None or e.kind != "experiment":
                self.emit(ev.Error(text=f"cannot force-keep #{n}: it has no measured result"))
                continue
            if e.harness != self.harness:
                self.emit(ev.Error(text=f"cannot force-keep #{n}: it was measured by another harness version "
                                        f"({e.harness}, now {self.harness}), so its result cannot be the best's"))
                continue
            self._move(e.commit_sha)
            self.journal.update_experiment(s.id, n, status="forced", reason="force-kept by the human")
            self.journal.update_session(s.id, best_n=n, best_commit=e.commit_sha, best_metric=e.metric)
            self.session = self.journal.session(s.id)
            self._write_results()
            self.emit(ev.BestChanged(n=n, commit=e.commit_sha, metric=e.metric, forced=True))

    # ---- context for the agent: memory lives in the journal ----
    def _context(self, n: int) -> Context:
        s = self.session
        exps = [e for e in self.journal.experiments(s.id) if e.n < n]
        recent = {e.n for e in exps[-HISTORY_DIFFS:]}
        history = []
        for e in exps:
            diff = ""
            if e.n in recent and e.commit_sha and e.parent_commit and e.kind == "experiment":
                diff = self.git.diff(e.parent_commit, e.commit_sha)[:DIFF_CHARS]
            history.append(PastExperiment(e.n, e.status, e.metric, e.delta, e.description or "", diff, e.reason))
        notes = self.journal.notes(s.id)
        files = {}
        for rel in self.editable:
            p = self.wt.root / rel  # the agent's tree, at the best commit
            files[rel] = p.read_text(encoding="utf-8") if p.is_file() else ""
        return Context(
            program=self.ws.program(),
            files=files,
            history=history,
            human_notes=[x["text"] for x in notes if x["author"] == "human"],
            agent_notes=[x["text"] for x in notes if x["author"] == "agent"],
            direction=self.target.direction,
            profile=getattr(self.target, "profile_name", ""),
            seed=s.id,
            n=n,
            metric=self.target.metric_name,
            best_metric=s.best_metric,
            noise=s.noise,
            budget=getattr(getattr(self.target, "profile", None), "time_budget", None) or getattr(self.target, "budget", None),
            show=self._show,
        )

    def _write_results(self) -> None:
        if self.session is not None:
            write_results_tsv(self.ws.results_path, self.journal.experiments(self.session.id), self.target.metric_name)


class _Stop(Exception):
    """Ends the session with a clear reason."""


def _syntax_error(root: Path, files: list[str]) -> str | None:
    """The first Python file among `files` that does not compile, as one line; None if all do."""
    for f in files:
        if f.endswith(".py"):
            try:
                compile((root / f).read_text(encoding="utf-8"), f, "exec")
            except SyntaxError as e:
                return f"{f} does not compile: {e.msg} (line {e.lineno})"
    return None


@dataclass(frozen=True)
class _AskAgain:
    """A proposal made while the previous run trained that must be asked again now that its
    result is known (it conflicts with the new best, or the agent had nothing to propose)."""

    why: str


@dataclass
class _Attempt:
    """One proposal for experiment n, made against the best commit `base`."""

    n: int
    base: str
    tools: Tools
    cancel: threading.Event  # set when the engine no longer needs this proposal
    proposal: object = None
    failure: Exception | None = None
    seconds: float = 0.0
    usage: object = None
    thread: threading.Thread | None = None
    done: bool = False  # the agent returned (or raised)
    late: bool = False  # abandoned before it returned: the thread records its own cost
    lock: threading.Lock = field(default_factory=threading.Lock)


class _AnyOf:
    """An agent's interrupt: set when stop-now is pressed or its proposal is abandoned."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self.events[0].wait(0.1 if left is None else min(0.1, left))
        return True
