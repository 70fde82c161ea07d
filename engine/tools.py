"""The agent's file tools: read, edit and write the workspace's editable files, and take notes.

Every path an agent names is confined to the editable list: no absolute paths, no `..`, nothing
outside the list, and no symlinks anywhere between the workspace root and the file (a link that
points elsewhere, even inside the workspace, is refused). Writes are atomic (temp file in the same
folder + os.replace) and keep the file's mode. A bad call raises ToolError, whose one-line
message goes back to the model; nothing on disk changes when a call is refused.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path, PurePosixPath

MAX_NOTE_CHARS = 4000  # one research note; the journal keeps them all, the prompt shows them


class ToolError(Exception):
    """A refused or malformed tool call; its message goes back to the model, one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _normalize(path: object) -> str:
    """`path` as a normalized relative POSIX path ("./a//b.py" -> "a/b.py"), or ToolError."""
    if not isinstance(path, str):
        raise ToolError(f"path must be a string, got {type(path).__name__}")
    if not path.strip():
        raise ToolError("path is empty")
    if "\x00" in path:
        raise ToolError("path contains a NUL byte")
    p = PurePosixPath(path)
    if p.is_absolute() or path.startswith("~"):
        raise ToolError(f"absolute paths are refused: {path!r}; use a path relative to the workspace")
    if ".." in p.parts:
        raise ToolError(f"'..' is refused in paths: {path!r}")
    parts = [part for part in p.parts if part != "."]
    if not parts:
        raise ToolError(f"not a file path: {path!r}")
    return "/".join(parts)


def _require_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ToolError(f"{name} must be a string, got {type(value).__name__}")
    return value


class Tools:
    """File tools for one proposal, confined to `editable` (relative POSIX paths) under `root`."""

    def __init__(self, root: Path, editable: list[str], max_bytes: int = 256_000):
        self.root = Path(root).resolve()
        try:
            self.editable = sorted({_normalize(e) for e in editable})
        except ToolError as e:
            raise ValueError(f"bad editable path: {e}") from None
        self.max_bytes = max_bytes
        self.touched: set[str] = set()
        self.notes: list[str] = []

    # -- paths ------------------------------------------------------------------------------

    def _rel(self, path: object) -> str:
        rel = _normalize(path)
        if rel not in self.editable:
            raise ToolError(f"{rel!r} is not editable; editable files: {', '.join(self.editable)}")
        return rel

    def resolve(self, path: str) -> Path:
        """The absolute path of one editable file, or ToolError.

        The file itself and every folder between it and the root must be real (not a symlink):
        the path must resolve to exactly root/<path>."""
        rel = self._rel(path)
        expected = self.root.joinpath(*rel.split("/"))
        try:
            actual = expected.resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop, an unreadable folder
            raise ToolError(f"cannot resolve {rel!r}: {e}") from None
        if actual != expected:
            where = "outside the workspace" if not actual.is_relative_to(self.root) else "another file"
            raise ToolError(f"{rel!r} goes through a symlink to {where}; refused")
        return expected

    # -- tools ------------------------------------------------------------------------------

    def read_file(self, path: str) -> str:
        """The text of one editable file."""
        rel = self._rel(path)
        return self._read(rel, self.resolve(rel))

    def edit_file(self, path: str, old_string: str, new_string: str) -> str:
        """Replace the one occurrence of `old_string` with `new_string`."""
        old_string = _require_str("old_string", old_string)
        new_string = _require_str("new_string", new_string)
        rel = self._rel(path)
        target = self.resolve(rel)
        if not old_string:
            raise ToolError("old_string is empty; to replace the whole file use write_file")
        if old_string == new_string:
            raise ToolError("old_string and new_string are identical; nothing would change")
        text = self._read(rel, target)
        count = text.count(old_string)
        if count == 0:
            raise ToolError(f"old_string not found in {rel} (0 occurrences); read the file and copy the text exactly")
        if count > 1:
            raise ToolError(f"old_string occurs {count} times in {rel}; include more surrounding text to make it unique")
        at = text.index(old_string)
        new_text = text[:at] + new_string + text[at + len(old_string) :]
        self._write(rel, target, new_text)
        line = text.count("\n", 0, at) + 1
        removed, added = old_string.count("\n") + 1, new_string.count("\n") + 1
        return f"edited {rel} at line {line}: -{removed} +{added} lines"

    def write_file(self, path: str, content: str) -> str:
        """Replace (or create) one editable file with `content`."""
        content = _require_str("content", content)
        rel = self._rel(path)
        target = self.resolve(rel)
        if target.exists() and not target.is_file():
            raise ToolError(f"{rel!r} is not a regular file")
        self._write(rel, target, content)
        return f"wrote {rel}: {len(content.splitlines())} lines"

    def note(self, text: str) -> str:
        """Keep a research note for later proposals."""
        text = _require_str("text", text).strip()
        if not text:
            raise ToolError("note is empty")
        if len(text) > MAX_NOTE_CHARS:
            raise ToolError(f"note is {len(text)} characters; the limit is {MAX_NOTE_CHARS}")
        self.notes.append(text)
        return f"noted ({len(self.notes)} this proposal)"

    # -- a fresh start ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, bytes | None]:
        """The editable files' bytes now (None: absent), for restore()."""
        out: dict[str, bytes | None] = {}
        for rel in self.editable:
            try:
                out[rel] = self.resolve(rel).read_bytes()
            except FileNotFoundError:
                out[rel] = None
            except (ToolError, OSError):  # unreadable (a folder, a link): never touched by restore
                continue
        return out

    def restore(self, snap: dict[str, bytes | None]) -> None:
        """Put the files this proposal touched back as they were at snapshot() (a conversation
        that ended without a proposal leaves nothing behind for the next one)."""
        for rel in sorted(self.touched):
            if rel not in snap:
                continue
            target = self.resolve(rel)
            before = snap[rel]
            if before is None:
                target.unlink(missing_ok=True)
            else:
                self._write_bytes(rel, target, before)
        self.touched.clear()

    # -- disk -------------------------------------------------------------------------------

    def _read(self, rel: str, target: Path) -> str:
        flags = os.O_RDONLY | os.O_NOFOLLOW
        try:
            fd = os.open(target, flags)
        except FileNotFoundError:
            raise ToolError(f"{rel} does not exist yet; create it with write_file") from None
        except OSError as e:
            raise ToolError(f"cannot read {rel}: {e.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ToolError(f"{rel!r} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(self.max_bytes + 1)
        except OSError as e:
            raise ToolError(f"cannot read {rel}: {e.strerror}") from None
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:
            raise ToolError(f"{rel} is larger than the {self.max_bytes}-byte limit")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{rel} is not UTF-8 text") from None

    def _write(self, rel: str, target: Path, text: str) -> None:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise ToolError("content is not encodable as UTF-8") from None
        if len(data) > self.max_bytes:
            raise ToolError(f"{rel} would be {len(data)} bytes; the limit is {self.max_bytes}")
        self._write_bytes(rel, target, data)

    def _write_bytes(self, rel: str, target: Path, data: bytes) -> None:
        try:
            mode = stat.S_IMODE(target.lstat().st_mode)
        except FileNotFoundError:
            mode = 0o644
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as e:
            raise ToolError(f"cannot write {rel}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise ToolError(f"cannot write {rel}: {e.strerror}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.touched.add(rel)
