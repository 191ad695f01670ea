"""``headwater sc backup|restore``: copies of the SC's metadata database.

The SC keeps topics, partitions, SPUs, sites, ACLs and consumer-group positions
in SQLite files in its data directory (WAL mode: a plain file copy of a live
database can miss the WAL or tear a page, so backups use SQLite's online backup
API, which copies one consistent snapshot while the SC keeps writing).

A backup is a directory::

    OUT/
      MANIFEST.json      format, version, cluster id, time, per file: bytes + sha256, counts
      metadata.sqlite    self-contained (rollback journal mode, no -wal beside it)

Every ``*.sqlite`` file of the data directory is copied, so a store split into a
file of its own is covered without a change here. Restore needs the SC stopped:
a running SC holds SQLite's shared lock on its database for as long as it is
open, and restore tries to take that same lock (the byte ranges of SQLite's
unix locking protocol, which every process using the file honours) and keeps
it while it swaps the files; it also takes the SC's own lock of the directory
(``sc.lock``, held by a running SC for its lifetime), so no SC starts meanwhile.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple

from edge.protocol.errors import StorageError
from edge.sc.store import DataDirLock
from edge.storage.fileio import write_atomic

MAIN_DB: Final = "metadata.sqlite"  # edge/sc/service.py: MetadataStore and GroupStore
MANIFEST: Final = "MANIFEST.json"
FORMAT: Final = "headwater-sc-backup"
FORMAT_VERSION: Final = 1
# Producer ids handed out after the backup must not be handed out again (an SPU
# would take a new producer's first batches for retries of the old one's): a
# restore moves the counter this far ahead, a small part of the i64 id space.
PRODUCER_ID_MARGIN: Final = 2**32
ASIDE_PREFIX: Final = "before-restore-"
BUSY_TIMEOUT_S: Final = 10.0
# SQLite's unix locking (os_unix.c, www.sqlite.org/lockingv3.html): a SHARED lock
# is a read lock on 510 bytes after the pending byte, which every connection of a
# WAL database holds while it is open; a WAL connection also read-locks byte 128 of
# the -shm file (the "DMS" lock of www.sqlite.org/walformat.html).
_SHARED_FIRST: Final = 0x40000000 + 2
_SHARED_SIZE: Final = 510
_SHM_DMS: Final = 128
_SIDE_FILES: Final = ("-wal", "-shm", "-journal")
_COUNTED: Final[tuple[str, ...]] = ("topics", "partitions", "spus", "sites", "mirrors",
                                    "acls", "tokens", "groups", "group_offsets")
_REQUIRED: Final[tuple[str, ...]] = ("meta", "topics", "partitions", "spus")

class BackupError(Exception):
    """A backup or restore that cannot go on; the message is one line for the operator."""


class DbInfo(NamedTuple):
    """One checked database file of a backup."""

    name: str
    path: Path
    size: int
    sha256: str
    counts: dict[str, int]
    cluster_id: str | None
    next_producer_id: int | None


class Backup(NamedTuple):
    path: Path
    dbs: list[DbInfo]
    created_ms: int | None

    @property
    def main(self) -> DbInfo:
        return next(d for d in self.dbs if d.name == MAIN_DB)

    def counts(self) -> dict[str, int]:
        total = dict.fromkeys(_COUNTED, 0)
        for db in self.dbs:
            for k, v in db.counts.items():
                total[k] += v
        return total


# --- backup -----------------------------------------------------------------


def databases(data_dir: Path) -> list[Path]:
    """The SC's database files in ``data_dir``, the main one first."""
    if not data_dir.is_dir():
        raise BackupError(f"{data_dir} is not a directory (give the SC's data_dir)")
    found = sorted(p for p in data_dir.glob("*.sqlite") if p.is_file())
    if data_dir / MAIN_DB not in found:
        raise BackupError(f"no SC database in {data_dir} ({MAIN_DB} missing; give the SC's "
                          "data_dir, for headwater local DATA/sc)")
    found.remove(data_dir / MAIN_DB)
    return [data_dir / MAIN_DB, *found]


def make_backup(data_dir: Path, out: Path, *, force: bool = False) -> Backup:
    """Snapshot every database of ``data_dir`` into the new directory ``out``."""
    sources = databases(data_dir)
    if (out.exists() or out.is_symlink()) and not force:
        raise BackupError(f"{out} exists; choose another name or pass --force to replace it")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise BackupError(f"{parent} does not exist")
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        dbs = [_snapshot(src, tmp / src.name) for src in sources]
        made = Backup(out, dbs, int(time.time() * 1000))
        _write_manifest(tmp, made, data_dir)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return made._replace(dbs=[d._replace(path=out / d.name) for d in dbs])


