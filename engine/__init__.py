"""The research loop: agents, git, journal, decisions, control and events. Never imports Textual."""
