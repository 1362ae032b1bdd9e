from __future__ import annotations

import os

import pytest

from service.config import ConfigError, Settings, StorageSettings

TOKEN = {"ADMIN_TOKEN": "x" * 16}


def test_defaults_need_only_the_admin_token() -> None:
    settings = Settings.from_env(TOKEN)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/coupons"
    assert (settings.host, settings.port, settings.graceful_timeout_s) == ("127.0.0.1", 8000, 60.0)
    assert settings.workers >= 1


def test_values_are_read_and_converted() -> None:
    settings = Settings.from_env(
        {**TOKEN, "PORT": "9000", "WORKERS": "3", "FLUSH_INTERVAL_MS": "20", "BUFFER_MAX_ROWS": "10000"}
    )
    assert (settings.port, settings.workers, settings.flush_interval_s, settings.buffer_max_rows) == (
        9000,
        3,
        0.02,
        10000,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("WORKERS", "0"),
        ("FLUSH_INTERVAL_MS", "1.5"),
        ("REDIS_TIMEOUT_MS", "-1"),
        ("GRACEFUL_TIMEOUT_S", "soon"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "redis://:6379"),
        ("DATABASE_URL", "mysql://root@127.0.0.1/coupons"),
        ("DATABASE_URL", "postgresql://127.0.0.1:notaport/coupons"),
        ("LOG_LEVEL", "LOUD"),
        ("REDIS_CLUSTER_NODES", "127.0.0.1"),
        ("REDIS_CLUSTER_NODES", "127.0.0.1:7000,:7001"),
        ("REDIS_CLUSTER_NODES", "127.0.0.1:99999"),
        ("REDIS_WAIT_REPLICAS", "-1"),
    ],
)
def test_a_malformed_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**TOKEN, name: value})
    assert caught.value.name == name
    assert str(caught.value).startswith(name)


def test_the_admin_token_is_required_and_long_enough() -> None:
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        Settings.from_env({})
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        Settings.from_env({"ADMIN_TOKEN": "short"})


def test_settings_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(ConfigError, match="FLUSH_BATCH_ROWS"):
        Settings.from_env({**TOKEN, "FLUSH_BATCH_ROWS": "500", "BUFFER_MAX_ROWS": "100"})


def test_cluster_seeds_are_read_and_exclude_a_redis_url() -> None:
    settings = Settings.from_env({**TOKEN, "REDIS_CLUSTER_NODES": "10.0.0.1:7000, redis-b:7001"})
    assert settings.redis_cluster and settings.redis_cluster_nodes == (("10.0.0.1", 7000), ("redis-b", 7001))
    assert not Settings.from_env(TOKEN).redis_cluster
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_NODES: set REDIS_URL or REDIS_CLUSTER_NODES"):
        Settings.from_env({**TOKEN, "REDIS_CLUSTER_NODES": "h:7000", "REDIS_URL": "redis://h:6379/0"})


def test_the_replica_wait_must_fit_in_the_redis_timeout() -> None:
    settings = Settings.from_env({**TOKEN, "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "100"})
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout_ms) == (1, 100)
    with pytest.raises(ConfigError, match="REDIS_WAIT_TIMEOUT_MS"):
        Settings.from_env({**TOKEN, "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "500"})


def test_the_token_never_shows_in_a_repr() -> None:
    assert "x" * 16 not in repr(Settings.from_env(TOKEN))


def test_every_default_is_the_one_its_field_declares() -> None:
    token = "t" * 32
    assert Settings.from_env({"ADMIN_TOKEN": token}) == Settings(admin_token=token)
    assert Settings(admin_token=token).workers == (os.cpu_count() or 1)


def test_the_storage_settings_need_no_admin_token_and_read_as_the_service_reads_them() -> None:
    env = {
        "DATABASE_URL": "postgresql://app:secret@db:5432/coupons",
        "REDIS_CLUSTER_NODES": "r1:7000,r2:7001",
        "REDIS_KEY_PREFIX": "blue",
        "KEY_TTL_GRACE_S": "600",
    }
    storage = StorageSettings.from_env(env)
    assert storage.redis_cluster and storage.redis_key_prefix == "blue" and storage.key_ttl_grace_s == 600
    settings = Settings.from_env({**TOKEN, **env})
    assert all(getattr(settings, name) == value for name, value in vars(storage).items())
    assert StorageSettings.from_env({}) == StorageSettings()
    assert "secret" not in repr(storage)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://root@127.0.0.1/coupons"),
        ("REDIS_URL", "redis://:6379"),
        ("REDIS_CLUSTER_NODES", "127.0.0.1"),
        ("REDIS_KEY_PREFIX", "{braces}"),
        ("OPEN_ENDED_TTL_S", "1"),
    ],
)
def test_a_malformed_storage_setting_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        StorageSettings.from_env({name: value})
    assert caught.value.name == name
