"""Settings: defaults, parsing, secrets from files, and refusals at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import create_app
from service.config import DEFAULT_DEDUP_TTL_SECONDS, DEFAULT_MAX_BODY_BYTES, Settings
from service.exceptions import ConfigError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 16 * 1024 * 1024
    assert settings.dedup_ttl_seconds == DEFAULT_DEDUP_TTL_SECONDS == 4 * 24 * 3600
    assert settings.allow_unsigned is False
    assert settings.signature_keys == ()
    assert settings.handlers == ("log",)


def test_current_key_comes_before_the_previous_one() -> None:
    settings = Settings.from_env(
        {"BULKHOOK_SIGNATURE_KEY": "new", "BULKHOOK_SIGNATURE_KEY_PREVIOUS": "old"}
    )
    assert settings.signature_keys == ("new", "old")


def test_keys_are_not_in_the_repr() -> None:
    settings = Settings.from_env({"BULKHOOK_SIGNATURE_KEY": "hush-1234"})
    assert "hush-1234" not in repr(settings)


def test_key_is_read_from_a_file_without_its_trailing_newline(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("12345 key with spaces\n")
    settings = Settings.from_env({"BULKHOOK_SIGNATURE_KEY_FILE": str(key_file)})
    assert settings.signature_keys == ("12345 key with spaces",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BULKHOOK_SIGNATURE_KEY": "a", "BULKHOOK_SIGNATURE_KEY_FILE": "/x"}, "not both"),
        ({"BULKHOOK_SIGNATURE_KEY_FILE": "/nonexistent/key"}, "cannot read /nonexistent/key"),
        ({"BULKHOOK_ALLOW_UNSIGNED": "maybe"}, "must be true or false"),
        ({"BULKHOOK_MAX_BODY_BYTES": "16MB"}, "must be a whole number"),
        ({"BULKHOOK_MAX_BODY_BYTES": "0"}, "must be positive"),
        ({"BULKHOOK_DEDUP_TTL_SECONDS": "-5"}, "must be positive"),
        ({"BULKHOOK_REDIS_TIMEOUT_SECONDS": "soon"}, "must be a number of seconds"),
        ({"BULKHOOK_RETRY_INTERVALS": "10,x"}, "comma-separated seconds"),
        ({"BULKHOOK_WORKER_CLASS": "threads"}, "must be one of fork, simple"),
        ({"BULKHOOK_OPENCONNECTORS_URL": "api.example.com"}, "must be an http:// or https:// URL"),
        ({"REDIS_SENTINELS": "10.0.0.1"}, "REDIS_SENTINELS must be host:port"),
        ({"REDIS_SENTINELS": "10.0.0.1:26379,:1"}, "not ':1'"),
        ({"REDIS_SENTINELS": "h:99999"}, "REDIS_SENTINELS must be host:port"),
        ({"BULKHOOK_REDIS_MIN_REPLICAS": "one"}, "must be a whole number, 0 or more"),
    ],
)
def test_invalid_settings_are_refused_with_the_setting_named(env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_empty_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        Settings.from_env({"BULKHOOK_SIGNATURE_KEY_FILE": str(tmp_path / "key")})


def test_app_refuses_to_start_without_a_key(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="BULKHOOK_SIGNATURE_KEY.*BULKHOOK_ALLOW_UNSIGNED=true"):
        create_app({"REDIS_URL": redis_url})


def test_app_starts_without_a_key_when_unsigned_is_allowed(redis_url: str) -> None:
    app = create_app({"REDIS_URL": redis_url, "BULKHOOK_ALLOW_UNSIGNED": "true"})
    assert app.extensions["bulkhook"].settings.allow_unsigned


def test_app_refuses_to_start_without_redis_url() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL is not set"):
        create_app({"BULKHOOK_SIGNATURE_KEY": "k"})


def test_app_refuses_to_start_with_a_handler_that_does_not_import(redis_url: str) -> None:
    config = {"REDIS_URL": redis_url, "BULKHOOK_SIGNATURE_KEY": "k"}
    with pytest.raises(ConfigError, match="cannot import 'nopkg.hooks'"):
        create_app({**config, "BULKHOOK_HANDLERS": "nopkg.hooks.on_bulk"})
    with pytest.raises(ConfigError, match="'tests.handlers.missing' is not a callable"):
        create_app({**config, "BULKHOOK_HANDLERS": "tests.handlers.missing"})


def test_sentinel_settings_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "REDIS_SENTINELS": "10.0.0.1:26379, [::1]:26380",
            "REDIS_SENTINEL_MASTER": "bulkhook",
            "REDIS_PASSWORD": "redis-secret",
            "REDIS_SENTINEL_PASSWORD": "sentinel-secret",
        }
    )
    assert settings.redis_sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert settings.redis_sentinel_master == "bulkhook"
    settings.require_redis()  # no REDIS_URL needed
    assert "secret" not in repr(settings)


@pytest.mark.parametrize(
    "env",
    [{"REDIS_SENTINELS": "10.0.0.1:26379"}, {"REDIS_SENTINEL_MASTER": "bulkhook"}],
)
def test_sentinel_needs_both_settings(env) -> None:
    with pytest.raises(ConfigError, match="needs both REDIS_SENTINELS"):
        Settings.from_env(env).require_redis()
