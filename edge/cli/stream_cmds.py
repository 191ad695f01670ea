"""``headwater produce`` and ``headwater consume``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any, NamedTuple

import typer

from edge.cli.common import Target, complete_from, fail, parse_time_ms, run, target
from edge.client import Acks, Admin, Consumer, Offset, Producer, SkippedBatch
from edge.client.group import check_session_timeout
from edge.config import ConfigError, parse_duration_ms
from edge.protocol.batch import Record
from edge.protocol.errors import HeadwaterError, InvalidRequest
from edge.protocol.groups import DEFAULT_SESSION_TIMEOUT_MS

READ_CHUNK = 256 * 1024
# A stored position trails what was printed by at most this much: after a crash
# up to a second of records is printed again (at-least-once).
COMMIT_EVERY_S = 1.0


def produce(
    ctx: typer.Context,
    topic: str = typer.Argument(..., help="Topic to write to."),
    file: Path | None = typer.Option(None, "--file", "-f", help="Read records from this file "
                                     "(one per line) with a progress bar, instead of stdin."),
    key_separator: str | None = typer.Option(None, help="Split each line at the first SEP "
                                             "into key and value."),
    partition: int | None = typer.Option(None, "--partition", "-p", help="Write to this "
                                         "partition (default by key, else spread)."),
    acks: str = typer.Option("leader", help="none, leader or all.",
                             autocompletion=complete_from("none", "leader", "all")),
    linger_ms: float = typer.Option(5.0, help="Wait up to this long to fill a batch."),
    batch_bytes: int = typer.Option(64 * 1024, help="Send a batch at this size."),
    compression: str | None = typer.Option(None, help="none or zlib (default the topic's)."),
    message: list[str] = typer.Option([], "--message", "-m", help="Write this value instead "
                                      "of reading stdin (repeatable: one record each)."),
    key: str | None = typer.Option(None, "--key", help="Key of every record written."),
    header: list[str] = typer.Option([], "--header", "-H", help="A record header K=V "
                                     "(repeatable)."),
) -> None:
    """Write one record per line of stdin (or --file, or each -m VALUE) to TOPIC."""
    try:
        acks_value = Acks.parse(acks)
    except ValueError as exc:
        fail(str(exc), 2)
    if compression not in (None, "none", "zlib"):
        fail(f"--compression must be none or zlib, not {compression!r}", 2)
    headers = _headers(header)
    if message and file is not None:
        fail("give --message or --file, not both", 2)
    if key is not None and key_separator is not None:
        fail("give --key or --key-separator, not both", 2)
    fixed_key = key.encode() if key is not None else None
    t = target(ctx)
    sep = key_separator.encode() if key_separator else None
    if file is not None and not file.is_file():
        fail(f"{file} is not a readable file")
    size = file.stat().st_size if file is not None else 0

    async def main() -> int:
        async with Producer(t.sc, acks=acks_value, linger_ms=linger_ms,
                            batch_bytes=batch_bytes, compression=compression, ssl=t.ssl(),
                            server_hostname=t.server_name, token=t.token) as producer:
            stamp = _Stamp(fixed_key, headers or None)
            if message:
                for value in message:
                    await producer.send(topic, value.encode(), key=stamp.key,
                                        headers=stamp.headers, partition=partition)
                count = len(message)
            elif file is not None:
                with file.open("rb") as f, typer.progressbar(
                        length=size, label=f"producing {file.name}", file=sys.stderr) as bar:
                    count = await _produce_lines(producer, topic, f, sep, partition, bar.update,
                                                 stamp)
            else:
                count = await _produce_lines(producer, topic, sys.stdin.buffer, sep, partition,
                                             None, stamp)
            await producer.flush()
            return count

    start = time.perf_counter()
    count = run(main, what=f"produce to {topic}", target_=t)
    secs = time.perf_counter() - start
    typer.echo(f"produced {count} record(s) to {topic} in {secs:.2f}s", err=True)


def _headers(pairs: list[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--header {pair!r}: give NAME=VALUE", 2)
        out[name] = value.encode()
    return out


class _Stamp(NamedTuple):
    """What --key and --header put on every record."""

    key: bytes | None
    headers: dict[str, bytes] | None


async def _produce_lines(producer: Producer, topic: str, f: IO[bytes], sep: bytes | None,
                         partition: int | None, progress: Any, stamp: _Stamp) -> int:
    count = 0
    carry = b""
    while True:
        # read1 returns what is there: interactive input is sent line by line,
        # bulk input in large chunks, and the event loop keeps running meanwhile.
        chunk = await asyncio.to_thread(f.read1, READ_CHUNK)  # type: ignore[attr-defined]
        if progress is not None:
            progress(len(chunk))
        if not chunk:
            lines = [carry] if carry else []
        else:
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
        for raw in lines:
            value = raw.removesuffix(b"\r")
            key = stamp.key
            if sep is not None and sep in value:
                key, value = value.split(sep, 1)
            await producer.send(topic, value, key=key, headers=stamp.headers,
                                partition=partition)
            count += 1
        if not chunk:
            return count


def consume(
    ctx: typer.Context,
    topic: str = typer.Argument(..., help="Topic to read."),
    from_beginning: bool = typer.Option(False, "--from-beginning", "-B",
                                        help="Start at the oldest record."),
    offset: int | None = typer.Option(None, "--offset", "-o", help="Start at this offset; "
                                      "negative: that many before the end (-o -5, as kcat)."),
    tail: int | None = typer.Option(None, "--tail", "-T", help="Start N records before the end."),
    since: str | None = typer.Option(None, "--since", help="Start at the first record written "
                                     "this long ago or later (10m, 2h, 7d)."),
    from_time: str | None = typer.Option(None, "--from-time", help="Start at the first record "
                                         "at or after this time: ISO 8601 (2026-12-03T10:00, "
                                         "local time unless it has an offset) or ms since "
                                         "the epoch."),
    end: int | None = typer.Option(None, "--end", help="Stop after this offset."),
    disable_continuous: bool = typer.Option(False, "--disable-continuous", "-d",
                                            help="Stop at the current end instead of following."),
    partition: int | None = typer.Option(None, "--partition", "-p",
                                         help="Only this partition (default all)."),
    show_keys: bool = typer.Option(False, "--key-value", "-k", help="Print keys too."),
    fmt: str | None = typer.Option(None, "--format", help="Template with {offset} {partition} "
                                   "{key} {value} {timestamp} {time}."),
    output: str = typer.Option("text", "--output", "-O", help="text or json (one object a line).",
                               autocompletion=complete_from("text", "json")),
    consumer_name: str | None = typer.Option(None, "--consumer", help="Resume from the position "
                                             "stored under NAME and store it as you go."),
    site: str | None = typer.Option(None, "--site", help="On a cloud cluster: only the "
                                    "partitions mirrored from this edge site."),
    skip_unreadable: bool = typer.Option(False, "--skip-unreadable", help="Go past a batch "
                                         "that cannot be read (damaged on disk) to the next "
                                         "readable offset, saying so on stderr, instead of "
                                         "stopping there."),
    group: str | None = typer.Option(None, "--group", "-g", help="Share the partitions with "
                                     "the other members of consumer group NAME; resume from "
                                     "its positions and store them as you go."),
    count: int | None = typer.Option(None, "--count", "-n", min=1, help="Stop after N "
                                     "records (not with --consumer or --group)."),
    session_timeout: str = typer.Option("6s", help="With --group: a member silent this long "
                                        "loses its partitions (1s..5m)."),
) -> None:
    """Print records of TOPIC; follows new records until Ctrl-C unless -d."""
    if output not in ("text", "json"):
        fail("--output must be text or json", 2)
    starts = (offset, tail, from_beginning or None, since, from_time)
    if sum(x is not None for x in starts) > 1:
        fail("choose one of --from-beginning, --offset, --tail, --since, --from-time", 2)
    if count is not None and (consumer_name is not None or group is not None):
        fail("--count stops part-way through what was fetched, so it does not go with "
             "--consumer or --group (their stored position would skip records)", 2)
    session_s = _group_options(group, session_timeout, consumer=consumer_name,
                               partition=partition, end=end, site=site,
                               disable_continuous=disable_continuous)
    if offset is not None and offset < 0:
        tail = -offset
        offset = None
    start = (Offset.beginning() if from_beginning else Offset.absolute(offset)
             if offset is not None else Offset.from_end(tail) if tail is not None
             else _start_time(since, from_time) or Offset.end())
    t = target(ctx)
    storing = consumer_name is not None or group is not None

    async def main() -> None:
        chosen: int | list[int] | None = partition
        if site is not None:
            chosen = await _site_partitions(t, site, topic, partition)
        async with Consumer(t.sc, topic, partition=chosen, offset=start,
                            consumer=consumer_name, group=group, session_timeout_s=session_s,
                            client_label=_client_label(), on_revoke=_commit,
                            stop_at_end=disable_continuous, end_offset=end, ssl=t.ssl(),
                            server_hostname=t.server_name, token=t.token,
                            skip_unreadable=skip_unreadable, on_skip=_report_skip) as consumer:
            committer = (asyncio.create_task(_commit_every(consumer, COMMIT_EVERY_S),
                                             name="commit") if storing else None)
            try:
                left = count
                async for chunk in consumer.batches():
                    lines = [_render(r, chunk.partition, output, fmt, show_keys)
                             for r in chunk.records[:left]]
                    if lines:
                        sys.stdout.write("\n".join(lines) + "\n")
                    if left is not None:
                        left -= len(lines)
                        if left <= 0:
                            break
                sys.stdout.flush()
            finally:
                if committer is not None:
                    committer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await committer
                    await _commit(consumer)

    with contextlib.suppress(BrokenPipeError):  # `| head` closed the pipe: done
        run(main, what=f"consume {topic}", target_=t)


def _start_time(since: str | None, from_time: str | None) -> Offset | None:
    """``--since``/``--from-time`` as a start offset (the first record at or after it)."""
    if from_time is not None:
        return Offset.timestamp(parse_time_ms(from_time, "--from-time"))
    if since is None:
        return None
    if since.strip().isdigit():  # 10 would be 10 ms: nobody means that
        fail(f"--since: {since!r} needs a unit (examples: 30s, 10m, 2h, 7d)", 2)
    try:
        ago = parse_duration_ms(since)
    except ConfigError as exc:
        fail(f"--since: {exc}", 2)
    return Offset.timestamp(int(time.time() * 1000) - ago)


def _report_skip(skip: SkippedBatch) -> None:
    typer.echo(f"skipped unreadable records {skip.offset}..{skip.next_offset - 1} of "
               f"{skip.topic}/{skip.partition}: {skip.reason}", err=True)


async def _commit_every(consumer: Consumer, seconds: float) -> None:
    """Store the position of what was printed, every ``seconds``. The loop that
    prints never awaits between handing out a chunk and writing it, so whatever
    was handed out when this runs has been written."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await _commit(consumer)
        except HeadwaterError as exc:
            if not exc.retriable:
                raise
            logging.getLogger(__name__).info("commit failed (%s); retrying", exc)


