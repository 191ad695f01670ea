"""``headwater sc backup|restore``: copies of the SC's metadata database (edge/sc/backup.py)."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path
from typing import NoReturn

import typer

from edge.cli.common import human_bytes, print_table
from edge.protocol.errors import HeadwaterError
from edge.sc.backup import (
    PRODUCER_ID_MARGIN,
    Backup,
    BackupError,
    check_backup,
    make_backup,
    restore,
)

sc_app = typer.Typer(
    help="The SC's metadata database: consistent online backups, and restore into a "
         "stopped SC. See docs/OPERATIONS.md, \"Backup and restore\".",
    no_args_is_help=True)


# --- commands ---------------------------------------------------------------


@sc_app.command("backup")
def backup_cmd(
    out: Path = typer.Argument(..., help="Backup directory to create (MANIFEST.json and the "
                               "database files)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The SC's data directory "
                                         "(data_dir of sc.toml; DATA/sc for headwater local)."),
    config: Path | None = typer.Option(None, "--config", help="Take data_dir from this "
                                       "sc.toml instead."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Copy the SC's metadata (topics, SPUs, sites, ACLs, group positions) while it runs.

    Uses SQLite's online backup API: one consistent snapshot per database file,
    written to a temporary directory, fsynced and renamed to OUT. Run it as the
    SC's user (it reads the database and its WAL)."""
    src = _data_dir(data_dir, config)
    try:
        made = make_backup(src, out, force=force)
    except (BackupError, OSError, sqlite3.Error) as exc:
        _fail(exc)
    typer.echo(f"backup of {src} written to {out} (cluster {made.main.cluster_id})")
    print_table([[d.name, human_bytes(d.size), d.sha256[:16]] for d in made.dbs],
                ["file", "size", "sha256"])
    typer.echo(_summary(made))


@sc_app.command("restore")
def restore_cmd(
    backup: Path = typer.Argument(..., help="A directory written by `headwater sc backup`, "
                                  "or one SQLite file of an SC (e.g. a kept-aside "
                                  "before-restore-*/metadata.sqlite)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The stopped SC's data "
                                         "directory (created if missing)."),
    config: Path | None = typer.Option(None, "--config", help="Take data_dir from this "
                                       "sc.toml instead."),
    force: bool = typer.Option(False, "--force", help="Restore even when the data directory "
                               "holds another cluster's database."),
) -> None:
    """Put a backup in place of a stopped SC's database.

    Refused while an SC has the database open. Checks the backup first (manifest
    checksums, PRAGMA integrity_check, the SC's tables and cluster id), keeps the
    files it replaces in a before-restore-TIME directory of the data directory, and
    moves the producer-id counter past every id the old database may have handed out. Start the SC
    afterwards; the SPUs register with it again by themselves."""
    dest = _data_dir(data_dir, config)
    try:
        checked = check_backup(backup)
        aside = restore(checked, dest, force=force)
    except (BackupError, OSError, sqlite3.Error) as exc:
        _fail(exc)
    taken = _when(checked.created_ms)
    typer.echo(f"restored {backup} ({taken}, cluster {checked.main.cluster_id}) into {dest}")
    typer.echo(_summary(checked))
    if aside is not None:
        typer.echo(f"the replaced files are in {aside}")
    first = (checked.main.next_producer_id or 1) + PRODUCER_ID_MARGIN
    typer.echo(f"producer ids now start at {first}")
    typer.echo("start the SC now; the SPUs set aside the data of topics created after the "
               "backup when they register (docs/OPERATIONS.md, \"Backup and restore\")")


def _fail(exc: BaseException) -> NoReturn:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
        text = f"SQLite: {text}"
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _data_dir(data_dir: Path | None, config: Path | None) -> Path:
    if (data_dir is None) == (config is None):
        typer.secho("error: give the SC's data directory: --data-dir DIR or --config sc.toml",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if data_dir is not None:
        return data_dir
    from edge.config import ConfigError, load_toml

    assert config is not None
    try:
        value = load_toml(config).get("data_dir")
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    if not isinstance(value, str) or not value:
        typer.secho(f"error: {config} sets no data_dir", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return Path(value)


def _summary(b: Backup) -> str:
    c = b.counts()
    return (f"{c['topics']} topic(s), {c['partitions']} partition(s), {c['spus']} SPU(s), "
            f"{c['sites']} site(s), {c['mirrors']} mirror partition(s), {c['acls']} ACL(s), "
            f"{c['tokens']} token(s), {c['groups']} consumer group(s) with "
            f"{c['group_offsets']} position(s)")


def _when(ms: int | None) -> str:
    if ms is None:
        return "time unknown"
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return "taken " + when.strftime("%Y-%m-%dT%H:%M:%SZ")




@sc_app.command("migrate")
def migrate_cmd(
    to: str = typer.Option(..., "--to", help="etcd://HOST:PORT,HOST:PORT,... of the etcd "
                           "cluster the SCs will share."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The STOPPED SC's data "
                                         "directory."),
    config: Path | None = typer.Option(None, "--config", help="Take data_dir (and the [etcd] "
                                       "settings: prefix, TLS, user) from this sc.toml."),
    prefix: str | None = typer.Option(None, "--prefix", help="Key prefix in etcd (default "
                                      "the [etcd] prefix, else /headwater)."),
) -> None:
    """Copy an SQLite SC's metadata into an empty etcd prefix, for `metadata = "etcd://..."`.

    The SC must be stopped (its database is read as it is). Afterwards set
    metadata = "etcd://..." in every SC's sc.toml and start them."""
    from edge.config import load_toml
    from edge.sc.config import EtcdSettings, parse_metadata
    from edge.sc.etcd_store import migrate_from_sqlite
    from edge.sc.ha import etcd_client
    from edge.sc.store import DataDirLock

    src = _data_dir(data_dir, config)
    try:
        table = load_toml(config).get("etcd") if config is not None else None
        settings = parse_metadata(to, table)
        assert settings is not None
        if prefix is not None:
            settings = EtcdSettings(**{**settings.__dict__, "prefix": prefix})
        lock = DataDirLock(src)  # refused while an SC runs on it
    except (HeadwaterError, OSError, BackupError) as exc:
        _fail(exc)
    try:
        counts = migrate_from_sqlite(src / "metadata.sqlite", etcd_client(settings),
                                     f"{settings.prefix}")
    except (HeadwaterError, ValueError, OSError, sqlite3.Error) as exc:
        _fail(exc)
    finally:
        lock.close()
    typer.echo(f"copied {src / 'metadata.sqlite'} to {to} under {settings.prefix}: "
               + ", ".join(f"{v} {k}" for k, v in counts.items()))
    typer.echo(f'next: metadata = "{to}" in every SC\'s sc.toml'
               + (f' with [etcd] prefix = "{settings.prefix}"' if prefix else "")
               + "; start them (one becomes active)")
