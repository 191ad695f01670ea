"""The topic-setting options ``topic create`` and ``topic alter`` share: their
flags and help, their parsing into settings, and how a setting is shown."""

from __future__ import annotations

from typing import Annotated, Any, Final

import typer

from edge.cli.common import complete_from, human_bytes
from edge.config import ConfigError, parse_duration_ms, parse_size
from edge.storage.budget import MIN_BUDGET_BYTES, Policy

# Below these a segment holds a batch or two and a second of data: a typing
# mistake (4096 meant as 4096 MiB, 7 meant as 7 days), never a wish.
MIN_DURATION_MS: Final = 1000
MIN_SIZE: Final = 4096

RetentionTime = Annotated[str | None, typer.Option(
    "--retention-time", help="Keep data this long (e.g. 7d, 12h); 'forever' keeps it "
    "(default 7d).")]
RetentionBytes = Annotated[str | None, typer.Option(
    "--retention-bytes", help="Keep at most this much per partition (e.g. 1GiB).")]
SegmentBytes = Annotated[str | None, typer.Option(
    "--segment-bytes", help="Roll segments at this size (default 64MiB).")]
SegmentTime = Annotated[str | None, typer.Option(
    "--segment-time", help="Roll segments after this long (default 7d).")]
Compression = Annotated[str | None, typer.Option(
    "--compression", help="none or zlib (applied by producers).",
    autocompletion=complete_from("none", "zlib"))]
MinIsr = Annotated[int | None, typer.Option(
    "--min-insync-replicas", "--min-isr", help="In-sync replicas acks=all needs (default 1).")]
UncleanElection = Annotated[bool | None, typer.Option(
    "--unclean-election/--no-unclean-election", help="Allow an out-of-sync replica to lead "
    "when no in-sync one is left (may lose records; default no).")]
UpstreamPriority = Annotated[int | None, typer.Option(
    "--upstream-priority", help="0..9: under the uplink's bandwidth limit, higher goes first "
    "(default 0).")]
Budget = Annotated[str | None, typer.Option(
    "--budget", help="Disk budget of this topic on each SPU (e.g. 512MiB), within the "
    "SPU's own --disk-budget; see --budget-policy.")]
BudgetPolicy = Annotated[str | None, typer.Option(
    "--budget-policy", help="When the disk budget is full: reject-new (writers get a "
    "retriable BUDGET_EXCEEDED) or drop-oldest (the oldest data the cloud lacks goes, "
    "counted and marked upstream); default reject-new.",
    autocompletion=complete_from(*(p.value for p in Policy)))]

# Option names (without "--") of the settings, for ``topic alter --reset``.
SETTING_OF_FLAG: Final = {
    "retention-time": "retention_ms", "retention-bytes": "retention_bytes",
    "segment-bytes": "segment_bytes", "segment-time": "segment_ms",
    "compression": "compression", "min-insync-replicas": "min_insync_replicas",
    "min-isr": "min_insync_replicas", "unclean-election": "unclean_election",
    "upstream-priority": "upstream_priority", "budget": "budget_bytes",
    "budget-policy": "budget_policy",
}
_DURATIONS: Final = frozenset({"retention_ms", "segment_ms"})
_SIZES: Final = frozenset({"retention_bytes", "segment_bytes", "index_interval_bytes",
                           "budget_bytes"})


def duration_flag(flag: str, text: str, minimum_ms: int = MIN_DURATION_MS) -> int:
    """A duration with its unit (``7`` meant 7 ms, which nobody asking for a
    retention time means), at least ``minimum_ms``."""
    if text.strip().isdigit():
        raise ConfigError(f"{flag} {text}: give a unit (examples: 30s, 12h, 7d, 250ms)")
    ms = parse_duration_ms(text)
    if ms < minimum_ms:
        raise ConfigError(f"{flag} {text}: at least {minimum_ms // 1000}s")
    return ms


def size_flag(flag: str, text: str, minimum: int = MIN_SIZE) -> int:
    """A size with its unit, at least ``minimum`` bytes."""
    if text.strip().isdigit():
        raise ConfigError(f"{flag} {text}: give a unit (examples: 64MiB, 1GiB, 500MB, 4096B)")
    size = parse_size(text)
    if size < minimum:
        raise ConfigError(f"{flag} {text}: at least {minimum} bytes")
    return size


def settings_from(*, retention_time: str | None, retention_bytes: str | None,
                  segment_bytes: str | None, segment_time: str | None,
                  compression: str | None, min_isr: int | None,
                  unclean_election: bool | None, upstream_priority: int | None,
                  budget: str | None = None, budget_policy: str | None = None
                  ) -> dict[str, Any]:
    """The topic settings the given options ask for (None: not given); a bad value
    raises ConfigError naming its flag. The SC checks the rest."""
    config: dict[str, Any] = {}
    if retention_time is not None:
        config["retention_ms"] = (None if retention_time == "forever" else
                                  duration_flag("--retention-time", retention_time))
    if retention_bytes is not None:
        config["retention_bytes"] = size_flag("--retention-bytes", retention_bytes)
    if segment_bytes is not None:
        config["segment_bytes"] = size_flag("--segment-bytes", segment_bytes)
    if segment_time is not None:
        config["segment_ms"] = duration_flag("--segment-time", segment_time)
    if budget is not None:
        config["budget_bytes"] = size_flag("--budget", budget, MIN_BUDGET_BYTES)
    if budget_policy is not None:
        choices = [p.value for p in Policy]
        if budget_policy not in choices:
            raise ConfigError(f"--budget-policy {budget_policy}: one of {', '.join(choices)}")
        config["budget_policy"] = budget_policy
    given = {"compression": compression, "min_insync_replicas": min_isr,
             "unclean_election": unclean_election, "upstream_priority": upstream_priority}
    config.update({k: v for k, v in given.items() if v is not None})
    return config


def setting_name(text: str) -> str:
    """A setting named as in ``topic describe`` (retention_ms) or by its option
    (retention-time, --retention-time)."""
    name = text.strip().removeprefix("--")
    return SETTING_OF_FLAG.get(name, name.replace("-", "_"))


def duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def show_setting(key: str, value: Any) -> Any:
    """A setting's value as people read it: 7d, 1.0 GiB, forever."""
    if key in _DURATIONS:
        if value is None:
            return "forever"
        return duration(value) if isinstance(value, int) else value
    if key in _SIZES and isinstance(value, int) and not isinstance(value, bool):
        return human_bytes(value)
    if key == "retention_bytes" and value is None:
        return "unbounded"
    return value
