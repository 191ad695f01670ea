"""Coverage-guided fuzz target for every decoder of ``edge.protocol``.

The contract under test: bytes from a peer either decode or are rejected with a
``HeadwaterError`` subclass, never any other exception, and whatever decodes is
self-consistent (whole input and byte-at-a-time input give the same frames;
records have the offsets, types and count their header promises).

With atheris (``pip install atheris``)::

    python tests/protocol/fuzz_decoders.py --write-seeds /tmp/corpus
    python tests/protocol/fuzz_decoders.py -max_total_time=300 /tmp/corpus

Any uncaught exception (an AssertionError is a broken invariant) is a finding;
libFuzzer saves the input as ``crash-*``. ``test_proto_fuzz.py`` runs the same
target under Hypothesis in the normal test run.
"""

from __future__ import annotations

import contextlib
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import cbor2

from edge.protocol import batch, groups, messages, schema
from edge.protocol.errors import HeadwaterError, NotLeader, RemoteError
from edge.protocol.framing import Frame, FrameDecoder, decode_meta, encode_frame

# Small limits as well as the defaults, so that short inputs reach FrameTooLarge.
LIMITS: list[dict[str, int]] = [{}, {"max_frame_bytes": 2048, "max_meta_bytes": 256}]
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
_KINDS: tuple[type, ...] = (int, str, bytes, bool, list, dict)


def seal(raw: bytes | bytearray) -> bytes:
    """``raw`` with batch_length and CRC fixed up, so only its other fields can be wrong."""
    out = bytearray(raw)
    struct.pack_into(">I", out, 8, len(out) - batch.LOG_OVERHEAD)
    struct.pack_into(">I", out, 17, zlib.crc32(bytes(out[batch.CRC_START :])))
    return bytes(out)


def batch_with_body(body: bytes, *, count: int = 1, compression: int = 0) -> bytes:
    """A well-formed header with a correct CRC around an arbitrary records body."""
    head = batch.HEADER.pack(
        0, 0, 0, batch.MAGIC, 0, compression, count - 1, 1_000, 1_000, -1, -1, -1, count
    )
    return seal(head + body)


# -- frames -------------------------------------------------------------------------


def _drain(dec: FrameDecoder, out: list[Frame]) -> type[HeadwaterError] | None:
    try:
        while (frame := dec.next_frame()) is not None:
            out.append(frame)
    except HeadwaterError as exc:
        return type(exc)
    return None


def frames_whole(data: bytes, **limits: int) -> tuple[list[Frame], type | None, int]:
    dec = FrameDecoder(**limits)
    dec.feed(data)
    out: list[Frame] = []
    err = _drain(dec, out)
    return out, err, dec.buffered


def frames_bytewise(data: bytes, **limits: int) -> tuple[list[Frame], type | None, int]:
    dec = FrameDecoder(**limits)
    out: list[Frame] = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        if (err := _drain(dec, out)) is not None:
            return out, err, dec.buffered
    return out, None, dec.buffered


def _fingerprint(frames: list[Frame]) -> list[Any]:
    """Comparable form of decoded frames (NaN != NaN, so compare re-encoded bytes)."""
    out: list[Any] = []
    for frame in frames:
        try:
            meta: Any = cbor2.dumps(frame.meta, canonical=True, value_sharing=True)
        except Exception:  # an exotic decoded type cbor2 will not re-encode
            meta = sorted(map(type, frame.meta), key=str)
        out.append((meta, frame.blob))
    return out


def check_frames(data: bytes) -> list[Frame]:
    """Decode ``data`` as a frame stream whole and byte by byte; both must agree."""
    frames: list[Frame] = []
    for limits in LIMITS:
        whole, err_w, left_w = frames_whole(data, **limits)
        single, err_s, left_s = frames_bytewise(data, **limits)
        assert err_w is err_s, (err_w, err_s)
        if err_w is None:  # after an error the whole feed also holds what followed it
            assert left_w == left_s
        assert _fingerprint(whole) == _fingerprint(single)
        for frame in whole:
            assert isinstance(frame.meta, dict)
            assert isinstance(frame.blob, bytes)
        frames = frames or whole
    return frames


# -- metadata -------------------------------------------------------------------------