def _snapshot(src: Path, dst: Path) -> DbInfo:
    """One consistent copy of ``src`` (live, WAL) as a self-contained file ``dst``."""
    with _connect(src, readonly=True) as source, _connect(dst) as target:
        try:
            source.backup(target)
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{src} is not an SQLite database ({exc})") from None
        target.execute("PRAGMA journal_mode=DELETE")
    _fsync(dst)
    return inspect_db(dst, name=src.name, label=src)


def _write_manifest(directory: Path, b: Backup, source: Path) -> None:
    from edge import __version__

    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "created_ms": b.created_ms,
        "headwater": __version__, "source": str(source.absolute()),
        "cluster_id": b.main.cluster_id, "counts": b.counts(),
        "files": {d.name: {"bytes": d.size, "sha256": d.sha256} for d in b.dbs},
    }
    fd = os.open(directory, os.O_RDONLY)
    try:
        write_atomic(directory, fd, MANIFEST,
                     (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out`` (an old ``out`` goes only after that)."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.absolute().parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    _fsync(out.absolute().parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


# --- checks -----------------------------------------------------------------


def inspect_db(path: Path, *, name: str | None = None, label: Path | None = None
               ) -> DbInfo:
    """Integrity-check one SQLite file and count what it holds (errors name ``label``,
    the file the operator knows, when ``path`` is a copy of it)."""
    shown = label or path
    with _connect(path, readonly=True) as db:
        try:
            verdict = [str(r[0]) for r in db.execute("PRAGMA integrity_check(5)")]
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{shown} is not an SQLite database ({exc})") from None
        if verdict != ["ok"]:
            raise BackupError(f"{shown} is damaged: integrity_check says "
                              f"{'; '.join(verdict)}")
        tables = {str(r[0]) for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        counts = {t: int(db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # noqa: S608
                  for t in _COUNTED if t in tables}
        meta: dict[str, str] = {}
        if "meta" in tables:
            meta = {str(k): str(v) for k, v in db.execute("SELECT key, value FROM meta")}
    name = name or path.name
    if name == MAIN_DB:
        missing = [t for t in _REQUIRED if t not in tables]
        if missing or "cluster_id" not in meta:
            what = f"tables {', '.join(missing)}" if missing else "cluster_id"
            raise BackupError(f"{shown} is not a Headwater SC database (no {what})")
    pid = meta.get("next_producer_id")
    return DbInfo(name, path, path.stat().st_size, _sha256(path), counts,
                  meta.get("cluster_id"), int(pid) if pid and pid.isdigit() else None)


def check_backup(path: Path) -> Backup:
    """A backup directory (manifest checked) or a single SC database file."""
    if path.is_file():
        return Backup(path, [inspect_db(path, name=MAIN_DB)], None)
    if not path.is_dir():
        raise BackupError(f"{path} does not exist")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{path} is not an SC backup (no {MANIFEST}; made by "
                          "`headwater sc backup`?)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(f"{path / MANIFEST} is not valid JSON ({exc})") from None
    files = _manifest_files(path, manifest)
    dbs = []
    for name, (size, digest) in files.items():
        db = path / name
        if not db.is_file() or db.stat().st_size != size or _sha256(db) != digest:
            raise BackupError(f"{db} does not match {MANIFEST} (missing, truncated or "
                              "changed): use another backup")
        dbs.append(inspect_db(db))
    created = manifest.get("created_ms")
    return Backup(path, dbs, created if isinstance(created, int) else None)


def _manifest_files(path: Path, manifest: Any) -> dict[str, tuple[int, str]]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path / MANIFEST} is not an SC backup manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BackupError(f"{path} is backup format {version!r}, newer than this Headwater "
                          f"reads ({FORMAT_VERSION}): restore it with the version that made it")
    files = manifest.get("files")
    if not isinstance(files, dict) or MAIN_DB not in files:
        raise BackupError(f"{path / MANIFEST} lists no {MAIN_DB}")
    out: dict[str, tuple[int, str]] = {}
    for name, entry in files.items():
        if (not isinstance(name, str) or "/" in name or not name.endswith(".sqlite")
                or not isinstance(entry, dict)):
            raise BackupError(f"{path / MANIFEST}: bad file entry {name!r}")
        out[name] = (int(entry.get("bytes", -1)), str(entry.get("sha256", "")))
    return out


# --- restore ----------------------------------------------------------------


def restore(b: Backup, data_dir: Path, *, force: bool = False) -> Path | None:
    """Replace the databases of the stopped SC of ``data_dir`` by the backup ``b``;
    returns the directory holding the replaced files (None if there were none)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({d.name for d in b.dbs} | {p.name for p in data_dir.glob("*.sqlite")})
    _check_cluster(data_dir / MAIN_DB, b.main.cluster_id, force=force)
    staged: list[tuple[Path, str]] = []
    with _sc_lock(data_dir), _held_locks([data_dir / n for n in names]):
        try:
            for db in b.dbs:
                staged.append(_stage(db, data_dir))
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
        aside = _move_aside(data_dir, names)
        for tmp, name in staged:
            tmp.rename(data_dir / name)
        _fsync(data_dir)
    return aside


def _check_cluster(current: Path, wanted: str | None, *, force: bool) -> None:
    """Refuse to put one cluster's database over another's unless forced."""
    if force or not current.is_file():
        return
    try:
        with _connect(current, readonly=True) as db:
            row = db.execute("SELECT value FROM meta WHERE key='cluster_id'").fetchone()
    except sqlite3.Error:
        return  # unreadable or damaged: being replaced is what it needs
    if row is not None and str(row[0]) != wanted:
        raise BackupError(f"{current} belongs to cluster {row[0]}, the backup to cluster "
                          f"{wanted}; pass --force to replace it anyway")


@contextlib.contextmanager
def _sc_lock(data_dir: Path) -> Iterator[None]:
    """Hold the SC's own lock of ``data_dir`` (``sc.lock``): a running SC holds it, and
    none can start while it is held here."""
    try:
        lock = DataDirLock(data_dir)
    except StorageError as exc:
        pid = exc.data.get("pid")
        held = f" as PID {pid}" if pid is not None else ""
        raise BackupError(f"the SC using {data_dir} is running{held} (it holds sc.lock): stop "
                          "it (systemctl stop headwater-sc), then run restore again") from None
    try:
        yield
    finally:
        lock.close()


@contextlib.contextmanager
def _held_locks(paths: list[Path]) -> Iterator[None]:
    """Hold SQLite's own locks on ``paths`` (and their -shm) so that no SC has them
    open now nor opens them until the swap is done."""
    fds: list[int] = []
    try:
        for path in paths:
            for file, start, length in ((path, _SHARED_FIRST, _SHARED_SIZE),
                                        (Path(f"{path}-shm"), _SHM_DMS, 1)):
                if file.is_file():
                    fds.append(_lock(file, start, length, db=path))
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _lock(file: Path, start: int, length: int, *, db: Path) -> int:
    fd = os.open(file, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise BackupError(f"the SC using {db.parent} is running ({db.name} is open in "
                              "another process): stop it (systemctl stop headwater-sc), then "
                              "run restore again") from None
        raise
    return fd


def _stage(db: DbInfo, data_dir: Path) -> tuple[Path, str]:
    """Copy one backup file next to its final place, producer-id counter advanced."""
    tmp = data_dir / f".{db.name}.restore-{os.getpid()}"
    for stale in (tmp, *(Path(f"{tmp}{s}") for s in _SIDE_FILES)):
        stale.unlink(missing_ok=True)
    try:
        with _connect(db.path, readonly=True) as source, _connect(tmp) as target:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
            if db.name == MAIN_DB:
                first = (db.next_producer_id or 1) + PRODUCER_ID_MARGIN
                target.execute("UPDATE meta SET value=? WHERE key='next_producer_id'",
                               (str(first),))
        _fsync(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, db.name


def _move_aside(data_dir: Path, names: list[str]) -> Path | None:
    present = [p for n in names for p in (data_dir / n, *(data_dir / f"{n}{s}"
                                                          for s in _SIDE_FILES))
               if p.exists()]
    if not present:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = data_dir / f"{ASIDE_PREFIX}{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = data_dir / f"{ASIDE_PREFIX}{stamp}-{n}"
    aside.mkdir()
    for p in present:
        p.rename(aside / p.name)
    _fsync(aside)
    return aside


# --- files ------------------------------------------------------------------


@contextlib.contextmanager
def _connect(path: Path, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    uri = f"file:{path.absolute()}?mode={'ro' if readonly else 'rwc'}"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.OperationalError as exc:
        raise BackupError(f"cannot open {path}: {exc}") from None
    try:
        yield db
    finally:
        db.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