async def _commit(consumer: Consumer) -> None:
    # Printed means handed over: flush first, or a crash loses lines whose
    # position was already stored.
    sys.stdout.flush()
    await consumer.commit()


def _group_options(group: str | None, session_timeout: str, **others: object) -> float:
    """The session timeout in seconds; refuses options a group member cannot take."""
    if group is None:
        return DEFAULT_SESSION_TIMEOUT_MS / 1000
    clash = [name.replace("_", "-") for name, value in others.items()
             if value is not None and value is not False]
    if clash:
        fail(f"--group reads the partitions the group assigns: it does not combine with "
             f"--{', --'.join(clash)}", 2)
    try:
        seconds = parse_duration_ms(session_timeout) / 1000
        check_session_timeout(seconds)
    except (ConfigError, ValueError) as exc:
        fail(f"--session-timeout: {exc}", 2)
    return seconds


def _client_label() -> str:
    """How this member shows in ``consumer list``: host and process id."""
    return f"{socket.gethostname()}/{os.getpid()}"


async def _site_partitions(t: Target, site: str, topic: str, partition: int | None
                           ) -> list[int]:
    async with Admin(t.sc, ssl=t.ssl(), server_hostname=t.server_name, token=t.token) as admin:
        parts = await admin.site_partitions(site, topic)
    if not parts:
        raise InvalidRequest(f"site {site!r} mirrors nothing into {topic!r} yet")
    if partition is not None:
        if partition not in parts:
            raise InvalidRequest(f"partition {partition} of {topic} is not site {site!r}'s")
        return [partition]
    return parts