def check_meta(meta: dict[Any, Any]) -> None:
    """Every messages helper on an arbitrary map: a result or a HeadwaterError."""
    for message in (m for pair in groups.APIS.values() for m in pair):
        for decode in (schema.decode_request, schema.decode_response):
            try:
                decoded = decode(message, meta)
            except HeadwaterError:
                continue
            assert isinstance(decoded, message.cls)
    try:
        api = messages.api_of(meta)
    except HeadwaterError:
        pass
    else:
        assert isinstance(api, messages.ApiKey)
    for name in ("api", "v", "id", "err", "msg", "topic"):
        for kind in _KINDS:
            try:
                value = messages.get(meta, name, kind)
            except HeadwaterError:
                continue
            assert isinstance(value, kind)
            assert not (kind is int and isinstance(value, bool))
    try:
        result = messages.check_response(meta)
    except HeadwaterError as exc:
        failure: HeadwaterError | None = exc
    else:
        failure = None
        assert result is meta
        code = meta.get("err", 0)
        assert type(code) is int
        assert code == 0
    if failure is not None:
        assert isinstance(failure, RemoteError)
        _check_error_round_trip(failure)


def _check_error_round_trip(exc: RemoteError) -> None:
    meta = decode_meta(cbor2.dumps(messages.error_response(7, exc)))
    again: RemoteError | None = None
    try:
        messages.check_response(meta)
    except RemoteError as raised:
        again = raised
    assert again is not None, "an error response read as success"
    assert type(again) is type(exc)
    assert str(again) == str(exc)


# -- batches --------------------------------------------------------------------------


def check_records(records: list[batch.Record], header: batch.BatchHeader) -> None:
    assert len(records) == header.record_count
    for i, rec in enumerate(records):
        assert rec.offset == header.base_offset + i
        assert type(rec.timestamp) is int
        assert I64_MIN <= rec.timestamp <= I64_MAX
        assert rec.key is None or type(rec.key) is bytes
        assert type(rec.value) is bytes
        assert rec.headers is None or all(
            type(k) is str and type(v) is bytes for k, v in rec.headers.items()
        )


def check_batch_bytes(data: bytes) -> None:
    """Every batch decoder on ``data``: a result or a CorruptBatch."""
    for fn in (batch.decode_header, batch.verify, batch.batch_prefix):
        with contextlib.suppress(batch.CorruptBatch):
            fn(data)
    try:
        for header, pos in batch.split_batches(data):
            check_records(batch.decode_records(data, pos, header), header)
    except batch.CorruptBatch:
        pass
    try:
        records = batch.decode_records(data)
    except batch.CorruptBatch:
        pass
    else:
        check_records(records, batch.verify(data))


def check_records_body(data: bytes) -> None:
    """``data[1:]`` as the records of a batch with a valid CRC (``data[0]`` odd: zlib).

    Random bytes never pass the CRC; sealing them reaches the record decoder.
    """
    if not data:
        return
    compressed = data[0] & 1
    body = data[1:]
    try:
        probe = cbor2.loads(body)
    except Exception:
        probe = None
    count = min(len(probe), 2**32 - 1) if isinstance(probe, list) and probe else 1
    payload = zlib.compress(body) if compressed else body
    raw = batch_with_body(payload, count=count, compression=compressed)
    try:
        records = batch.decode_records(raw)
    except batch.CorruptBatch:
        return
    check_records(records, batch.verify(raw))


# -- the target -------------------------------------------------------------------------


def fuzz_one(data: bytes) -> None:
    """The fuzz target: run every decoder on ``data``."""
    for frame in check_frames(data):
        check_meta(frame.meta)
        check_batch_bytes(frame.blob)
    check_batch_bytes(data)
    check_records_body(data)
    try:
        meta = decode_meta(data)
    except HeadwaterError:
        return
    check_meta(meta)


def seed_inputs() -> list[bytes]:
    """Valid inputs of each kind, for a corpus to start from."""
    plain = batch.encode_batch(
        [[0, b"k", b"v"], [3, None, b"w", {"h": b"x"}]], first_timestamp=1_000
    )
    packed = batch.encode_batch(
        [[0, None, b"v" * 40]], first_timestamp=5, compression=batch.Compression.ZLIB
    )
    request = messages.request(messages.ApiKey.PRODUCE, 1, topic="t", partition=0)
    error = messages.error_response(2, NotLeader("moved", leader=3))
    records_body = cbor2.dumps([[0, b"k", b"v"], [1, None, b"w", {"a": b"b"}]])
    return [
        encode_frame(request, plain + packed),
        encode_frame(error) + encode_frame(messages.ok(3, hw=10), plain),
        plain,
        plain + packed,
        cbor2.dumps(request),
        b"\x00" + records_body,
        b"\x01" + records_body,
    ]


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        corpus = Path(argv[2])
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seed_inputs()):
            (corpus / f"seed-{i}").write_bytes(seed)
        return
    import atheris

    atheris.instrument_all()
    atheris.Setup(argv, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
