"""Requests drawn from every API's schema, sent to the real SC and SPU processes on
the port that serves the API: one broken field is answered INVALID_REQUEST naming
that field (INVALID_CONFIG for a topic setting, AUTHENTICATION_FAILED for the
handshake's own request); a valid request is answered with success or a declared
error, never UNKNOWN; and every server is still healthy afterwards."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schema_strategies import valid, violating

from edge.client import Admin, Consumer, Offset, Producer
from edge.net.connection import split_addr
from edge.protocol import handshake, sc_api
from edge.protocol.apis import SCHEMAS
from edge.protocol.errors import ErrorCode
from edge.protocol.framing import FrameDecoder, encode_frame
from edge.protocol.handshake import Claim
from edge.protocol.messages import ApiKey, request
from edge.secret import ClusterSecret
from edge.testing import LocalCluster

# The SPU id the private-port requests are proven as: one no real SPU uses.
PEER_ID = 77
SC_PRIVATE = {ApiKey.REGISTER_SPU, ApiKey.HEARTBEAT, ApiKey.UPDATE_ISR}
SPU_PRIVATE = {ApiKey.REPLICA_FETCH, ApiKey.OFFSET_FOR_EPOCH}
SPU_PUBLIC = {ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.STREAM_FETCH, ApiKey.LIST_OFFSETS,
              ApiKey.OFFSET_COMMIT, ApiKey.OFFSET_FETCH, ApiKey.LIST_CONSUMERS,
              ApiKey.PARTITION_STATUS, ApiKey.UPSTREAM_STATUS, ApiKey.MIRROR_OFFSETS,
              ApiKey.MIRROR_APPEND, ApiKey.MIRROR_GAP}
WITH_FIELDS = [k for k, api in SCHEMAS.items() if api.request.fields]
EXAMPLES = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


class Servers:
    """A real cluster, run by a loop in its own thread (Hypothesis drives sync tests)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def addr(self, api: ApiKey) -> str:
        c = self.cluster
        if api in SC_PRIVATE:
            return c.sc_private_addr
        if api in SPU_PRIVATE or api is ApiKey.AUTHENTICATE:
            return f"{c.host}:{c.spu_ports[1][1]}"
        return c.spu_addr() if api in SPU_PUBLIC else c.sc_addr


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    s = Servers(LocalCluster(tmp_path_factory.mktemp("schema") / "cluster"))
    s.thread.start()
    s.run(s.cluster.__aenter__())
    try:
        s.run(_produce(s.cluster, "t", b"before"))
        yield s
    finally:
        s.run(s.cluster.__aexit__(None, None, None))
        s.loop.call_soon_threadsafe(s.loop.stop)
        s.thread.join(10)


async def _produce(cluster: LocalCluster, topic: str, value: bytes) -> None:
    async with Admin(cluster.sc_addr) as admin:
        if topic not in {t["name"] for t in await admin.list_topics()}:
            await admin.create_topic(topic, partitions=1)
            await admin.wait_ready(topic)
    async with Producer(cluster.sc_addr) as p:
        await (await p.send(topic, value))


class Raw:
    """A blocking connection that sends one request and reads one answer."""

    def __init__(self, addr: str) -> None:
        self.sock = socket.create_connection(split_addr(addr), timeout=10)
        self.decoder = FrameDecoder()

    def next(self) -> dict[Any, Any] | None:
        while (frame := self.decoder.next_frame()) is None:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.feed(data)
        return frame.meta

    def call(self, api: ApiKey, cid: int, fields: dict[str, Any]) -> dict[Any, Any] | None:
        self.sock.sendall(encode_frame(request(api, cid, **fields)))
        return self.next()

    def authenticate(self, secret: bytes) -> None:
        hello = handshake.parse_hello(self.next() or {})
        claim = Claim(PEER_ID, "spu", handshake.new_nonce(), None)
        claim = claim._replace(mac=handshake.client_mac(secret, hello, claim))
        answer = self.call(ApiKey.AUTHENTICATE, 1, handshake.claim_fields(claim))
        assert answer is not None
        assert answer["err"] == 0, answer

    def close(self) -> None:
        self.sock.close()


