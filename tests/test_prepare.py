"""`cockpit prepare`: the data a user trains and is scored on.

Everything here runs the real CLI in a subprocess (or the real harness functions) on small
corpora generated on the fly, with COCKPIT_CACHE pointing at a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness.dataset import Dataset, current_dataset, open_dataset
from harness.errors import IntegrityError, NotPreparedError
from harness.integrity import lock_harness, verify_harness
from harness.prepare import is_val as _is_val, split_of as _split_of

SALT = "cockpit-tests-prepare"  # run_cli gives every cache this split salt, so a test can predict the split


def is_val(identity: str, fraction: float) -> bool:
    return _is_val(identity, fraction, salt=SALT)


def split_of(identity: str, fraction: float) -> str:
    return _split_of(identity, fraction, salt=SALT)
from harness.tokenizer import BOS

REPO = Path(__file__).resolve().parents[1]
VOCAB = 400
VAL_FRACTION = 0.05  # the CLI default
DATA_FILES = {
    "train.bin", "val.bin", "train_docs.npy", "val_docs.npy", "holdout.bin", "holdout_docs.npy",
    "tokenizer.tiktoken", "tokenizer.json", "token_bytes.npy",
}

# Two made-up words that appear nowhere else: one repeated in a training file, one in a
# validation file. Their pairs of letters do not overlap, so the tokenizer's merges tell which
# of the two it saw.
TRAIN_MARKER = "KJWVXZQJ"
VAL_MARKER = "QZXJVKWQ"

WORDS = """the of and to in is for that with as on by this be are from at or an it not which have has
data model train value return import def class self list dict none true false error file path token
split batch loss rate step time read write open close print format number string index count total
alpha beta gamma delta epsilon zeta theta lambda sigma omega river mountain forest ocean desert city
quick brown fox jumps over lazy dog small large green yellow purple orange silver golden quiet loud""".split()


# ---------------------------------------------------------------- helpers

def paragraph(rng: random.Random, lo: int = 15, hi: int = 40) -> str:
    lines = []
    for _ in range(rng.randint(lo, hi)):
        ws = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        if rng.random() < 0.3:
            ws.append(str(rng.randint(0, 99999)))
        lines.append(" ".join(ws) + rng.choice([".", ",", ":", "();", " = 1", "!"]))
    return "\n".join(lines) + "\n"


def write_doc(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text.encode("utf-8"))


def write_corpus(root: Path, n: int = 200, seed: int = 0, prefix: str = "doc") -> dict[str, str]:
    """n deterministic text files (about 1 KB each), a third at the top, the rest in sub-folders.
    Returns {relative posix path: text}."""
    rng = random.Random(seed)
    docs = {}
    for i in range(n):
        sub = f"pkg{i % 7}/" if i % 3 else ""
        rel = f"{sub}{prefix}{i:03d}.txt"
        text = paragraph(rng)
        write_doc(root, rel, text)
        docs[rel] = text
    return docs


def pick_name(template: str, want_val: bool) -> str:
    """The first name template.format(i) whose split is the one wanted."""
    for i in range(10_000):
        name = template.format(i)
        if is_val(name, VAL_FRACTION) == want_val:
            return name
    raise AssertionError("no such name")


def run_cli(args, cache: Path, extra_env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COCKPIT_PREPARE_KILL_AT", "COCKPIT_CACHE")}
    env["COCKPIT_CACHE"] = str(cache)
    Path(cache).mkdir(parents=True, exist_ok=True)
    if not (Path(cache) / "split.salt").exists():
        (Path(cache) / "split.salt").write_text(SALT + "\n")
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "cockpit", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout,
    )


def prepare_text(folder: Path, cache: Path, *extra, vocab: int = VOCAB, env: dict | None = None):
    return run_cli(["prepare", "--text", folder, "--vocab-size", vocab, *extra], cache, env)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def doc_segments(ds: Dataset, split: str) -> list[np.ndarray]:
    stream = np.asarray(ds.stream(split))
    bounds = [int(o) for o in ds.doc_offsets(split)] + [len(stream)]
    return [stream[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def decoded_docs(ds: Dataset, split: str) -> list[str]:
    """Each document of a split, decoded back to text (its leading BOS checked and dropped)."""
    enc = ds.tokenizer
    out = []
    for seg in doc_segments(ds, split):
        assert int(seg[0]) == ds.bos_id
        out.append(enc.decode_bytes(seg[1:].tolist()).decode("utf-8"))
    return out


def leftovers(cache: Path) -> list[str]:
    d = cache / "datasets"
    return sorted(p.name for p in d.iterdir() if p.name.startswith((".tmp-", ".old-"))) if d.exists() else []


def visible_datasets(cache: Path) -> list[str]:
    d = cache / "datasets"
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


@dataclass
class Corpus:
    root: Path
    docs: dict[str, str]  # every document, {relpath: text}
    val_marker_file: str
    train_marker_file: str


@dataclass
class Prepared:
    cache: Path
    result: subprocess.CompletedProcess
    ds: Dataset


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    """~200 generated files plus a few special ones. Shared: tests must not modify it."""
    root = tmp_path_factory.mktemp("corpus")
    docs = write_corpus(root)
    rng = random.Random(99)
    val_name = pick_name("markers/val_marker_{}.txt", want_val=True)
    train_name = pick_name("markers/train_marker_{}.txt", want_val=False)
    specials = {
        val_name: paragraph(rng) + (" " + VAL_MARKER) * 3000 + "\n" + paragraph(rng),
        train_name: paragraph(rng) + (" " + TRAIN_MARKER) * 3000 + "\n" + paragraph(rng),
        # the BOS token's text inside a document is plain text, not a document boundary
        "special/literal_bos.txt": "before <|bos|> after\n" + paragraph(rng),
        # a non-ASCII file name and non-ASCII text, CRLF and tabs
        "unicode/ünïcödé.txt": "héllo wörld, naïve café — 你好世界 🚀\r\n\tindented\r\n" + paragraph(rng),
    }
    for rel, text in specials.items():
        write_doc(root, rel, text)
    docs.update(specials)
    return Corpus(root, docs, val_name, train_name)


@pytest.fixture(scope="session")
def prepared(corpus, tmp_path_factory) -> Prepared:
    """The shared corpus prepared once through the CLI. Tests must not modify its cache."""
    cache = tmp_path_factory.mktemp("cache")
    r = ok(prepare_text(corpus.root, cache))
    return Prepared(cache, r, current_dataset(cache))


# ---------------------------------------------------------------- 1. a prepared dataset

def test_prepare_text_succeeds_with_a_summary(prepared, corpus):
    out = prepared.result.stdout
    c = prepared.ds.manifest["counts"]
    assert out.startswith("prepared in ")
    assert f"{c['train_docs']} train docs / {c['train_tokens']:,} tokens" in out
    assert f"{c['val_docs']} val docs / {c['val_tokens']:,} tokens" in out
    assert f"vocab {VOCAB}" in out
    assert str(prepared.ds.folder) in out
    assert "undecodable" not in out
    # every (non-empty, decodable) file became exactly one document
    assert c["train_docs"] + c["val_docs"] + c["holdout_docs"] == len(corpus.docs)
    assert c["val_docs"] >= 1 and c["train_docs"] > c["val_docs"]
    assert prepared.ds.manifest["source"]["kind"] == "text"
    assert prepared.ds.manifest["source"]["files"] == len(corpus.docs)
    assert prepared.ds.manifest["source"]["skipped_undecodable"] == 0


def test_manifest_counts_match_the_files(prepared):
    ds = prepared.ds
    m = ds.manifest
    c = m["counts"]
    assert set(m["files"]) == DATA_FILES
    for split in ("train", "val"):
        assert (ds.folder / f"{split}.bin").stat().st_size == 2 * c[f"{split}_tokens"]  # uint16
        assert len(ds.stream(split)) == c[f"{split}_tokens"]
        assert len(ds.doc_offsets(split)) == c[f"{split}_docs"]
    for name, rec in m["files"].items():
        assert (ds.folder / name).stat().st_size == rec["size"], name
    assert c["val_tokens"] >= 1024  # MIN_VAL_TOKENS: enough to evaluate on
    ds.verify()


def test_every_document_starts_with_bos(prepared):
    ds = prepared.ds
    for split in ("train", "val"):
        stream = np.asarray(ds.stream(split))
        offs = ds.doc_offsets(split)
        assert offs.dtype == np.int64
        assert offs[0] == 0
        assert np.all(np.diff(offs) > 1)  # strictly increasing, no empty documents
        assert offs[-1] < len(stream)
        assert np.all(stream[offs] == ds.bos_id)
        # BOS appears nowhere else: a literal "<|bos|>" in a file is encoded as plain text
        assert int((stream == ds.bos_id).sum()) == len(offs)
        assert int(stream.max()) < ds.vocab_size


def test_tokenizer_round_trips_and_bos_is_last(prepared):
    ds = prepared.ds
    enc = ds.tokenizer
    assert ds.vocab_size == enc.n_vocab == VOCAB
    assert ds.bos_id == enc.encode_single_token(BOS) == VOCAB - 1
    samples = [
        "",
        "def f(x):\n    return x + 1\n",
        "the quick brown fox jumps over the lazy dog 12345678",
        "héllo wörld — 你好世界 🚀 \r\n\t\x00 end",
        "never seen: zzzzqqqq ÆØÅ ﬁ \U0001f600\U0001f600",
        "   leading and trailing spaces   ",
    ]
    for s in samples:
        assert enc.decode(enc.encode(s)) == s
    text = "x <|bos|> y"
    ids = enc.encode_ordinary(text)
    assert ds.bos_id not in ids
    assert enc.decode(ids) == text


def test_token_bytes_give_each_tokens_utf8_length(prepared):
    ds = prepared.ds
    enc = ds.tokenizer
    tb = ds.token_bytes
    assert tb.shape == (VOCAB,)
    assert tb[ds.bos_id] == 0
    for i in range(VOCAB - 1):
        assert tb[i] == len(enc.decode_single_token_bytes(i)) >= 1, i
    # so summing token_bytes over a split gives its text's size in bytes (bits-per-byte relies on it)
    c = ds.manifest["counts"]
    for split in ("train", "val"):
        assert int(tb[np.asarray(ds.stream(split))].sum()) == c[f"{split}_bytes"]


# ---------------------------------------------------------------- 2. the pinned validation split

def test_is_val_is_pinned_to_known_values():
    # Changing the split rule silently would change what every score is measured on.
    assert [i for i in range(400) if _is_val(f"doc{i:03d}.txt", 0.05)] == [14, 61, 76, 99, 101, 115, 128, 195, 285, 371, 372]


def test_is_val_depends_only_on_identity():
    ids = [f"pkg{i % 5}/file_{i}.py" for i in range(3000)] + ["ünï/cödé.txt", "a b", ""]
    here = [_is_val(i, 0.05) for i in ids]
    assert here == [_is_val(i, 0.05) for i in reversed(ids)][::-1]  # order does not matter
    # another process, another hash seed: the same answers
    code = "import json,sys; from harness.prepare import is_val, split_of; print(json.dumps([is_val(i, 0.05) for i in json.load(sys.stdin)]))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == here


def test_is_val_fraction_is_respected_and_monotone():
    ids = [f"id-{i}" for i in range(20_000)]
    sets = {f: {i for i in ids if _is_val(i, f)} for f in (0.01, 0.05, 0.2)}
    for f, s in sets.items():
        assert abs(len(s) / len(ids) - f) < 0.01 + f * 0.1, f
    # raising --val-fraction only moves documents from train to val, never back
    assert sets[0.01] <= sets[0.05] <= sets[0.2]


def test_documents_land_in_their_pinned_split_exactly(prepared, corpus):
    ordered = sorted(corpus.docs)  # the source's order: sorted relative paths
    for split in ("val", "holdout", "train"):
        want = [corpus.docs[r] for r in ordered if split_of(r, VAL_FRACTION) == split]
        assert decoded_docs(prepared.ds, split) == want, split
    assert decoded_docs(prepared.ds, "holdout"), "the holdout split holds documents"


def test_marker_in_a_val_file_is_only_in_val_and_vice_versa(prepared, corpus):
    assert is_val(corpus.val_marker_file, VAL_FRACTION)
    assert split_of(corpus.train_marker_file, VAL_FRACTION) == "train"
    val_text = "".join(decoded_docs(prepared.ds, "val"))
    train_text = "".join(decoded_docs(prepared.ds, "train"))
    assert VAL_MARKER in val_text and VAL_MARKER not in train_text
    assert TRAIN_MARKER in train_text and TRAIN_MARKER not in val_text


def test_tokenizer_was_not_trained_on_val(prepared):
    enc = prepared.ds.tokenizer
    # the training-file word, repeated 3000 times, was merged into (nearly) one token...
    assert len(enc.encode_ordinary(" " + TRAIN_MARKER)) <= 2
    # ...while the validation-file word, repeated just as often, stayed in pieces
    assert len(enc.encode_ordinary(" " + VAL_MARKER)) >= 6


def test_split_is_stable_when_the_corpus_grows(tmp_path):
    folder, cache = tmp_path / "corpus", tmp_path / "cache"
    docs = write_corpus(folder, n=200, seed=3)
    ok(prepare_text(folder, cache, "--quiet"))
    ds1 = current_dataset(cache)
    val1, train1 = decoded_docs(ds1, "val"), decoded_docs(ds1, "train")

    added = write_corpus(folder, n=100, seed=4, prefix="new")
    r = ok(prepare_text(folder, cache, "--quiet"))
    assert r.stdout.startswith("prepared in ")  # a changed corpus is rebuilt, not reused
    ds2 = current_dataset(cache)
    assert ds2.folder != ds1.folder
    val2, train2 = decoded_docs(ds2, "val"), decoded_docs(ds2, "train")
    hold1, hold2 = decoded_docs(ds1, "holdout"), decoded_docs(ds2, "holdout")
    assert set(val1) <= set(val2) and set(train1) <= set(train2) and set(hold1) <= set(hold2)
    assert set(val2) - set(val1) == {t for rel, t in added.items() if is_val(rel, VAL_FRACTION)}
    assert set(hold2) - set(hold1) == {t for rel, t in added.items() if split_of(rel, VAL_FRACTION) == "holdout"}
    assert len(val2) + len(train2) + len(hold2) == len(docs) + len(added)


# ---------------------------------------------------------------- 3. idempotent

def test_second_prepare_is_a_noop_and_force_rebuilds(tmp_path):
    folder, cache = tmp_path / "corpus", tmp_path / "cache"
    write_corpus(folder)
    r1 = ok(prepare_text(folder, cache, "--quiet"))
    assert r1.stdout.startswith("prepared in ")
    assert "harness locked:" in r1.stdout
    ds = current_dataset(cache)
    train = ds.folder / "train.bin"
    st1, data1 = train.stat(), train.read_bytes()
    listing = sorted(os.listdir(cache / "datasets"))

    r2 = ok(prepare_text(folder, cache, "--quiet"))
    assert r2.stdout.startswith("already prepared: ")
    assert "harness locked:" not in r2.stdout  # nothing changed in the harness either
    assert r2.stdout.split(": ", 1)[1] == r1.stdout.split(": ", 1)[1].splitlines()[0] + "\n"
    st2 = train.stat()
    assert (st2.st_mtime_ns, st2.st_ino) == (st1.st_mtime_ns, st1.st_ino)
    assert sorted(os.listdir(cache / "datasets")) == listing

    r3 = ok(prepare_text(folder, cache, "--quiet", "--force"))
    assert r3.stdout.startswith("prepared in ")
    st3 = train.stat()
    assert (st3.st_mtime_ns, st3.st_ino) != (st1.st_mtime_ns, st1.st_ino)
    assert train.read_bytes() == data1  # the same inputs rebuild the same tokens
    assert sorted(os.listdir(cache / "datasets")) == listing  # swapped in place, no leftovers
    current_dataset(cache).verify()


# ---------------------------------------------------------------- 4. atomic

@pytest.mark.parametrize("stage", ["tokenizer", "manifest", "rename"])
def test_killed_prepare_leaves_no_dataset_and_next_one_recovers(stage, corpus, tmp_path):
    cache = tmp_path / "cache"
    r = prepare_text(corpus.root, cache, "--quiet", env={"COCKPIT_PREPARE_KILL_AT": stage})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert visible_datasets(cache) == []
    assert leftovers(cache), "the kill should have left a half-built temporary folder"
    with pytest.raises(NotPreparedError):
        current_dataset(cache)

    r2 = ok(prepare_text(corpus.root, cache, "--quiet"))
    assert r2.stdout.startswith("prepared in ")
    assert leftovers(cache) == []
    ds = current_dataset(cache)
    ds.verify()
    assert sum(ds.manifest["counts"][f"{k}_docs"] for k in ("train", "val", "holdout")) == len(corpus.docs)


@pytest.mark.parametrize("stage", ["tokenizer", "manifest", "rename"])
def test_killed_force_rebuild_keeps_the_previous_dataset(stage, corpus, tmp_path):
    cache = tmp_path / "cache"
    ok(prepare_text(corpus.root, cache, "--quiet"))
    before = current_dataset(cache)
    data = (before.folder / "train.bin").read_bytes()

    r = prepare_text(corpus.root, cache, "--quiet", "--force", env={"COCKPIT_PREPARE_KILL_AT": stage})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    ds = current_dataset(cache)
    assert ds.folder == before.folder
    ds.verify()
    assert (ds.folder / "train.bin").read_bytes() == data


def test_noop_prepare_cleans_leftovers_of_a_killed_force(corpus, tmp_path):
    cache = tmp_path / "cache"
    ok(prepare_text(corpus.root, cache, "--quiet"))
    r = prepare_text(corpus.root, cache, "--quiet", "--force", env={"COCKPIT_PREPARE_KILL_AT": "rename"})
    assert r.returncode == -signal.SIGKILL
    assert leftovers(cache)
    r2 = ok(prepare_text(corpus.root, cache, "--quiet"))
    assert r2.stdout.startswith("already prepared")
    assert leftovers(cache) == []


# ---------------------------------------------------------------- 5. bad input

def _tiny(folder: Path, n: int = 3) -> Path:
    write_corpus(folder, n=n, seed=7)
    return folder


def _train_only(folder: Path, n: int = 30) -> Path:
    rng = random.Random(5)
    for i in range(n):
        write_doc(folder, pick_name(f"f{i}_{{}}.txt", want_val=False), paragraph(rng))
    return folder


def _bad_missing(t):
    return ["--text", t / "nope"], "no such folder"


def _bad_empty(t):
    (t / "empty").mkdir()
    return ["--text", t / "empty"], "has no files"


def _bad_not_a_folder(t):
    (t / "a.txt").write_text("hello\n")
    return ["--text", t / "a.txt"], "not a folder"


def _bad_glob(t):
    (t / "shards").mkdir()
    return ["--parquet", t / "shards" / "*.parquet"], "matches no files"


def _bad_corrupt_parquet(t):
    (t / "shards").mkdir()
    (t / "shards" / "x.parquet").write_bytes(bytes(random.Random(1).randrange(256) for _ in range(5000)))
    return ["--parquet", t / "shards" / "*.parquet"], "x.parquet"


def _bad_no_text_column(t):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (t / "shards").mkdir()
    pq.write_table(pa.table({"id": list(range(50)), "body": ["some words here"] * 50}), t / "shards" / "x.parquet")
    return ["--parquet", t / "shards" / "*.parquet"], "no 'text' column"


def _bad_vocab_too_large(t):
    return ["--text", _tiny(t / "tiny"), "--vocab-size", 60000], "too small"


def _bad_vocab_out_of_range(t):
    return ["--text", _tiny(t / "tiny"), "--vocab-size", 70000], "--vocab-size"


def _bad_val_fraction(t):
    return ["--text", _tiny(t / "tiny"), "--val-fraction", 0.7], "--val-fraction"


def _bad_no_val_docs(t):
    return ["--text", _train_only(t / "c"), "--vocab-size", 300], "too small"


def _bad_only_undecodable(t):
    (t / "c").mkdir()
    (t / "c" / "a.bin").write_bytes(b"\xff\xfe\x80 not utf-8 \xc3\x28")
    return ["--text", t / "c", "--vocab-size", 257], "no decodable text"


def _bad_dangling_symlink(t):
    folder = _tiny(t / "c", n=20)
    os.symlink(t / "gone.txt", folder / "link.txt")
    return ["--text", folder], "link.txt"


BAD_INPUTS = [
    _bad_missing, _bad_empty, _bad_not_a_folder, _bad_glob, _bad_corrupt_parquet, _bad_no_text_column,
    _bad_vocab_too_large, _bad_vocab_out_of_range, _bad_val_fraction, _bad_no_val_docs,
    _bad_only_undecodable, _bad_dangling_symlink,
]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=[f.__name__[5:] for f in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_leaves_nothing(make, tmp_path):
    args, needle = make(tmp_path)
    cache = tmp_path / "cache"
    # --quiet: without it the progress bar's lines share stderr with the error
    r = run_cli(["prepare", *args, "--quiet"], cache)
    assert r.returncode != 0
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cockpit: error: "), r.stderr
    assert needle in lines[0]
    assert r.stdout == ""
    assert not (cache / "datasets").exists() or list((cache / "datasets").iterdir()) == []
    assert not (cache / "current").exists()
    with pytest.raises(NotPreparedError):
        current_dataset(cache)


@pytest.mark.parametrize("flag", ["--vocab-size", "--val-fraction"])
def test_explicit_zero_is_rejected_not_replaced_by_the_default(flag, corpus, tmp_path):
    other = [] if flag == "--vocab-size" else ["--vocab-size", VOCAB]
    r = run_cli(["prepare", "--text", corpus.root, "--quiet", *other, flag, "0"], tmp_path / "cache")
    assert r.returncode == 2
    assert r.stderr.startswith(f"cockpit: error: {flag} must be between")


def test_non_utf8_file_name_does_not_crash(tmp_path):
    folder = tmp_path / "c"
    write_corpus(folder)
    try:
        with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as f:
            f.write(b"plain ascii content in a latin-1 named file\n")
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    r = prepare_text(folder, tmp_path / "cache", "--quiet")
    assert "Traceback" not in r.stderr
    assert r.returncode == 0


# ---------------------------------------------------------------- 6. undecodable files

def test_undecodable_files_are_skipped_and_counted(tmp_path):
    folder, cache = tmp_path / "c", tmp_path / "cache"
    docs = write_corpus(folder)
    (folder / "bad1.txt").write_bytes(b"\xff\xfe\x80 not utf-8 at all \xc3\x28")
    (folder / "pkg1" / "bad2.dat").write_bytes("café, déjà vu".encode("latin-1"))
    r = ok(prepare_text(folder, cache, "--quiet"))
    assert ", 2 undecodable files skipped" in r.stdout
    m = current_dataset(cache).manifest
    assert m["source"]["skipped_undecodable"] == 2
    assert sorted(m["source"]["skipped_examples"]) == ["bad1.txt", "pkg1/bad2.dat"]
    assert m["source"]["files"] == len(docs) + 2
    assert sum(m["counts"][f"{k}_docs"] for k in ("train", "val", "holdout")) == len(docs)
    # the no-op run reports the same
    r2 = ok(prepare_text(folder, cache, "--quiet"))
    assert r2.stdout.startswith("already prepared") and ", 2 undecodable files skipped" in r2.stdout


# ---------------------------------------------------------------- 7. parquet

def test_parquet_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(11)
    shards = tmp_path / "shards"
    shards.mkdir()
    expected: list[tuple[str, str]] = []  # (identity, text) in source order

    # shard a: with an id column; the identity is the id
    ids, texts = list(range(1000, 1300)), []
    for i in ids:
        t = paragraph(rng, 5, 15) if i % 37 else rng.choice(["", "   \n\t", None])
        texts.append(t)
        if t and t.strip():
            expected.append((str(i), t))
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": pa.array(texts, pa.string())}),
                   shards / "a.parquet", row_group_size=64)

    # shard b: text only; the identity is the text's hash
    texts = []
    for i in range(300):
        t = paragraph(rng, 5, 15) if i % 41 else rng.choice(["", "  ", None])
        texts.append(t)
        if t and t.strip():
            expected.append((hashlib.sha1(t.encode()).hexdigest(), t))
    pq.write_table(pa.table({"text": pa.array(texts, pa.string()), "n": list(range(300))}),
                   shards / "b.parquet", row_group_size=100)
    (shards / "notes.txt").write_text("not matched by the glob\n")

    cache = tmp_path / "cache"
    r = ok(run_cli(["prepare", "--parquet", shards / "*.parquet", "--vocab-size", VOCAB, "--quiet"], cache))
    assert r.stdout.startswith("prepared in ")
    ds = current_dataset(cache)
    c = ds.manifest["counts"]
    assert ds.manifest["source"]["kind"] == "parquet"
    assert ds.manifest["source"]["files"] == 2
    assert c["train_docs"] + c["val_docs"] + c["holdout_docs"] == len(expected) < 600
    assert decoded_docs(ds, "val") == [t for ident, t in expected if is_val(ident, VAL_FRACTION)]
    assert decoded_docs(ds, "train") == [t for ident, t in expected if split_of(ident, VAL_FRACTION) == "train"]
    ds.verify()

    r2 = ok(run_cli(["prepare", "--parquet", shards / "*.parquet", "--vocab-size", VOCAB, "--quiet"], cache))
    assert r2.stdout.startswith("already prepared")


# ---------------------------------------------------------------- 8. integrity

def _harness_py_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.py") if "__pycache__" not in p.parts]


def test_prepare_locks_the_harness(prepared):
    n = len(_harness_py_files(REPO / "harness"))
    assert f"harness locked: {n} files hashed into {prepared.cache}" in prepared.result.stdout
    verify_harness(prepared.cache)


@pytest.mark.parametrize("name", ["train.bin", "val.bin", "train_docs.npy", "tokenizer.tiktoken", "token_bytes.npy"])
def test_changed_data_file_fails_verification(name, prepared, tmp_path):
    folder = tmp_path / "ds"
    shutil.copytree(prepared.ds.folder, folder)
    ds = open_dataset(folder)
    ds.verify()
    p = folder / name
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=re.escape(name)) as e:
        ds.verify()
    assert "cockpit prepare --force" in str(e.value)


def test_missing_data_file_fails_verification(prepared, tmp_path):
    folder = tmp_path / "ds"
    shutil.copytree(prepared.ds.folder, folder)
    (folder / "val.bin").unlink()
    with pytest.raises(IntegrityError, match=r"missing: .*val\.bin"):
        open_dataset(folder).verify()


def test_harness_lock_detects_edits(tmp_path):
    copy = tmp_path / "harness"
    shutil.copytree(REPO / "harness", copy, ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError, match="not locked"):
        verify_harness(cache, harness_dir=copy)
    assert lock_harness(cache, harness_dir=copy) is True
    assert lock_harness(cache, harness_dir=copy) is False  # unchanged: nothing to re-lock
    verify_harness(cache, harness_dir=copy)

    with open(copy / "evaluate.py", "a") as f:
        f.write("\n# an innocent-looking comment\n")
    with pytest.raises(IntegrityError, match=r"harness/evaluate\.py"):
        verify_harness(cache, harness_dir=copy)

    (copy / "sneaky.py").write_text("x = 1\n")
    with pytest.raises(IntegrityError, match=r"\+1 more"):
        verify_harness(cache, harness_dir=copy)

    assert lock_harness(cache, harness_dir=copy) is True  # re-lock after review
    verify_harness(cache, harness_dir=copy)
    (copy / "sneaky.py").unlink()
    with pytest.raises(IntegrityError, match=r"harness/sneaky\.py"):
        verify_harness(cache, harness_dir=copy)


# ---------------------------------------------------------------- the built-in corpus

@pytest.mark.slow
def test_default_source_is_the_stdlib(tmp_path):
    cache = tmp_path / "cache"
    r = ok(run_cli(["prepare", "--quiet"], cache, timeout=180))
    assert r.stderr.splitlines() == [l for l in r.stderr.splitlines() if l.startswith("source: the Python standard library at ")]
    assert len(r.stderr.splitlines()) == 1
    assert r.stdout.startswith("prepared in ") and "vocab 8192" in r.stdout
    ds = current_dataset(cache)
    assert ds.manifest["source"]["kind"] == "stdlib"
    assert ds.manifest["source"]["files"] > 500
    assert ds.vocab_size == 8192 and ds.bos_id == 8191
    verify_harness(cache)
