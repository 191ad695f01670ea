"""A small synchronous etcd v3 client over etcd's JSON gateway (``POST /v3/...``).

etcd serves its gRPC API as JSON on the client port (etcd 3.4: ``/v3/``, also
``/v3beta/``; Documentation/dev-guide/api_grpc_gateway.md). Keys and values are
base64 strings, 64-bit integers are decimal strings, and fields at their zero value
are left out of answers (a failed txn has no ``succeeded``, an expired lease's
keep-alive no ``TTL``). Field names are those of api/etcdserverpb/rpc.proto:
``create_revision``, ``mod_revision``, ``request_put``, ``response_range``, ``ID``,
``TTL``, ``dbSize``, ``raftTerm``.

The SC calls this from its event loop and from its lease thread, so each thread
keeps its own keep-alive HTTP connections. Endpoints are tried in turn, sticky to
the last one that answered; one call never takes longer than ``timeout_s`` in all.
A write may be sent again to the next endpoint after a transport failure, so that
it may apply twice: every write this project makes carries a compare (a revision
or the leadership fence), which makes the second application fail harmlessly.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Any, Final, NamedTuple

from edge.protocol.errors import RequestTimeout, StorageError

# gRPC status codes (google.golang.org/grpc/codes) the gateway puts in ``code``.
_GRPC_NOT_FOUND: Final = 5
_GRPC_DEADLINE_EXCEEDED: Final = 4
_GRPC_UNAVAILABLE: Final = 14
_GRPC_UNAUTHENTICATED: Final = 16
_RETRY_ELSEWHERE: Final = frozenset({_GRPC_DEADLINE_EXCEEDED, _GRPC_UNAVAILABLE})
# etcd 3.4 answers an expired or unknown auth token with this message (code 3 or 16).
_INVALID_TOKEN: Final = "invalid auth token"  # noqa: S105 - an error text, not a secret
_LEASE_NOT_FOUND: Final = "requested lease not found"
# An answer larger than this is not metadata: refuse it rather than hold it.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024


class MetadataUnavailable(RequestTimeout):
    """No etcd endpoint answered within the client's time budget (or the cluster
    has no quorum); the same request can succeed later. Travels as TIMEOUT."""


class Fenced(StorageError):  # noqa: N818 - named like the wire errors (NotLeader)
    """A write's leadership compare failed: another SC is active now. This SC must
    stop acting as the active one (it comes back as a standby)."""


class EtcdError(StorageError):
    """etcd refused a request (carries ``code``, the gRPC status, and ``endpoint``)."""


class Target(StrEnum):
    VERSION = "VERSION"
    CREATE = "CREATE"
    MOD = "MOD"
    VALUE = "VALUE"
    LEASE = "LEASE"


class Result(StrEnum):
    EQUAL = "EQUAL"
    GREATER = "GREATER"
    LESS = "LESS"
    NOT_EQUAL = "NOT_EQUAL"


_TARGET_FIELD: Final = {Target.VERSION: "version", Target.CREATE: "create_revision",
                        Target.MOD: "mod_revision", Target.VALUE: "value",
                        Target.LEASE: "lease"}


class KeyValue(NamedTuple):
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


class Compare(NamedTuple):
    """One condition of a txn: ``target(key) <result> value``. A missing key has
    revisions, version and lease 0."""

    key: bytes
    target: Target
    result: Result
    value: int | bytes

    @classmethod
    def create_revision(cls, key: bytes | str, value: int,
                        result: Result = Result.EQUAL) -> Compare:
        return cls(_b(key), Target.CREATE, result, value)

    @classmethod
    def mod_revision(cls, key: bytes | str, value: int,
                     result: Result = Result.EQUAL) -> Compare:
        return cls(_b(key), Target.MOD, result, value)

    @classmethod
    def version(cls, key: bytes | str, value: int, result: Result = Result.EQUAL) -> Compare:
        return cls(_b(key), Target.VERSION, result, value)

    @classmethod
    def value_is(cls, key: bytes | str, value: bytes | str,
                 result: Result = Result.EQUAL) -> Compare:
        return cls(_b(key), Target.VALUE, result, _b(value))

    def holds(self, kv: KeyValue | None) -> bool:
        """Evaluate the compare here, as etcd does, against what a get returned."""
        if kv is None:
            if self.target is Target.VALUE:
                return False
            actual: int | bytes = 0
        else:
            actual = kv.value if self.target is Target.VALUE else {
                Target.VERSION: kv.version, Target.CREATE: kv.create_revision,
                Target.MOD: kv.mod_revision, Target.LEASE: kv.lease}[self.target]
        if self.result is Result.EQUAL:
            return actual == self.value
        if self.result is Result.NOT_EQUAL:
            return actual != self.value
        if isinstance(actual, int) != isinstance(self.value, int):
            return False
        if self.result is Result.GREATER:
            return actual > self.value  # type: ignore[operator]
        return actual < self.value  # type: ignore[operator]


class OpKind(StrEnum):
    PUT = "put"
    DELETE = "delete"
    GET = "get"


class Op(NamedTuple):
    """One operation of a txn branch; with ``prefix`` a delete or get covers every
    key starting with ``key``."""

    kind: OpKind
    key: bytes
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    @classmethod
    def put(cls, key: bytes | str, value: bytes | str, *, lease: int | None = None) -> Op:
        return cls(OpKind.PUT, _b(key), _b(value), lease or 0)

    @classmethod
    def delete(cls, key: bytes | str, *, prefix: bool = False) -> Op:
        return cls(OpKind.DELETE, _b(key), prefix=prefix)

    @classmethod
    def get(cls, key: bytes | str, *, prefix: bool = False) -> Op:
        return cls(OpKind.GET, _b(key), prefix=prefix)


class TxnResult(NamedTuple):
    """``ranges`` has one entry per op of the branch that ran: the keys a get op
    found (sorted by key), empty for puts and deletes."""

    succeeded: bool
    revision: int
    ranges: tuple[tuple[KeyValue, ...], ...]


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # every key
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _b(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(_unb64(raw.get("key")), _unb64(raw.get("value")),
                    int(raw.get("create_revision", 0)), int(raw.get("mod_revision", 0)),
                    int(raw.get("version", 0)), int(raw.get("lease", 0)))


def _range_body(key: bytes, *, prefix: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(prefix_end(key))
    return body


def _compare_json(c: Compare) -> dict[str, Any]:
    field = _TARGET_FIELD[c.target]
    value = _b64(c.value) if isinstance(c.value, bytes) else str(c.value)
    return {"key": _b64(c.key), "target": c.target.value, "result": c.result.value,
            field: value}


def _op_json(op: Op) -> dict[str, Any]:
    if op.kind is OpKind.PUT:
        put: dict[str, Any] = {"key": _b64(op.key), "value": _b64(op.value)}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    if op.kind is OpKind.DELETE:
        return {"request_delete_range": _range_body(op.key, prefix=op.prefix)}
    return {"request_range": _range_body(op.key, prefix=op.prefix)}


class _TransportError(Exception):
    """One endpoint did not answer (connect, send, receive, or etcd's own timeout)."""


class _InvalidTokenError(_TransportError):
    """etcd did not know the auth token a watch was opened with."""


class EtcdClient:
    """Synchronous etcd v3 client (keys and values are bytes; ``str`` is UTF-8)."""

    def __init__(self, endpoints: list[str], *, timeout_s: float = 2.0,
                 ssl_context: ssl.SSLContext | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._ssl = ssl_context
        self._credentials = None if username is None else (username, password or "")
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._sticky = 0
        self._local = threading.local()

    def close(self) -> None:
        """Close this thread's connections (others close when their thread ends)."""
        for conn in self._connections().values():
            conn.close()
        self._connections().clear()

    # key-value ------------------------------------------------------------

    def range(self, key: bytes | str, *, prefix: bool = False) -> list[KeyValue]:
        """The key (or every key under the prefix), sorted by key."""
        answer = self._call("/v3/kv/range", _range_body(_b(key), prefix=prefix))
        return [_kv(raw) for raw in answer.get("kvs", [])]

    def range_at(self, key: bytes | str, *, prefix: bool = False
                 ) -> tuple[list[KeyValue], int]:
        """Like :meth:`range`, with the store revision the answer reflects."""
        answer = self._call("/v3/kv/range", _range_body(_b(key), prefix=prefix))
        return [_kv(raw) for raw in answer.get("kvs", [])], _revision(answer)

    def watch(self, key: bytes | str, *, prefix: bool, start_revision: int) -> Watch:
        """Watch the key (or prefix) from ``start_revision`` on, on the first endpoint
        that accepts it (sticky one first); the watch has a connection of its own."""
        errors = []
        for attempt in range(len(self.endpoints)):
            endpoint = self.endpoints[(self._sticky + attempt) % len(self.endpoints)]
            try:
                return self._open_watch(endpoint, _b(key), prefix, start_revision)
            except (_TransportError, OSError, http.client.HTTPException) as exc:
                errors.append(f"{endpoint}: {exc}")
        raise MetadataUnavailable(f"no etcd member accepted a watch ({'; '.join(errors)})",
                                  endpoints=list(self.endpoints))

    def _open_watch(self, endpoint: str, key: bytes, prefix: bool, start: int) -> Watch:
        deadline = time.monotonic() + self.timeout_s
        create: dict[str, Any] = {"key": _b64(key), "start_revision": str(start)}
        if prefix:
            create["range_end"] = _b64(prefix_end(key))
        body = json.dumps({"create_request": create}).encode()
        if self._credentials is None:
            return self._start_watch(endpoint, body, None)
        try:
            return self._start_watch(endpoint, body,
                                     self._token or self._authenticate(endpoint, deadline))
        except _InvalidTokenError:
            # Expired, or the member restarted since: log in again, once.
            return self._start_watch(endpoint, body, self._authenticate(endpoint, deadline))

    def _start_watch(self, endpoint: str, body: bytes, token: str | None) -> Watch:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = token
        host, _, port = endpoint.rpartition(":")
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(host, int(port), timeout=self.timeout_s,
                                        context=self._ssl)
            if self._ssl is not None else
            http.client.HTTPConnection(host, int(port), timeout=self.timeout_s))
        try:
            conn.request("POST", "/v3/watch", body, headers)
            response = conn.getresponse()
            self._check_watch_answer(endpoint, response)
            watch = Watch(conn, response, endpoint)
            try:
                watch.next_message()  # "created", within the timeout
            except WatchLost as exc:
                # etcd accepts the stream, then cancels a watch whose token it does
                # not know ("rpc error: code = Unauthenticated desc = ... invalid
                # auth token").
                if _INVALID_TOKEN in str(exc):
                    raise _InvalidTokenError(str(exc)) from None
                raise
        except BaseException:
            conn.close()
            raise
        assert conn.sock is not None
        conn.sock.settimeout(None)  # events come when they come; close() ends the wait
        return watch

    def _check_watch_answer(self, endpoint: str, response: http.client.HTTPResponse) -> None:
        if response.status == 200:
            return
        try:
            _decode(endpoint, "/v3/watch", response.status, response.read(65536))
        except EtcdError as exc:
            if _INVALID_TOKEN in str(exc) or exc.data.get("code") == _GRPC_UNAUTHENTICATED:
                raise _InvalidTokenError(str(exc)) from None
            raise _TransportError(str(exc)) from None
        raise _TransportError(f"HTTP {response.status}")

    def get(self, key: bytes | str) -> tuple[bytes, int] | None:
        """(value, mod_revision), or None if there is no such key."""
        found = self.range(key)
        return None if not found else (found[0].value, found[0].mod_revision)

    def range_prefix(self, prefix: bytes | str) -> list[tuple[bytes, bytes, int]]:
        """(key, value, mod_revision) of every key under the prefix, sorted by key."""
        return [(kv.key, kv.value, kv.mod_revision) for kv in self.range(prefix, prefix=True)]

    def put(self, key: bytes | str, value: bytes | str, *, lease: int | None = None) -> int:
        """Store the value; the revision of the write."""
        body: dict[str, Any] = {"key": _b64(_b(key)), "value": _b64(_b(value))}
        if lease:
            body["lease"] = str(lease)
        return _revision(self._call("/v3/kv/put", body))

    def delete_prefix(self, prefix: bytes | str) -> int:
        """Delete every key under the prefix; how many there were."""
        answer = self._call("/v3/kv/deleterange", _range_body(_b(prefix), prefix=True))
        return int(answer.get("deleted", 0))

    def txn(self, compare: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        """Run ``success`` if every compare holds, else ``failure``, atomically."""
        body = {"compare": [_compare_json(c) for c in compare],
                "success": [_op_json(op) for op in success],
                "failure": [_op_json(op) for op in failure]}
        answer = self._call("/v3/kv/txn", body)
        ranges = tuple(tuple(_kv(raw) for raw in r.get("response_range", {}).get("kvs", []))
                       for r in answer.get("responses", []))
        return TxnResult(bool(answer.get("succeeded", False)), _revision(answer), ranges)

    # leases ---------------------------------------------------------------

    def lease_grant(self, ttl_s: int) -> int:
        """A new lease; etcd may round the TTL up to its minimum (see lease_keepalive)."""
        return int(self._call("/v3/lease/grant", {"TTL": str(ttl_s)})["ID"])

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; its remaining TTL, 0 when it is gone."""
        answer = self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        return int(answer.get("result", {}).get("TTL", 0))

    def lease_revoke(self, lease_id: int) -> None:
        """End the lease and delete its keys (a lease that is gone already is fine)."""
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdError as exc:
            if _LEASE_NOT_FOUND not in str(exc):
                raise

    # cluster --------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """id, name, peer_urls, client_urls, is_learner of every member."""
        answer = self._call("/v3/cluster/member/list", {})
        return [{"id": int(m.get("ID", 0)), "name": m.get("name", ""),
                 "peer_urls": list(m.get("peerURLs", [])),
                 "client_urls": list(m.get("clientURLs", [])),
                 "is_learner": bool(m.get("isLearner", False))}
                for m in answer.get("members", [])]

    def status(self, endpoint: str) -> dict[str, Any]:
        """One member's view: name, endpoint, leader or not, db size, raft term..."""
        deadline = time.monotonic() + self.timeout_s
        try:
            answer = self._request(endpoint, "/v3/maintenance/status", {}, deadline)
        except _TransportError as exc:
            raise MetadataUnavailable(f"etcd {endpoint} did not answer: {exc}",
                                      endpoint=endpoint) from None
        member_id = int(answer.get("header", {}).get("member_id", 0))
        names = {m["id"]: m["name"] for m in self.members()}
        return {"name": names.get(member_id, ""), "endpoint": endpoint, "member_id": member_id,
                "leader": int(answer.get("leader", 0)) == member_id,
                "db_size": int(answer.get("dbSize", 0)),
                "raft_term": int(answer.get("raftTerm", 0)),
                "raft_index": int(answer.get("raftIndex", 0)),
                "version": answer.get("version", "")}

    # transport ------------------------------------------------------------

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the sticky endpoint, then the others, within one time budget."""
        deadline = time.monotonic() + self.timeout_s
        errors: list[str] = []
        count = len(self.endpoints)
        start = self._sticky
        for attempt in range(count):
            index = (start + attempt) % count
            endpoint = self.endpoints[index]
            # Leave the endpoints not tried yet their share of what remains.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            share = time.monotonic() + remaining / (count - attempt)
            try:
                answer = self._authorized(endpoint, path, body, share)
            except _TransportError as exc:
                errors.append(f"{endpoint}: {exc}")
                continue
            self._sticky = index
            return answer
        self._sticky = (start + 1) % count
        raise MetadataUnavailable(
            f"etcd did not answer within {self.timeout_s:g}s ({'; '.join(errors) or 'no time'})",
            endpoints=list(self.endpoints), timeout_s=self.timeout_s)

    def _authorized(self, endpoint: str, path: str, body: dict[str, Any],
                    deadline: float) -> dict[str, Any]:
        if self._credentials is None:
            return self._request(endpoint, path, body, deadline)
        token = self._token or self._authenticate(endpoint, deadline)
        try:
            return self._request(endpoint, path, body, deadline, token=token)
        except EtcdError as exc:
            if _INVALID_TOKEN not in str(exc) and exc.data.get("code") != _GRPC_UNAUTHENTICATED:
                raise
        token = self._authenticate(endpoint, deadline)
        return self._request(endpoint, path, body, deadline, token=token)

    def _authenticate(self, endpoint: str, deadline: float) -> str:
        assert self._credentials is not None
        name, password = self._credentials
        with self._token_lock:
            answer = self._request(endpoint, "/v3/auth/authenticate",
                                   {"name": name, "password": password}, deadline)
            self._token = str(answer["token"])
            return self._token

    def _connections(self) -> dict[str, http.client.HTTPConnection]:
        conns: dict[str, http.client.HTTPConnection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _connection(self, endpoint: str, timeout: float) -> http.client.HTTPConnection:
        conns = self._connections()
        conn = conns.get(endpoint)
        if conn is None:
            host, _, port = endpoint.rpartition(":")
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(host, int(port), timeout=timeout,
                                                   context=self._ssl)
            else:
                conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
            conns[endpoint] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _request(self, endpoint: str, path: str, body: dict[str, Any], deadline: float, *,
                 token: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = token
        payload = json.dumps(body).encode()
        for _ in range(2):
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise _TransportError("no time left")
            conn = self._connection(endpoint, timeout)
            reused = conn.sock is not None
            try:
                conn.request("POST", path, payload, headers)
                response = conn.getresponse()
                data = response.read(MAX_RESPONSE_BYTES + 1)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._connections().pop(endpoint, None)
                # A kept-alive connection the member closed meanwhile (it restarted):
                # once more on a new one before moving on to another member.
                if reused and not isinstance(exc, TimeoutError):
                    continue
                raise _TransportError(str(exc) or type(exc).__name__) from None
            return _decode(endpoint, path, response.status, data)
        raise _TransportError("connection closed twice")


def _decode(endpoint: str, path: str, status: int, data: bytes) -> dict[str, Any]:
    if len(data) > MAX_RESPONSE_BYTES:
        raise EtcdError(f"etcd answer to {path} is over {MAX_RESPONSE_BYTES} bytes",
                        endpoint=endpoint)
    try:
        # A streaming call (lease keep-alive) answers one JSON object per line.
        answer = json.loads(data.split(b"\n", 1)[0] or b"{}")
    except ValueError:
        raise _TransportError(f"not JSON from {path} (HTTP {status})") from None
    if not isinstance(answer, dict):
        raise _TransportError(f"not a JSON object from {path}")
    error = answer.get("error") if status == 200 else answer
    if status == 200 and not error:
        return answer
    if not isinstance(error, dict):
        error = {"message": str(error)}
    code = int(error.get("code", error.get("grpc_code", 0)))
    message = str(error.get("message") or error.get("error") or f"HTTP {status}")
    if code in _RETRY_ELSEWHERE or status in (502, 503, 504):
        raise _TransportError(message)
    raise EtcdError(f"etcd {endpoint} {path}: {message}", code=code, endpoint=endpoint)


def _revision(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))



class WatchEvent(NamedTuple):
    key: bytes
    value: bytes
    mod_revision: int
    deleted: bool


class WatchLost(MetadataUnavailable):
    """The watch ended (etcd closed it, compacted past it, or cancelled it): whoever
    keeps a copy through it must read everything again."""


class Watch:
    """One open etcd watch: :meth:`events` yields its event batches in revision
    order; :meth:`interrupt` (from any thread) ends it."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse,
                 endpoint: str) -> None:
        self._conn = conn
        self._response = response
        self.endpoint = endpoint

    def next_message(self) -> dict[str, Any]:
        try:
            line = self._response.readline(MAX_RESPONSE_BYTES)
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
            raise WatchLost(f"watch on {self.endpoint} ended: {exc or type(exc).__name__}",
                            endpoint=self.endpoint) from None
        if not line.endswith(b"\n"):
            raise WatchLost(f"watch on {self.endpoint} ended", endpoint=self.endpoint)
        try:
            message = json.loads(line)
        except ValueError:
            raise WatchLost(f"watch on {self.endpoint} sent no JSON",
                            endpoint=self.endpoint) from None
        result = message.get("result") if isinstance(message, dict) else None
        if not isinstance(result, dict):
            raise WatchLost(f"watch on {self.endpoint} failed: {message}"[:300],
                            endpoint=self.endpoint)
        if result.get("canceled") or int(result.get("compact_revision", 0)):
            raise WatchLost(f"watch on {self.endpoint} cancelled "
                            f"({result.get('cancel_reason') or 'compacted'})",
                            endpoint=self.endpoint)
        return result

    def events(self) -> Iterator[list[WatchEvent]]:
        while True:
            result = self.next_message()
            events = [WatchEvent(_unb64(e["kv"].get("key")), _unb64(e["kv"].get("value")),
                                 int(e["kv"].get("mod_revision", 0)),
                                 e.get("type") == "DELETE")
                      for e in result.get("events", [])]
            if events:
                yield events

    def interrupt(self) -> None:
        """End the watch from any thread: the reader's wait ends with WatchLost."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the connection (the reading thread, once it is done reading)."""
        self.interrupt()
        self._conn.close()
