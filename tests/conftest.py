"""Shared pytest setup: import the project from this checkout and register custom markers."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the full built-in (stdlib) corpus; a few seconds")


import pytest  # noqa: E402


TEST_SALT = "cockpit-tests-4"  # a salt whose split of the tiny corpus holds enough validation and holdout text


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A small prepared corpus (a few stdlib packages as text, vocab 512), shared by the session."""
    from harness.prepare import prepare
    from harness.sources import text_source

    src = tmp_path_factory.mktemp("corpus")
    for mod in ("json", "email", "logging", "asyncio"):
        folder = Path(__import__(mod).__file__).parent
        for f in sorted(folder.glob("*.py")):
            (src / f"{mod}_{f.name}.txt").write_text(f.read_text(encoding="utf-8"))
    cache = tmp_path_factory.mktemp("cache")
    (cache / "split.salt").write_text(TEST_SALT + "\n")  # the split is salted per cache: this one, every time
    prepare(text_source(str(src)), cache, vocab_size=512, show_progress=False)
    return cache


@pytest.fixture(autouse=True)
def _no_rejected_requests(monkeypatch):
    """Every fake Messages API validates requests as the real API does; a test that does not
    clear what it expected fails when the fake rejected a request (the agent would have stopped)."""
    from fake_anthropic import FakeAnthropic

    fakes = []
    real_start = FakeAnthropic.start

    def start(self):
        fakes.append(self)
        return real_start(self)

    monkeypatch.setattr(FakeAnthropic, "start", start)
    yield
    for f in fakes:
        assert f.validate and f.rejected == [], f.rejected