def _connect(servers: Servers, api: ApiKey) -> Raw:
    raw = Raw(servers.addr(api))
    if api is ApiKey.AUTHENTICATE:
        raw.next()  # the hello; the request under test is the handshake itself
    elif api in SC_PRIVATE | SPU_PRIVATE:
        raw.authenticate(ClusterSecret.load(servers.cluster.secret_path).value)
    return raw


@pytest.mark.parametrize("api", WITH_FIELDS, ids=lambda k: k.name)
@EXAMPLES
@given(data=st.data())
def test_a_broken_field_is_refused_naming_it(servers: Servers, api: ApiKey,
                                              data: st.DataObject) -> None:
    field, fields = data.draw(violating(SCHEMAS[api].request))
    raw = _connect(servers, api)
    try:
        answer = raw.call(api, 9, fields)
    finally:
        raw.close()
    # A topic's settings are configuration: CREATE_TOPIC and ALTER_TOPIC answer
    # INVALID_CONFIG for them.
    expected = {ErrorCode.INVALID_REQUEST}
    if api is ApiKey.AUTHENTICATE:
        expected = {ErrorCode.AUTHENTICATION_FAILED}
    elif api in (ApiKey.CREATE_TOPIC, ApiKey.ALTER_TOPIC) and field in sc_api.TOPIC_SETTINGS:
        expected = {ErrorCode.INVALID_CONFIG}
    assert answer is not None
    assert answer["id"] == 9
    assert answer["err"] in {int(c) for c in expected}, answer
    assert repr(field) in answer["msg"], answer


@pytest.mark.parametrize("api", list(SCHEMAS), ids=lambda k: k.name)
@EXAMPLES
@given(data=st.data())
def test_a_valid_request_gets_an_answer_not_a_crash(servers: Servers, api: ApiKey,
                                                     data: st.DataObject) -> None:
    fields = data.draw(valid(SCHEMAS[api].request))
    if "spu" in fields or "replica" in fields:
        # Spoken for the proven id (another id is refused before the schema matters).
        fields.update({k: PEER_ID for k in ("spu", "replica") if k in fields})
    if api is ApiKey.AUTHENTICATE:
        fields["spu"] = PEER_ID
    raw = _connect(servers, api)
    try:
        raw.sock.settimeout(3 if SCHEMAS[api].stream else 10)
        try:
            answer = raw.call(api, 9, fields)
        except TimeoutError:
            assert SCHEMAS[api].stream, f"{api.name} did not answer"
            return  # a stream with nothing to push yet
    finally:
        raw.close()
    if api is ApiKey.PRODUCE and fields.get("acks") == 0 and answer is None:
        return
    assert answer is not None, f"{api.name}: connection closed without an answer"
    assert answer["id"] == 9
    assert answer["err"] != int(ErrorCode.UNKNOWN), answer
    assert answer["err"] in {int(c) for c in ErrorCode}, answer


def test_the_servers_are_healthy_after_the_property_runs(servers: Servers) -> None:
    # Runs after the properties above (file order): every port answers, data flows.
    for api in (ApiKey.LIST_TOPICS, ApiKey.PRODUCE, ApiKey.REPLICA_FETCH, ApiKey.HEARTBEAT):
        raw = Raw(servers.addr(api))
        try:
            if api in SC_PRIVATE | SPU_PRIVATE:
                raw.next()  # the hello: API_VERSIONS is served before the handshake
            answer = raw.call(ApiKey.API_VERSIONS, 3, {})
        finally:
            raw.close()
        assert answer is not None
        assert answer["err"] == 0, (api, answer)
    servers.run(_produce(servers.cluster, "t", b"after"))

    async def read() -> list[bytes]:
        async with Consumer(servers.cluster.sc_addr, "t", offset=Offset.beginning()) as c:
            return [r.value for r in await c.fetch_until_end()]

    values = servers.run(read())
    assert values[0] == b"before"
    assert values[-1] == b"after"
    procs = [servers.cluster.sc_proc, *servers.cluster.spu_procs.values()]
    assert len(procs) == 2
    assert all(proc is not None and proc.poll() is None for proc in procs)
