"""The metrics endpoint on its own: what it answers, and that no input a scraper (or
anyone who can reach the port) sends takes it down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.metrics import MAX_REQUEST_BYTES, Metrics, gauge


@pytest.fixture
async def endpoint() -> AsyncIterator[Metrics]:
    m = Metrics("spu", "7")
    m.add_source(lambda: [gauge("headwater_test_value", "A test series.", ["k"],
                                [(["a"], 3.0)])])
    await m.start("127.0.0.1:0")
    yield m
    await m.close()


async def _get(m: Metrics, raw: bytes) -> bytes:
    host, port = m.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_metrics_are_served_with_the_sources_and_the_requests(endpoint: Metrics) -> None:
    endpoint.observe("SPU public", "PRODUCE", 0.002, 0)
    endpoint.observe("SPU public", "PRODUCE", 0.004, 31)
    answer = await _get(endpoint, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b'headwater_test_value{k="a"} 3.0' in body
    assert b'headwater_requests_total{api="PRODUCE",code="0",listener="SPU public"} 1.0' in body
    assert b'headwater_requests_total{api="PRODUCE",code="31",listener="SPU public"} 1.0' in body
    assert b'headwater_request_duration_seconds_count{api="PRODUCE",listener="SPU public"} 2.0' \
        in body
    assert b'headwater_info{node="7",role="spu"' in body
    assert b"process_resident_memory_bytes" in body


async def test_other_paths_and_methods_are_refused(endpoint: Metrics) -> None:
    assert (await _get(endpoint, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(
        b"HTTP/1.1 404")
    assert (await _get(endpoint, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(
        b"HTTP/1.1 405")


async def test_a_failing_source_leaves_the_rest_of_the_scrape(endpoint: Metrics) -> None:
    def broken() -> list[object]:
        raise RuntimeError("boom")

    endpoint.add_source(broken)  # type: ignore[arg-type]
    answer = await _get(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert b"headwater_test_value" in answer


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=2 * MAX_REQUEST_BYTES))
async def test_garbage_never_takes_the_endpoint_down(endpoint: Metrics, garbage: bytes
                                                     ) -> None:
    await _get(endpoint, garbage + b"\r\n\r\n")  # whatever it answers, if anything
    answer = await _get(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
