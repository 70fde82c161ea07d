"""The statuses of an experiment: one enum whose values are the strings the journal and
results.tsv always held, and the sets every reader uses, each defined once (engine/status.py)."""

from __future__ import annotations

import pytest

from engine import numbers
from engine.agents import base
from engine.status import CRASHED, DISCARDED, FAILED, FINAL, IN_FLIGHT, KEPT, NOT_RUN, Status
from engine.store import journal
from engine.store.journal import Journal, write_results_tsv

#   status        value          kept   failed crashed final  in flight
TABLE = [
    (Status.PROPOSING, "proposing", False, False, False, False, True),
    (Status.QUEUED, "queued", False, False, False, False, True),
    (Status.RUNNING, "running", False, False, False, False, True),
    (Status.KEEP, "keep", True, False, False, True, False),
    (Status.FORCED, "forced", True, False, False, True, False),
    (Status.DISCARD, "discard", False, False, False, True, False),
    (Status.PRUNED, "pruned", False, False, False, True, False),
    (Status.CRASH, "crash", False, True, True, True, False),
    (Status.TIMEOUT, "timeout", False, True, True, True, False),
    (Status.INVALID, "invalid", False, True, False, True, False),
    (Status.VETOED, "vetoed", False, False, False, True, False),
    (Status.INTERRUPTED, "interrupted", False, False, False, True, False),
    (Status.BASELINE, "baseline", False, False, False, True, False),
]


def test_the_table_covers_every_status():
    assert {row[0] for row in TABLE} == set(Status)


@pytest.mark.parametrize("status,value,kept,failed,crashed,final,in_flight", TABLE)
def test_each_status_its_string_and_its_sets(status, value, kept, failed, crashed, final, in_flight):
    # the journal and results.tsv hold the same strings as before the enum
    assert status == value and str(status) == value and f"{status}" == value and Status(value) is status
    assert (status in KEPT, status in FAILED, status in CRASHED, status in FINAL, status in IN_FLIGHT) == (
        kept, failed, crashed, final, in_flight)
    assert (value in KEPT, value in FAILED, value in FINAL) == (kept, failed, final)  # a row read back is a plain str
    assert not (final and in_flight)
    assert status not in NOT_RUN or final
    # a run stopped early is a discard wherever discards are counted (and nothing else is)
    assert (status in DISCARDED) == (value in ("discard", "pruned"))


def test_every_reader_uses_the_one_definition():
    assert journal.KEPT is KEPT and journal.FINAL is FINAL
    assert numbers.KEPT is KEPT and numbers.FAILED is FAILED
    assert base.KEPT is KEPT


def test_a_status_written_as_a_member_reads_back_and_lands_in_results_tsv_as_the_same_string(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    s = j.create_session("t", "cockpit/t", "a" * 40, "tuner", "")
    j.add_experiment(s.id, 1, "experiment", "a" * 40, Status.PROPOSING, "one")
    j.update_experiment(s.id, 1, status=Status.KEEP, metric=1.5, commit_sha="b" * 40, run_started=1.0)
    j.add_experiment(s.id, 2, "experiment", "a" * 40, Status.RUNNING, "two")
    assert j.mark_interrupted(s.id) == [2]  # a row not in a final status is unfinished
    rows = j.experiments(s.id)
    assert [type(e.status) for e in rows] == [str, str] and [e.status for e in rows] == ["keep", "interrupted"]
    write_results_tsv(tmp_path / "results.tsv", rows)
    lines = (tmp_path / "results.tsv").read_text().splitlines()
    assert lines[1].split("\t")[3] == "keep"
