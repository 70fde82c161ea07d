"""Where a run happens: the runs, the slots and the slot set, the targets (local or remote)
and the Ray cluster."""
