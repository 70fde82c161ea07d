"""Shared pytest setup: import the project from this checkout and register custom markers."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the full built-in (stdlib) corpus; a few seconds")
