"""The session's parts behind the Engine facade: the loop, the scheduler, recording, verdicts,
the ledger, the best, the baseline, in-flight runs, intake, proposals, briefings, stop, branch and merge."""
