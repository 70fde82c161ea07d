"""The session branch and the human's work on it, never lost: what the human committed or edited
while a session ran, and program.md edits. SessionBranch is the only writer of the branch.

cockpit moves the session branch only to commits it made or recorded (a kept experiment, the
human's program.md edits committed for them). A commit the human made on the branch, or code
they edited in the tree, stops the session before anything would reset it away; the next start
goes on from it."""

from __future__ import annotations

import traceback
from collections.abc import Callable

from .. import events as ev
from ..numbers import remeasure_reason
from ..status import KEPT
from ..store.git import GitError, GitRepo
from ..store.journal import Journal, Session
from .best import Best
from .stop import Stop


class SessionBranch:
    """`git` the workspace's repository, `journal` the session's record, `emit` events; `editable`
    the files the agent edits, `human_files` those only the human edits (program.md), never reset.
    `head`: where cockpit last put the branch (anything else there is the human's)."""

    def __init__(self, git: GitRepo, journal: Journal, emit: Callable[[ev.Event], None], editable: list[str],
                 human_files: tuple[str, ...], best: Best):
        self.git, self.journal, self.emit, self.best = git, journal, emit, best
        self.editable, self.human_files = editable, human_files
        self.head: str | None = None

    def move(self, s: Session, sha: str) -> None:
        """Move the session branch and the tree to sha (a commit cockpit made or recorded). What
        the human committed or changed in the tree since cockpit last moved it is never reset
        away: the session stops first, with it kept (the next start takes it into the session)."""
        others = self.check_tree(s)
        self.git.reset_hard(sha, keep=(*self.human_files, *others))
        self.head = sha

    def check_tree(self, s: Session) -> list[str]:
        """Before cockpit moves the branch: stop (keeping it) on the human's commit or edited code;
        the other files the human changed in the tree, to keep across the move."""
        why = self.human_change(s)
        if why:
            raise Stop(why)
        return self.unsaved()[1]

    def human_change(self, s: Session) -> str | None:
        """Why the session must stop before moving the branch: the human committed on it, or
        edited code in the tree; None when neither."""
        if self.branch_moved(s):
            return (f"a commit was made on {s.branch} while the session ran ({self.git.subject(self.git.head())[:80]}); "
                    "the session stopped so that it is not reset away: run `cockpit` again to go on from it")
        code, _others = self.unsaved()
        if code:
            return (f"{', '.join(code[:3])} changed in the working tree while the session ran; the session "
                    "stopped so that the change is not reset away: commit it (the session then goes on from it) "
                    "or stash it, and run `cockpit` again")
        return None

    def branch_moved(self, s: Session) -> bool:
        """The branch is not where cockpit left it: the human committed. Their commit is marked
        (kept reachable) for the next start."""
        head = self.git.head()
        if self.head is None or head == self.head:
            return False
        self.git.mark("human", s.tag, head)
        return True

    def unsaved(self) -> tuple[list[str], list[str]]:
        """Tracked files the human changed in the tree: (editable ones, others). cockpit's commits
        never change the others (cockpit.toml, notes): they are kept as they are across a reset."""
        dirty = [f for f in self.git.dirty_files() if f not in self.human_files]
        return [f for f in dirty if f in self.editable], [f for f in dirty if f not in self.editable]

    def take_human_commits(self, s: Session) -> Session:
        """Commits the human made are never reset away. On the session branch, on top of its best:
        the session goes on from them (measured again as the new baseline when the code changed).
        On the branch the session started from, while nothing has been kept yet (a failed
        baseline, fixed there): the same. Otherwise they are named, with how to use them."""
        head, best = self.git.head(), s.best_commit
        pinned = set(self.git.pinned(s.tag).values())
        if head != best and best in pinned and head in pinned | self.git.marked("sync", s.tag) | {s.base_commit}:
            # a kill between the journal's new best and the branch's move: the branch holds only
            # cockpit's own commits, so it goes where the journal says
            self.git.reset_hard(best, keep=self.human_files)
            self.emit(ev.Notice(text=f"the session branch is moved to the best commit {best[:7]}, which cockpit had "
                                     "recorded but not yet checked out when it stopped"))
            head = best
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
                    return self.adopt(s, head, what)
                # On top of an experiment that was not kept (a kill during its run): only the human's
                # commits are taken, re-applied onto the best; that experiment's change is not.
                self.git.reset_hard(best, keep=self.human_files)
                if not self.git.cherry_pick(human):
                    self.git.reset_hard(head, keep=self.human_files)
                    raise GitError(f"{what}, on top of experiment commit {commits[k - 1][:7]}, which was not kept, and they "
                                   f"do not apply to the best code: `git rebase --onto {best[:7]} {commits[k - 1][:7]} "
                                   f"{s.branch}`, then run `cockpit` again")
                return self.adopt(s, self.git.head(), what + ", re-applied onto the best code without the unkept "
                                   "experiment under them")
        tip = self.git.resolve(s.origin) if s.origin else None
        if tip and tip != s.base_commit and self.git.is_ancestor(s.base_commit, tip) and not self.git.is_ancestor(tip, head):
            new = self.git.commits_between(s.base_commit, tip)
            kept = any(e.status in KEPT and e.kind == "experiment" for e in self.journal.experiments(s.id))
            what = f"{s.origin} has {len(new)} new commit(s) since this session started (latest: {self.git.subject(tip)[:80]})"
            if not kept:  # nothing of the session's own to keep: it goes on from there
                return self.adopt(s, tip, what)
            self.emit(ev.Notice(text=f"{what}; they are not in this session: `cockpit --tag NEW` starts a new "
                                     f"session from {s.origin}"))
        return s

    def same_code(self, a: str, b: str) -> bool:
        """Commits a and b hold the same editable files (a program.md commit changes no code)."""
        return a == b or all(self.git.show(a, f) == self.git.show(b, f) for f in self.editable)

    def adopt(self, s: Session, sha: str, what: str) -> Session:
        """The session goes on from the human's commit `sha`; a changed code is measured again."""
        code_changed = not self.same_code(s.best_commit, sha)
        self.best.moved(s.id, sha, code_changed)
        text = (f"{what}: the session goes on from {sha[:7]}"
                + ("; its code changed, so it is measured again as the new baseline" if code_changed else ""))
        self.journal.add_note(s.id, "human", "commit", text)
        self.emit(ev.Notice(text=text))
        return self.journal.session(s.id)

    def check_harness_version(self, s: Session, harness: str | None, label: str) -> None:
        """Results measured by another version of the harness (or of the measure script, or with
        other prepared data) are never compared with new ones: a new version means a new baseline
        of the best code, and the agent is told."""
        if harness is None or s.harness == harness:
            return
        if s.harness is None:  # a journal from before versions were recorded: its rows are taken as this version
            self.journal.update_session(s.id, harness=harness)
            self.journal.set_harness(s.id, harness)
            return
        why = remeasure_reason(s.target, label)  # "budget changed 60 s -> 30 s"
        with self.journal.transaction():
            self.best.remeasure(s.id)
            self.journal.update_session(s.id, harness=harness, target=label or s.target)
        self.journal.add_note(s.id, "human", "harness", f"{why} ({s.harness} -> {harness}): results "
                              "before this point were measured by the old one; the best code is measured again")
        self.emit(ev.Notice(text=f"{why} since this session's baseline ({s.harness} -> {harness}): "
                                 "measuring a new baseline of the best code; earlier results are not compared with new ones"))

    def sync_human_files(self, s: Session) -> Session | None:
        """Commit the human's edits to program.md on the session branch; the best commit moves
        with them (same code, same metric) and the agent is told. The session as it is now (None:
        nothing to commit)."""
        dirty = [f for f in self.git.dirty_files() if f in self.human_files]
        if not dirty:
            return None
        self.check_tree(s)
        sha = self.git.commit_all(dirty, f"cockpit {s.tag}: the human updated {', '.join(dirty)}")
        self.git.mark("sync", s.tag, sha)
        self.head = sha
        self.best.moved(s.id, sha)
        self.journal.add_note(s.id, "human", "instructions", f"the human edited {', '.join(dirty)}; re-read it")
        self.emit(ev.Notice(text=f"{', '.join(dirty)} changed: committed at {sha[:7]}; the agent is told"))
        return self.journal.session(s.id)

    def repair(self, s: Session) -> None:
        """After a failure mid-experiment: nothing stays `running`, the tree is at the best."""
        try:
            self.journal.mark_interrupted(s.id)
            best = self.journal.session(s.id).best_commit
            if self.branch_moved(s):  # the human's commit: kept for the next start
                return
            code, others = self.unsaved()
            if code:
                return  # the human's edited code: never discarded
            if best and self.git.head() != best:
                self.git.reset_hard(best, keep=(*self.human_files, *others))
        except Exception:  # best effort: the next start repairs what is left
            traceback.print_exc()

    def program_changed_since(self, base: str, best: str) -> bool:
        """The human's files (program.md) differ between commits base and best."""
        return base != best and any(self.git.show(base, f) != self.git.show(best, f) for f in self.human_files)
