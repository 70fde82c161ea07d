"""The run's log: a process's output, pumped from its pipe to the run's log file (capped: the head
and the tail are kept), and the log's tail for a screen."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO

from .text import printable

LOG_TAIL_LINES = 40
LOG_HEAD_BYTES = 8 << 20  # a run's log keeps its first 8 MB ...
LOG_TAIL_BYTES = 2 << 20  # ... and its last 2 MB; what lies between is cut (and said)
EARLY_BYTES = 1 << 20  # what a spare may print before its run starts (kept for the log)


class LogPump(threading.Thread):
    """Reads a process's stdout+stderr pipe and writes the run's log: everything until the log is
    attached is held (up to EARLY_BYTES), then the first LOG_HEAD_BYTES go to the file as they
    come, and past that only the last LOG_TAIL_BYTES are kept, written with a line saying how
    much was cut when the pump stops."""

    def __init__(self, fd: int):
        super().__init__(daemon=True)
        self.fd = fd
        self.lock = threading.Lock()
        self.early = bytearray()
        self.file: BinaryIO | None = None
        self.written = 0
        self.tail = bytearray()
        self.cut = 0
        self.closed = False

    def attach(self, path: Path) -> None:
        with self.lock:
            if self.file is None and not self.closed:
                self.file = open(path, "ab")
                early, self.early = bytes(self.early), bytearray()
                self._write(self.file, early)

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            with self.lock:
                if self.closed:
                    continue
                if self.file is None:
                    room = EARLY_BYTES - len(self.early)
                    self.early += chunk[: max(room, 0)]
                else:
                    self._write(self.file, chunk)
        os.close(self.fd)

    def _write(self, file: BinaryIO, chunk: bytes) -> None:
        room = LOG_HEAD_BYTES - self.written
        if room > 0:
            file.write(chunk[:room])
            file.flush()
            self.written += min(room, len(chunk))
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > LOG_TAIL_BYTES:
                drop = len(self.tail) - LOG_TAIL_BYTES
                self.cut += drop
                del self.tail[:drop]

    def stop(self, timeout: float = 2.0) -> None:
        """Wait for the pipe to end (every writer is gone), then finish the log."""
        self.join(timeout)
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.file is not None:
                if self.cut:
                    self.file.write(f"\n[... {self.cut:,} bytes of output cut: the log keeps its first "
                                    f"{LOG_HEAD_BYTES >> 20} MB and last {LOG_TAIL_BYTES >> 20} MB ...]\n".encode())
                self.file.write(bytes(self.tail))
                self.file.close()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(printable(data).splitlines()[-lines:])  # train.py's output, for a screen
