"""ALTER_TOPIC on a real Controller over SQLite in tmp_path: the settings rules, what
is stored, and what the SPUs' assignment streams get pushed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.protocol.errors import InvalidConfig, TopicNotFound
from edge.sc.controller import Controller
from edge.sc.store import MetadataStore
from edge.sc.topic_settings import altered_config

HOUR = 3_600_000


class Sc:
    def __init__(self, path: Path) -> None:
        self.store = MetadataStore(path)
        self.controller = Controller(self.store, heartbeat_timeout_s=5.0)
        self.pushed: list[tuple[int, list[dict[str, Any]]]] = []
        self.controller.register_spu(1, "127.0.0.1:9005", "127.0.0.1:9006", None,
                                     lambda replicas, version: self.pushed.append(
                                         (version, replicas)))

    def config(self, name: str = "t") -> dict[str, Any]:
        return self.controller.topic(name).config


@pytest.fixture
def sc(tmp_path: Path) -> Sc:
    s = Sc(tmp_path / "metadata.sqlite")
    s.controller.create_topic("t", 2, 1, {"retention_ms": HOUR, "compression": "zlib"})
    return s


def test_set_and_reset_are_stored_and_pushed(sc: Sc) -> None:
    version = sc.controller.version
    row = sc.controller.alter_topic("t", {"retention_bytes": 4096, "segment_bytes": 1024},
                                    ["retention_ms"])
    expected = {"compression": "zlib", "retention_bytes": 4096, "segment_bytes": 1024}
    assert row.config == expected
    assert sc.config() == expected
    assert sc.controller.version == version + 1
    pushed_version, replicas = sc.pushed[-1]
    assert pushed_version == sc.controller.version
    assert [r["config"] for r in replicas] == [expected, expected]
    assert sc.controller.metadata()["compression"] == {"t": "zlib"}


def test_settings_survive_a_new_controller(sc: Sc, tmp_path: Path) -> None:
    sc.controller.alter_topic("t", {"min_insync_replicas": 1, "unclean_election": True}, [])
    sc.store.close()
    again = Sc(tmp_path / "metadata.sqlite")
    assert again.config() == {"retention_ms": HOUR, "compression": "zlib",
                              "min_insync_replicas": 1, "unclean_election": True}


def test_dry_run_and_no_change_store_and_push_nothing(sc: Sc) -> None:
    version, pushes = sc.controller.version, len(sc.pushed)
    row = sc.controller.alter_topic("t", {"retention_ms": None}, [], validate_only=True)
    assert row.config == {"retention_ms": None, "compression": "zlib"}
    assert sc.controller.alter_topic("t", {"retention_ms": HOUR}, ["retention_bytes"]).config \
        == {"retention_ms": HOUR, "compression": "zlib"}
    assert sc.config() == {"retention_ms": HOUR, "compression": "zlib"}
    assert (sc.controller.version, len(sc.pushed)) == (version, pushes)


@pytest.mark.parametrize(("changes", "reset", "setting", "words"), [
    ({"retention_bytes": 0}, [], "retention_bytes", "retention_bytes must be >= 1"),
    ({"segment_bytes": "big"}, [], "segment_bytes", "must be an integer"),
    ({"segment_ms": None}, [], "segment_ms", "must be an integer"),
    ({"index_interval_bytes": 8}, [], "index_interval_bytes", ">= 64"),
    ({"compression": "lz4"}, [], "compression", "compression must be one of none, zlib"),
    ({"min_insync_replicas": 2}, [], "min_insync_replicas", "exceeds replication 1"),
    ({"unclean_election": "yes"}, [], "unclean_election", "true or false"),
    ({"upstream_priority": 10}, [], "upstream_priority", "0..9"),
    ({"partitions": 4}, [], "partitions", "partitions cannot change after creation"),
    ({"replication": 2}, [], "replication", "replication cannot change after creation"),
    ({"upstream": True}, [], "upstream", "upstream cannot change after creation"),
    ({}, ["upstream"], "upstream", "upstream cannot change after creation"),
    ({"mirror": True}, [], "mirror", "mirror cannot change"),
    ({"colour": "red"}, [], "colour", "unknown topic setting(s): colour"),
    ({}, ["colour"], "colour", "unknown topic setting(s): colour"),
    ({"retention_ms": HOUR}, ["retention_ms"], "retention_ms", "both set and reset"),
])
def test_refusals_name_the_setting_and_change_nothing(
        sc: Sc, changes: dict[str, Any], reset: list[str], setting: str, words: str) -> None:
    version = sc.controller.version
    with pytest.raises(InvalidConfig) as refused:
        sc.controller.alter_topic("t", changes, reset)
    assert refused.value.data["setting"] == setting
    assert words in str(refused.value)
    assert sc.config() == {"retention_ms": HOUR, "compression": "zlib"}
    assert sc.controller.version == version


def test_unknown_topic(sc: Sc) -> None:
    with pytest.raises(TopicNotFound):
        sc.controller.alter_topic("nope", {"retention_ms": HOUR}, [])


def test_a_mirror_topic_keeps_its_mark() -> None:
    current = {"mirror": True, "min_insync_replicas": 2}
    assert altered_config(current, {"retention_bytes": 1 << 30}, [], replication=3) == {
        "mirror": True, "min_insync_replicas": 2, "retention_bytes": 1 << 30}
    with pytest.raises(InvalidConfig, match="mirror cannot change"):
        altered_config(current, {}, ["mirror"], replication=3)
