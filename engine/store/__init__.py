"""What is stored: the journal, the workspace's paths, the read-only view of a session,
the session lock and git."""
