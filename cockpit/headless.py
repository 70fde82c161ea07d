"""The headless printer: engine events as readable lines, or as JSON lines (--json)."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from harness.text import printable

from engine import events as ev


class Printer:
    def __init__(self, json_lines: bool = False, out: TextIO | None = None, metric: str = "val_bpb", progress_every: float = 10.0):
        self.json = json_lines
        self.out = out or sys.stdout
        self.metric = metric
        self.progress_every = progress_every
        self._last_progress = 0.0
        self._stream: tuple[str, int, list[str], float] | None = None  # (kind, n, parts, ts) of streamed deltas
        self._lock = threading.Lock()  # the agent streams from its own thread while a run reports progress
        self.closed = False  # the reader went away (`| head`, a hung-up terminal): output stops, the session goes on

    def __call__(self, e: ev.Event) -> None:
        with self._lock:
            self._print(e)

    def _print(self, e: ev.Event) -> None:
        if self.json:
            self._put(e.to_json() + "\n")
            return
        if isinstance(e, (ev.AgentThinking, ev.AgentText)):
            kind = "thinking" if isinstance(e, ev.AgentThinking) else "agent"
            if self._stream and self._stream[:2] == (kind, e.n):
                self._stream[2].append(e.text)
            else:
                self._flush()
                self._stream = (kind, e.n, [e.text], e.ts)
            return
        self._flush()
        line = self.format(e)
        if line:
            self._write(e.ts, line)

    def _write(self, ts: float, line: str) -> None:
        # One event, one line: what the agent or train.py wrote (a reason, a description) has no
        # control sequences (harness/text.py), and its own newlines continue indented, so it can
        # never draw a line that looks like one of cockpit's.
        stamp = time.strftime("%H:%M:%S ", time.localtime(ts))
        line = printable(line).rstrip("\n").replace("\n", "\n" + " " * len(stamp) + "| ")
        self._put(stamp + line + "\n")

    def _put(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except OSError:  # EPIPE (the reader of the pipe left), EIO (the terminal hung up)
            self.closed = True
            detach(self.out)
            try:
                sys.stderr.write("cockpit: the output was closed; the session goes on without printing\n")
                sys.stderr.flush()
            except OSError:  # stderr went with it
                detach(sys.stderr)

    def _flush(self) -> None:
        """Streamed deltas become one line once the stream moves on."""
        if self._stream:
            kind, n, parts, ts = self._stream
            text = " ".join("".join(parts).split())
            if len(text) > 400:
                text = text[:400] + "..."
            self._write(ts, f"#{n} {kind}: {text}")
            self._stream = None

    def format(self, e: ev.Event) -> str | None:
        m = self.metric
        if isinstance(e, ev.SessionStarted):
            how = f"resumed, next experiment #{e.next_experiment}" if e.resumed else "new"
            best = f", best {m} {e.best_metric:.6f}" if e.best_metric is not None else ""
            return f"session {e.tag} on branch {e.branch} ({how}; agent {e.agent}{best})"
        if isinstance(e, ev.ExperimentProposed):
            stat = f"  [{e.diff_stat}]" if e.diff_stat else ""
            return f"#{e.n} {'baseline' if e.kind == 'baseline' else 'proposed'}: {e.description}{stat}"
        if isinstance(e, ev.AwaitingApproval):
            return f"#{e.n} waiting for approval"
        if isinstance(e, ev.ExperimentStarted):
            self._last_progress = 0.0
            return f"#{e.n} running at {e.commit[:7]}" + (f" on {e.device}" if e.device else "")
        if isinstance(e, ev.RunProgress):
            now = time.monotonic()
            if now - self._last_progress < self.progress_every:
                return None
            self._last_progress = now
            rate = f"  {e.tokens_per_second / 1e3:.1f}k tok/s" if e.tokens_per_second else ""
            mfu = f"  MFU {100 * e.mfu:.1f}%" if e.mfu else ""
            return f"#{e.n}   step {e.step}  loss {e.loss:.4f}{rate}{mfu}  {100 * min(e.fraction, 1):.0f}% of budget"
        if isinstance(e, ev.ExperimentFinished):
            val = f" {m} {e.metric:.6f}" if e.metric is not None else ""
            delta = f" (Δ {e.delta:+.6f}" + (f", {e.confidence:+.1f}σ)" if e.confidence is not None else ")") if e.delta is not None else ""
            why = f" — {e.reason}" if e.reason and e.status not in ("keep",) else ""
            return f"#{e.n} {e.status.upper()}{val}{delta}  {e.description}{why}"
        if isinstance(e, ev.EarlyStopBand):
            return f"#{e.n} early stop: {e.note}" if e.note else None
        if isinstance(e, ev.RunPruned):  # the result line says a pruned run's reason
            return f"#{e.n} runs on (let finish by the human); the rule would stop it: {e.reason}" if e.held else None
        if isinstance(e, ev.BestChanged):
            return f"#{e.n} is the new best: {m} {e.metric:.6f} at {e.commit[:7]}" + (" (force-kept)" if e.forced else "")
        if isinstance(e, ev.ToolCalled):
            return f"#{e.n} tool {e.name}: {e.summary}" + ("" if e.ok else " (refused)")
        if isinstance(e, ev.Notice):
            return e.text
        if isinstance(e, ev.Alert):
            return f"warning: {e.text}"
        if isinstance(e, ev.Waiting):
            return f"waiting: {e.reason}" + (f" (retry in {e.seconds:.0f}s)" if e.seconds else "")
        if isinstance(e, ev.Error):
            # the error the session stops on is said once, by the CLI (`cockpit: error: ...` on stderr)
            return None if e.fatal else f"error: {e.text}"
        if isinstance(e, ev.SessionStopped):
            return "session stopped on an error" if e.error else f"session stopped: {e.reason}"
        return None


def detach(stream) -> None:
    """Point a stream whose reader is gone at /dev/null, as Python's documentation advises for
    EPIPE, so what is still buffered (and the flush at exit) goes nowhere instead of raising."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a real file (a test's StringIO): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