def _text(data: bytes | None) -> str:
    if data is None:
        return "null"
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "b64:" + base64.b64encode(data).decode()


def _render(r: Record, partition: int, output: str, fmt: str | None, show_keys: bool) -> str:
    if output == "json":
        return json.dumps(_json_record(r, partition), separators=(",", ":"))
    if fmt is not None:
        return fmt.format(offset=r.offset, partition=partition, key=_text(r.key),
                          value=_text(r.value), timestamp=r.timestamp,
                          time=time.strftime("%Y-%m-%dT%H:%M:%S",
                                             time.localtime(r.timestamp / 1000)))
    if show_keys:
        return f"[{_text(r.key)}] {_text(r.value)}"
    return _text(r.value)


def _json_record(r: Record, partition: int) -> dict[str, Any]:
    out: dict[str, Any] = {"partition": partition, "offset": r.offset, "timestamp": r.timestamp}
    for name, data in (("key", r.key), ("value", r.value)):
        if data is None:
            out[name] = None
            continue
        try:
            out[name] = data.decode()
        except UnicodeDecodeError:
            out[name] = base64.b64encode(data).decode()
            out[f"{name}_b64"] = True
    if r.headers:
        out["headers"] = {k: _text(v) for k, v in r.headers.items()}
    return out


def decode_json_value(obj: dict[str, Any], name: str = "value") -> bytes | None:
    """Inverse of the JSON output (tests and scripts use it)."""
    value = obj.get(name)
    if value is None:
        return None
    if obj.get(f"{name}_b64"):
        try:
            return base64.b64decode(value)
        except binascii.Error:
            raise ValueError(f"bad base64 in {name}") from None
    return str(value).encode()
