"""Stream key names: the dead letters share their stream's hash slot, partitions spread over slots."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors
from redis.crc import key_slot

from eventline_shared.environment import ConfigError
from eventline_shared.server.config import CommonSettings
from eventline_shared.streams import stream


@pytest.mark.parametrize("base", ["eventline:events", "eventline:prod:events", "app:{events}", "a{b}{}"])
def test_a_dead_letter_stream_shares_its_streams_slot(base: str) -> None:
    for partitions in (1, 2, 4):
        for key in stream.StreamLayout(base, partitions).keys:
            assert key_slot(stream.dead_letter_key(key).encode()) == key_slot(key.encode())


def test_one_partition_is_the_configured_stream_and_its_dead_letters_are_tagged() -> None:
    layout = stream.StreamLayout("eventline:events")
    assert layout.keys == ["eventline:events"]
    assert layout.dead_letter_keys == ["{eventline:events}:dead"]
    assert stream.dead_letter_key("app:{events}") == "app:{events}:dead"


@pytest.mark.parametrize("base", ["eventline:events", "app:{events}"])
def test_partitions_hash_to_different_slots(base: str) -> None:
    keys = stream.StreamLayout(base, 8).keys
    assert len(set(keys)) == 8
    assert len({key_slot(k.encode()) for k in keys}) == 8


def test_a_customer_always_has_the_same_partition_and_system_events_partition_0() -> None:
    assert stream.partition_of("", 8) == 0
    assert stream.partition_of("anyone", 1) == 0
    # CRC-32: the same in every process and release (Python's hash() is salted per process).
    assert stream.partition_of("customer-42", 8) == 5
    seen = {stream.partition_of(f"c{i}", 8) for i in range(200)}
    assert seen == set(range(8))
    layout = stream.StreamLayout("eventline:events", 8)
    assert layout.key_for("customer-42") == "eventline:events:5"
    assert layout.key_for("") == "eventline:events:0"


def test_hash_tags_follow_redis_rules() -> None:
    assert stream.hash_tag("{user1000}.following") == "user1000"
    assert stream.hash_tag("foo{}{bar}") is None  # an empty first tag: the whole key is hashed
    assert stream.hash_tag("foo{{bar}}zap") == "{bar"
    assert stream.hash_tag("plain") is None


def test_the_cluster_is_said_by_the_url_or_a_setting() -> None:
    def settings(**environ: str) -> CommonSettings:
        return CommonSettings.from_env(environ, "ingestion", 1)

    assert settings(EVENTLINE_REDIS_URL="redis+cluster://h:7000").redis_url == "redis+cluster://h:7000"
    assert settings(EVENTLINE_REDIS_URL="rediss://h:7000", EVENTLINE_REDIS_CLUSTER="true").redis_url == (
        "rediss+cluster://h:7000"
    )
    assert stream.is_cluster_url("rediss+cluster://h:7000")
    assert not stream.is_cluster_url(settings(EVENTLINE_REDIS_URL="rediss://h:7000").redis_url)
    with pytest.raises(ConfigError, match="EVENTLINE_REDIS_CLUSTER"):
        settings(EVENTLINE_REDIS_URL="unix:///tmp/r.sock", EVENTLINE_REDIS_CLUSTER="true")
    with pytest.raises(ConfigError, match="EVENTLINE_STREAM_PARTITIONS"):
        settings(EVENTLINE_STREAM_PARTITIONS="0")
    assert settings(EVENTLINE_STREAM_PARTITIONS="4").stream_layout.partitions == 4
    with pytest.raises(ConfigError, match=r"EVENTLINE_STREAM: .*braces"):
        settings(EVENTLINE_STREAM="odd{}name")


def test_the_old_dead_letter_setting_is_refused() -> None:
    from eventline_campaigns.settings import Settings

    with pytest.raises(ConfigError, match="EVENTLINE_CAMPAIGNS_DEAD_LETTER"):
        Settings.from_env({"EVENTLINE_CAMPAIGNS_DEAD_LETTER": "elsewhere"})


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ClusterDownError("CLUSTERDOWN The cluster is down"),
        redis_errors.MasterDownError("MASTERDOWN Link with MASTER is down"),
        redis_errors.SlotNotCoveredError("no node serves slot 42"),
        redis_errors.TryAgainError("TRYAGAIN"),
        redis_errors.MovedError("3999 127.0.0.1:6381"),
        redis_errors.ResponseError("CLUSTERDOWN Hash slot not served"),
    ],
)
def test_cluster_errors_that_outlast_the_clients_retries_count_against_redis(error: Exception) -> None:
    """Health turns NOT_SERVING when they persist (the dependency monitor asks ``explains``)."""
    from eventline_shared.streams.stream import Redis

    assert stream.unavailable(error)
    assert Redis(stream.connect("redis+cluster://127.0.0.1:1"), "k", required=True).explains(error)
    assert not stream.unavailable(redis_errors.ResponseError("WRONGTYPE Operation against a key"))
