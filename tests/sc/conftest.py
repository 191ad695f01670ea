"""SC tests share the real etcd cluster of ``etcd_harness``; make it importable in any
pytest import mode (``importlib`` does not put test directories on ``sys.path``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from etcd_harness import EtcdCluster  # noqa: E402 - after the path fix


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd members for the whole run; a test that stops members starts them
    again, and every test writes under a prefix of its own (``etcd_prefix``)."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd_prefix(etcd_cluster: EtcdCluster, request: pytest.FixtureRequest) -> str:
    """A fresh key prefix; first brings back any member an earlier test left down."""
    for i in range(len(etcd_cluster.members)):
        if i not in etcd_cluster.running():
            etcd_cluster.start_member(i, wait=False)
    etcd_cluster.wait_healthy()
    return f"/test/{request.node.name}/{id(request)}"
