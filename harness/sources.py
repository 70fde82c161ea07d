"""Document sources for `cockpit prepare`: the embedded stdlib corpus, a text folder, parquet shards.

A source yields (identity, text) pairs in a deterministic order. The identity (a relative path,
or a parquet row's id / content hash) decides the validation split, so it must be stable.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import SourceError

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class Source:
    """A document source. `files` is the fingerprinted list; `skipped` counts undecodable docs."""

    kind: str  # "stdlib" | "text" | "parquet"
    spec: str  # what the user named (or the stdlib path)
    files: list[Path]
    root: Path | None = None
    skipped_undecodable: int = 0
    skipped_names: list[str] = field(default_factory=list)

    # ---- identity of the whole source, for idempotent prepare ----
    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.kind}\0{self.spec}\0".encode("utf-8", "surrogateescape"))
        for p in self.files:
            try:
                st = p.stat()
            except OSError as e:
                raise SourceError(f"cannot read {p}: {e.strerror}") from None
            h.update(os.fsencode(p) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    # ---- what may be held out (validation, holdout) ----
    def eligible(self, ident: str) -> bool:
        """Whether a document may be held out. The built-in corpus is the interpreter's own
        standard library, which the sandbox must show (Python runs from it): its held-out
        documents come only from the folders the sandbox hides (sandbox.STDLIB_HIDDEN: the test
        suite and the GUI tools), so no run can read them. Any other source: every document."""
        if self.kind != "stdlib":
            return True
        from .sandbox import STDLIB_HIDDEN

        return ident.split("/", 1)[0] in STDLIB_HIDDEN

    def holdout_scale(self) -> float:
        """How much the split's fractions are raised for the eligible documents, so that validation
        stays its share of the whole corpus (1 when every document is eligible)."""
        if self.kind != "stdlib" or self.root is None:
            return 1.0
        total = eligible = 0
        for p in self.files:
            n = p.stat().st_size
            total += n
            if self.eligible(p.relative_to(self.root).as_posix()):
                eligible += n
        return total / eligible if eligible else 1.0

    # ---- documents ----
    def documents(self) -> Iterator[tuple[str, str]]:
        if self.kind == "parquet":
            yield from self._parquet_documents()
        else:
            yield from self._file_documents()

    def _file_documents(self) -> Iterator[tuple[str, str]]:
        assert self.root is not None
        for p in self.files:
            try:
                raw = p.read_bytes()
            except OSError as e:
                raise SourceError(f"cannot read {p}: {e.strerror}") from None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.skipped_undecodable += 1
                self.skipped_names.append(str(p.relative_to(self.root)))
                continue
            if text.strip():
                yield p.relative_to(self.root).as_posix(), text

    def _parquet_documents(self) -> Iterator[tuple[str, str]]:
        import pyarrow.parquet as pq

        for p in self.files:
            try:
                pf = pq.ParquetFile(p)
                names = pf.schema_arrow.names
            except Exception as e:  # pyarrow raises several types for a corrupt shard
                raise SourceError(f"cannot read parquet shard {p}: {e}") from None
            if "text" not in names:
                raise SourceError(f"parquet shard {p} has no 'text' column (columns: {', '.join(names)})")
            columns = ["text"] + (["id"] if "id" in names else [])
            try:
                for rg in range(pf.num_row_groups):
                    table = pf.read_row_group(rg, columns=columns)
                    texts = table.column("text").to_pylist()
                    ids = table.column("id").to_pylist() if "id" in columns else [None] * len(texts)
                    for doc_id, text in zip(ids, texts):
                        if not isinstance(text, str) or not text.strip():
                            continue
                        ident = str(doc_id) if doc_id is not None else hashlib.sha1(text.encode()).hexdigest()
                        yield ident, text
            except SourceError:
                raise
            except Exception as e:
                raise SourceError(f"cannot read parquet shard {p}: {e}") from None


def stdlib_source() -> Source:
    """The Python standard-library source of the running interpreter: offline, on every machine."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise SourceError(f"no Python source found in the standard library at {root}")
    return Source("stdlib", str(root), files, root=root)


def text_source(folder: str, include: list[str] | None = None) -> Source:
    """Every regular file under a folder (hidden entries skipped), in sorted path order;
    with `include`, only files whose name matches one of the glob patterns (e.g. "*.py")."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise SourceError(f"--text {folder}: no such folder")
    if not root.is_dir():
        raise SourceError(f"--text {folder}: not a folder")
    root = root.resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or (include and not any(fnmatch.fnmatch(name, pat) for pat in include)):
                continue
            p = Path(dirpath) / name
            if not p.is_file():
                raise SourceError(f"cannot read {p}: not a regular file (broken link?)")
            if not os.access(p, os.R_OK):
                raise SourceError(f"cannot read {p}: permission denied")
            files.append(p)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if not files:
        which = f" matching {', '.join(include)}" if include else ""
        raise SourceError(f"--text {folder}: the folder has no files{which}")
    spec = str(root) + (f" [{','.join(include)}]" if include else "")
    return Source("text", spec, files, root=root)


def parquet_source(pattern: str) -> Source:
    """Parquet shards with a `text` column, matched by a glob, in sorted order."""
    matches = sorted(Path(p).resolve() for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise SourceError(f"--parquet {pattern!r} matches no files")
    return Source("parquet", pattern, files)
