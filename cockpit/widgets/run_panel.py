"""The run panel. One slot: budget progress, live loss and tokens/s with a sparkline labelled
"loss" (the run's loss so far), the ETA, the loss above which the early-stop rule stops the run
(`stop>`, once it is past the grace fraction), and
where the last run's time went (startup, training, evaluation) with the session's duty cycle.
Several slots: one compact line per slot (experiment, device, progress bar, loss, tokens/s,
phase), fewer details when the panel is narrow."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Sparkline, Static

from .batch import Batched

HISTORY = 120
SPARK_MIN = 8
PHASES = {"startup": "start", "train": "train", "export": "export", "eval": "eval"}


class RunPanel(Batched, Vertical):
    DEFAULT_CSS = """
    RunPanel { border: round $accent; height: 100%; }
    RunPanel > Static { height: auto; max-height: 2; }
    RunPanel > #slots { max-height: 100; }
    RunPanel > #loss-history { height: 2; }
    RunPanel > #loss-history > Static { width: 5; color: $text-muted; }
    RunPanel > #loss-history > Sparkline { width: 1fr; height: 2; }
    RunPanel ProgressBar { width: 1fr; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.border_title = "run"
        self.losses: deque[float] = deque(maxlen=HISTORY)
        self.stats = Static("idle")
        self.phases = Static("")
        self.bar = ProgressBar(total=100, show_eta=False)
        self.spark = Sparkline([], summary_function=min)
        self.spark_row = Horizontal(Static("loss"), self.spark, id="loss-history")  # labelled: the run's loss so far
        self.slot_lines = Static("", id="slots")
        self.runs: dict[int, dict] = {}  # running experiment -> its slot, device, progress
        self.slots: set[int] = set()
        self.shown: int | None = None  # the run the one-slot view follows
        self.bands: dict[int, list[tuple[float, float]]] = {}  # running experiment -> the early-stop rule's line

    def compose(self):
        yield self.bar
        yield self.stats
        yield self.slot_lines
        yield self.phases
        yield self.spark_row

    def on_mount(self) -> None:
        self.slot_lines.display = False
        self.spark_row.display = False

    @property
    def many(self) -> bool:
        return len(self.slots) > 1

    def start(self, n: int, slot: int = 0, device: str = "") -> None:
        self.runs[n] = {"slot": slot, "device": device, "fraction": 0.0, "loss": None, "tok_s": None, "phase": "startup"}
        self.slots.add(slot)
        self.shown = n
        self.losses.clear()
        self.spark.data = []
        self.spark_row.display = False
        self.bar.update(progress=0)
        self.stats.update(f"#{n} starting" + (f" on {device}" if device else ""))
        self._layout()

    def redraw(self) -> None:
        self._lines()

    def tick(self, n: int, step: int, loss: float, tok_s: float | None, mfu: float | None, fraction: float, elapsed: float) -> None:
        frac = max(0.0, min(fraction, 1.0))
        r = self.runs.get(n)
        if r is not None:
            r.update(fraction=frac, loss=loss, tok_s=tok_s)
            if r["phase"] == "startup":  # a late tick never takes a run back from export or eval
                r["phase"] = "train"
        if self.many:
            self.changed()  # once a frame (widgets/batch.py)
            return
        if n != self.shown:
            return
        self.losses.append(loss)
        self.spark.data = list(self.losses)
        self.spark_row.display = len(self.losses) >= SPARK_MIN  # one or two points would draw a solid block
        self.bar.update(progress=100 * frac)
        rate = f" {tok_s / 1e3:.1f}k tok/s" if tok_s else ""
        mfu_s = f" MFU {100 * mfu:.0f}%" if mfu else ""
        eta = ""
        if 0.02 < frac < 1:
            eta = f" ETA {elapsed * (1 - frac) / frac:.0f}s"
        passed = [y for f, y in self.bands.get(n, []) if f <= frac + 1e-9]
        stop = f" stop>{passed[-1]:.3f}" if passed else ""
        self.stats.update(f"#{n} step {step} loss {loss:.4f}{stop}{rate}{mfu_s}{eta}")

    def band(self, n: int, line: list[tuple[float, float]]) -> None:
        """The early-stop rule's line for run n (the loss above which it stops, by fraction)."""
        if line and n in self.runs:
            self.bands[n] = line

    def phase(self, n: int, phase: str, what: str | None = None) -> None:
        """The run's phase changed (startup, train, export, eval)."""
        r = self.runs.get(n)
        if r is not None:
            r["phase"] = phase
            if phase in ("export", "eval"):
                r["fraction"] = 1.0
        if self.many:
            self._lines()
        elif what is not None and n == self.shown:  # training is over: the bar stays full
            self.bar.update(progress=100)
            self.stats.update(f"#{n} {what}…")

    def done(self, n: int | None, text: str, phases: str | None = None) -> None:
        self.runs.pop(n, None)
        if n is not None:
            self.bands.pop(n, None)
        if phases is not None:
            self.phases.update(phases)
        if self.many:
            self._lines()
            return
        self.bar.update(progress=100)
        self.stats.update(text)

    def on_resize(self, event) -> None:
        if self.many:  # the slots' lines are fitted to the width: again at the width the layout gave
            self._lines()

    def _layout(self) -> None:
        many = self.many
        self.bar.display = self.stats.display = not many
        self.slot_lines.display = many
        if many:
            self.spark_row.display = False
            self._lines()

    def _lines(self) -> None:
        """One line per busy slot, in slot order; what fits the panel's width."""
        width = max(20, (self.size.width or 40) - 2)
        out = Text()
        for n, r in sorted(self.runs.items(), key=lambda kv: kv[1]["slot"]):
            head = f"#{n:<4}{r['device'] or r['slot']:<6} "
            tail = f" {PHASES.get(r['phase'], r['phase']):<5}"
            loss = f" {r['loss']:.3f}" if r["loss"] is not None else "      "
            tok = f" {r['tok_s'] / 1e3:.0f}k/s" if r["tok_s"] else ""
            pct = f" {100 * r['fraction']:3.0f}%"
            room = width - len(head) - len(pct) - len(tail)
            if room - len(loss) - len(tok) >= 6:
                room -= len(loss) + len(tok)
            elif room - len(loss) >= 6:
                room -= len(loss)
                tok = ""
            else:
                loss = tok = ""
            bar = max(3, min(20, room - 1))
            filled = int(round(bar * r["fraction"]))
            if out:
                out.append("\n")
            out.append(head)
            out.append("━" * filled, style="bold green" if r["phase"] != "startup" else "yellow")
            out.append("━" * (bar - filled), style="grey35")
            out.append(pct + loss + tok + tail)
        idle = len(self.slots) - len(self.runs)
        if idle > 0:
            out.append(("\n" if out else "") + f"{idle} slot{'s' if idle != 1 else ''} idle", style="grey50")
        self.slot_lines.update(out)
