"""LogConfig validates every field at construction."""

from __future__ import annotations

import dataclasses

import pytest

from edge.storage import LogConfig
from edge.storage.config import is_topic_name


def test_defaults_are_valid_and_frozen() -> None:
    cfg = LogConfig()
    assert (cfg.segment_bytes, cfg.index_interval_bytes, cfg.durability) == (
        64 * 1024**2, 4096, "group"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.segment_bytes = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        LogConfig(1024)  # type: ignore[call-arg]  # keyword-only


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("segment_bytes", 0, "segment_bytes must be >= 1"),
        ("segment_bytes", 3 * 1024**3, "segment_bytes must be <="),
        ("segment_bytes", 1.5, "segment_bytes must be an integer"),
        ("segment_bytes", True, "segment_bytes must be an integer"),
        ("segment_ms", 0, "segment_ms"),
        ("retention_ms", 0, "retention_ms"),
        ("retention_bytes", -1, "retention_bytes"),
        ("index_interval_bytes", 8, "index_interval_bytes must be >= 64"),
        ("durability", "sometimes", "durability must be one of group, always, never"),
        ("checkpoint_interval_s", 0, "checkpoint_interval_s"),
        ("checkpoint_interval_s", float("nan"), "checkpoint_interval_s"),
        ("checkpoint_interval_s", "5", "checkpoint_interval_s"),
    ],
)
def test_invalid_settings_are_rejected(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LogConfig(**{field: value})  # type: ignore[arg-type]


def test_none_means_unbounded_retention() -> None:
    cfg = LogConfig(retention_ms=None, retention_bytes=None, durability="never")
    assert cfg.retention_ms is None
    assert cfg.retention_bytes is None


@pytest.mark.parametrize("name", ["a\n", "", ".hidden", "..", "a/b", "a b", "x" * 201,
                                  "\x00", "a\\b", "é", "-lead", 7, None])
def test_topic_names_that_cannot_be_directories_are_refused(name: object) -> None:
    assert not is_topic_name(name)


@pytest.mark.parametrize("name", ["a", "readings", "site.kitchen_1-raw", "0", "x" * 200])
def test_topic_names(name: str) -> None:
    assert is_topic_name(name)


@pytest.mark.parametrize("setting", ["retention_ms", "segment_ms", "retention_bytes"])
def test_bignum_settings_are_refused(setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        LogConfig(**{setting: 2**65})
