"""The site registry and mirror placement on a real SC store, without processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.protocol.errors import (
    AuthenticationFailed,
    InsufficientResources,
    InvalidConfig,
    MirrorSourceMismatch,
    SiteExists,
    SiteNotFound,
)
from edge.sc.controller import Controller
from edge.sc.sites import SiteRegistry
from edge.sc.store import MetadataStore
from edge.storage.mirror import MirrorOwner

Pushed = list[tuple[int, list[dict[str, Any]]]]  # (SPU, its replica list) per push


@pytest.fixture
def pushed() -> Pushed:
    return []


@pytest.fixture
def registry(tmp_path: Path, pushed: Pushed) -> SiteRegistry:
    controller = Controller(MetadataStore(tmp_path / "m.sqlite"), heartbeat_timeout_s=2.0)
    for spu in (1, 2, 3, 4):
        controller.register_spu(spu, f"127.0.0.1:{9000 + spu}", f"127.0.0.1:{9100 + spu}",
                                None, lambda r, v, spu=spu: pushed.append((spu, r)))
    return SiteRegistry(controller)


def test_register_stores_only_a_digest_of_the_token(registry: SiteRegistry) -> None:
    row, token = registry.register("kitchen")
    assert len(token) >= 40
    assert token not in row.token_sha256
    with pytest.raises(SiteExists):
        registry.register("kitchen")
    with pytest.raises(InvalidConfig):
        registry.register("../etc")


def test_each_site_partition_gets_its_own_home(registry: SiteRegistry) -> None:
    _, kitchen = registry.register("kitchen")
    _, barn = registry.register("barn")
    homes = {(site, part): registry.resolve(site, token, "readings", part, f"{site}/r/1")[0]
             for site, token in (("kitchen", kitchen), ("barn", barn)) for part in (0, 1)}
    assert sorted(m.cloud_partition for m in homes.values()) == [0, 1, 2, 3]
    again, leader = registry.resolve("kitchen", kitchen, "readings", 1, "kitchen/r/1")
    assert again == homes[("kitchen", 1)]
    assert leader.startswith("127.0.0.1:")
    topic = registry.store.topic("readings")
    assert topic is not None
    assert (topic.partitions, topic.replication) == (4, 3)
    assert topic.config["mirror"] is True
    assert [m["cloud_partition"] for m in registry.describe("barn")["mirrors"]] == [
        homes[("barn", 0)].cloud_partition, homes[("barn", 1)].cloud_partition]


def test_spus_learn_the_owner_of_each_mirror_partition(registry: SiteRegistry,
                                                       pushed: Pushed) -> None:
    _, token = registry.register("kitchen")
    home, _ = registry.resolve("kitchen", token, "readings", 0, "src")
    hosting = [(spu, r) for spu, rows in pushed[-4:] for r in rows if r["topic"] == "readings"]
    assert len(hosting) == 3  # every replica, leader and followers, knows the owner
    for _, row in hosting:
        owner = MirrorOwner.parse(row["mirror"])
        assert owner is not None
        assert owner.admits("kitchen", token)
        assert owner.incarnation == home.incarnation


def test_resolve_refuses_wrong_tokens_and_other_edge_logs(registry: SiteRegistry) -> None:
    _, token = registry.register("kitchen")
    _, other = registry.register("barn")
    for site, tok in (("kitchen", other), ("nowhere", token)):
        with pytest.raises(AuthenticationFailed):
            registry.resolve(site, tok, "readings", 0, "src")
    registry.resolve("kitchen", token, "readings", 0, "src-1")
    with pytest.raises(MirrorSourceMismatch):
        registry.resolve("kitchen", token, "readings", 0, "src-2")


def test_a_plain_cloud_topic_is_not_taken_over(registry: SiteRegistry) -> None:
    _, token = registry.register("kitchen")
    registry.controller.create_topic("readings", 1, 1, {})
    with pytest.raises(InvalidConfig, match="not a mirror topic"):
        registry.resolve("kitchen", token, "readings", 0, "src")


def test_no_online_spu_is_a_retriable_refusal(tmp_path: Path) -> None:
    registry = SiteRegistry(Controller(MetadataStore(tmp_path / "m.sqlite"),
                                       heartbeat_timeout_s=2.0))
    _, token = registry.register("kitchen")
    with pytest.raises(InsufficientResources) as info:
        registry.resolve("kitchen", token, "readings", 0, "src")
    assert info.value.retriable


def test_unregister_forgets_the_site_and_its_mappings(registry: SiteRegistry) -> None:
    _, token = registry.register("kitchen")
    registry.resolve("kitchen", token, "readings", 0, "src")
    registry.unregister("kitchen")
    assert registry.list() == []
    assert registry.store.mirrors() == []
    with pytest.raises(SiteNotFound):
        registry.unregister("kitchen")
