"""The cockpit's panes, one widget per file; each renders state handed down by the app."""
