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


# A small honest trainer for the tests whose subject is the loop, not the bundled trainer (a veto,
# a kill, the spare, the holdout, the sandbox notice): a bigram model through the same harness
# (runtime, export, separate evaluation, sandbox), with UPPER_CASE constants for the tuner. Its
# steps take milliseconds and its export and evaluation a fraction of the bundled model's, so
# a busy machine stretches the run's clock far less (no multi-second step to overrun a short
# budget) and each run costs seconds, not tens of seconds.
LIGHT_TRAINER = '''"""A bigram model: the tests' stand-in for the bundled trainer (tests/conftest.py)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from harness import runtime as rt

WIDTH = 32
LEARNING_RATE = 0.01
BATCH_ROWS = 4

V = rt.vocab_size()


class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, WIDTH)
        self.out = nn.Linear(WIDTH, V)

    def forward(self, idx):
        return self.out(self.emb(idx))


model = Bigram()
opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
batches = rt.train_batches(BATCH_ROWS)
step = 0
while not rt.done():
    x, y = next(batches)
    loss = F.cross_entropy(model(x).view(-1, V), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    rt.progress(step, loss.detach(), tokens=x.numel())
    step += 1
rt.submit(model)
'''


def use_light_trainer(ws: Path, baseline_runs: int | None = None) -> Path:
    """Put LIGHT_TRAINER in a `cockpit init` workspace as trainer/train.py (and the number of
    baseline runs in cockpit.toml, if given), committed."""
    import subprocess

    (ws / "trainer" / "train.py").write_text(LIGHT_TRAINER)
    if baseline_runs is not None:
        toml = ws / "cockpit.toml"
        toml.write_text(toml.read_text().replace("baseline_runs = 2", f"baseline_runs = {baseline_runs}"))
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the light trainer"], cwd=ws, check=True)
    return ws


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
