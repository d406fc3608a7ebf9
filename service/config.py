"""Settings: every knob bulkhook reads from the environment, with its default.

Parsed by hand rather than with Flask's prefixed loader, which JSON-decodes values and would
turn a numeric-looking signature key into an int.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .exceptions import ConfigError

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest accepted body: event notifications repeat the whole vendor payload in each part."""

DEFAULT_DEDUP_TTL_SECONDS = 4 * 24 * 3600
"""How long a delivery is remembered: beyond the vendor's ~73 h retry window."""

DEFAULT_REDIS_TIMEOUT_SECONDS = 2.0
"""Socket timeout for Redis: bounds how long a callback waits before a 503 when Redis hangs."""

DEFAULT_INBOX_SIZE = 1000
"""How many recent deliveries the inbox index keeps."""

DEFAULT_RETRY_INTERVALS = (10, 60, 300, 1800, 7200)
"""Seconds before each retry of a failed follow-up task; their count is the number of retries."""

DEFAULT_HANDLERS = ("log",)
"""Handlers run for each delivery when BULKHOOK_HANDLERS is not set."""

DEFAULT_API_TIMEOUT_SECONDS = 30.0
"""Timeout of each Open Connectors API call (connect and each read)."""

DEFAULT_API_RATE_LIMIT = 10
"""Open Connectors API calls per second, shared by every worker on one Redis."""

DEFAULT_STATUS_CHECK_INTERVALS = (5, 15, 60, 300, 900)
"""Seconds between re-reads of a job that is not finished yet; then the reconciler takes over."""

DEFAULT_RECONCILE_AFTER_SECONDS = 900
"""A job bulkhook started that is still open this long after its last check gets re-read."""

DEFAULT_RECONCILE_INTERVAL_SECONDS = 60
"""How often one worker (any one) runs the sweeper and the reconciler."""

DEFAULT_SWEEP_AFTER_SECONDS = 600
"""A delivery not done this long after it came in, whose task RQ no longer holds anywhere
and has not touched for as long, is queued again by the sweeper."""

DEFAULT_WORKER_MONITOR_SECONDS = 30
"""How often a worker heartbeats its running task; a task whose worker died is seen as
abandoned this many seconds plus RQ's fixed 60 after the last heartbeat, and retried."""

DEFAULT_WORKER_MAINTENANCE_SECONDS = 60
"""How often a worker sweeps RQ's registries for abandoned tasks (RQ's own default: 600)."""

DEFAULT_REDIS_REPLICA_WAIT_MS = 500
"""With BULKHOOK_REDIS_MIN_REPLICAS set, how long a callback waits for replicas to confirm
its write (Redis WAIT) before it is answered 503 instead of 2xx."""

QUEUE_NAME = "bulkhook"
"""The RQ queue follow-up tasks go to."""

KEY_PREFIX = "bulkhook:"
"""Prefix of every Redis key bulkhook writes (RQ's own keys keep RQ's prefix)."""

RETRY_AFTER_SECONDS = 10
"""Retry-After sent with a 503, when Redis cannot take a callback."""

TASK_TIMEOUT_SECONDS = 600
"""Longest a follow-up task may run before RQ stops it."""

N = TypeVar("N", int, float)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """What one bulkhook process runs with; secrets are kept out of repr."""

    redis_url: str | None
    signature_keys: tuple[str, ...] = field(repr=False)
    allow_unsigned: bool
    max_body_bytes: int
    dedup_ttl_seconds: int
    handlers: tuple[str, ...]
    redis_timeout_seconds: float
    inbox_size: int
    retry_intervals: tuple[int, ...]
    openconnectors_url: str | None = None
    element_token: str | None = field(default=None, repr=False)
    user_secret: str | None = field(default=None, repr=False)
    organization_secret: str | None = field(default=None, repr=False)
    public_url: str | None = None
    strict_jobs: bool = False
    outbox_dir: Path = Path("var/outbox")
    work_dir: Path = Path("var/work")
    forward_url: str | None = None
    forward_key: str | None = field(default=None, repr=False)
    api_timeout_seconds: float = DEFAULT_API_TIMEOUT_SECONDS
    api_rate_limit: int = DEFAULT_API_RATE_LIMIT
    status_check_intervals: tuple[int, ...] = DEFAULT_STATUS_CHECK_INTERVALS
    reconcile_after_seconds: int = DEFAULT_RECONCILE_AFTER_SECONDS
    reconcile_interval_seconds: int = DEFAULT_RECONCILE_INTERVAL_SECONDS
    sweep_after_seconds: int = DEFAULT_SWEEP_AFTER_SECONDS
    worker_class: str = "fork"
    trusted_proxies: int = 0
    worker_monitor_seconds: int = DEFAULT_WORKER_MONITOR_SECONDS
    worker_maintenance_seconds: int = DEFAULT_WORKER_MAINTENANCE_SECONDS
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    redis_sentinel_password: str | None = field(default=None, repr=False)
    redis_min_replicas: int = 0
    redis_replica_wait_ms: int = DEFAULT_REDIS_REPLICA_WAIT_MS
    dashboard_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        keys = tuple(
            key
            for key in (
                _secret(env, "BULKHOOK_SIGNATURE_KEY"),
                _secret(env, "BULKHOOK_SIGNATURE_KEY_PREVIOUS"),
            )
            if key is not None
        )
        handlers = _text(env, "BULKHOOK_HANDLERS")
        return cls(
            redis_url=_text(env, "REDIS_URL"),
            signature_keys=keys,
            allow_unsigned=_bool(env, "BULKHOOK_ALLOW_UNSIGNED", False),
            max_body_bytes=_int(env, "BULKHOOK_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            dedup_ttl_seconds=_int(env, "BULKHOOK_DEDUP_TTL_SECONDS", DEFAULT_DEDUP_TTL_SECONDS),
            handlers=_list(handlers) if handlers else DEFAULT_HANDLERS,
            redis_timeout_seconds=_float(
                env, "BULKHOOK_REDIS_TIMEOUT_SECONDS", DEFAULT_REDIS_TIMEOUT_SECONDS
            ),
            inbox_size=_int(env, "BULKHOOK_INBOX_SIZE", DEFAULT_INBOX_SIZE),
            retry_intervals=_intervals(env, "BULKHOOK_RETRY_INTERVALS", DEFAULT_RETRY_INTERVALS),
            openconnectors_url=_url(env, "BULKHOOK_OPENCONNECTORS_URL"),
            element_token=_secret(env, "BULKHOOK_ELEMENT_TOKEN"),
            user_secret=_secret(env, "BULKHOOK_USER_SECRET"),
            organization_secret=_secret(env, "BULKHOOK_ORGANIZATION_SECRET"),
            public_url=_url(env, "BULKHOOK_PUBLIC_URL"),
            strict_jobs=_bool(env, "BULKHOOK_STRICT_JOBS", False),
            outbox_dir=Path(_text(env, "BULKHOOK_OUTBOX_DIR") or "var/outbox"),
            work_dir=Path(_text(env, "BULKHOOK_WORK_DIR") or "var/work"),
            forward_url=_url(env, "BULKHOOK_FORWARD_URL"),
            forward_key=_secret(env, "BULKHOOK_FORWARD_KEY"),
            api_timeout_seconds=_float(
                env, "BULKHOOK_API_TIMEOUT_SECONDS", DEFAULT_API_TIMEOUT_SECONDS
            ),
            api_rate_limit=_int(env, "BULKHOOK_API_RATE_LIMIT", DEFAULT_API_RATE_LIMIT),
            status_check_intervals=_intervals(
                env, "BULKHOOK_STATUS_CHECK_INTERVALS", DEFAULT_STATUS_CHECK_INTERVALS
            ),
            reconcile_after_seconds=_int(
                env, "BULKHOOK_RECONCILE_AFTER_SECONDS", DEFAULT_RECONCILE_AFTER_SECONDS
            ),
            reconcile_interval_seconds=_int(
                env, "BULKHOOK_RECONCILE_INTERVAL_SECONDS", DEFAULT_RECONCILE_INTERVAL_SECONDS
            ),
            sweep_after_seconds=_int(
                env, "BULKHOOK_SWEEP_AFTER_SECONDS", DEFAULT_SWEEP_AFTER_SECONDS
            ),
            trusted_proxies=_count(env, "BULKHOOK_TRUSTED_PROXIES", 0),
            worker_class=_choice(env, "BULKHOOK_WORKER_CLASS", ("fork", "simple"), "fork"),
            worker_monitor_seconds=_int(
                env, "BULKHOOK_WORKER_MONITOR_SECONDS", DEFAULT_WORKER_MONITOR_SECONDS
            ),
            worker_maintenance_seconds=_int(
                env, "BULKHOOK_WORKER_MAINTENANCE_SECONDS", DEFAULT_WORKER_MAINTENANCE_SECONDS
            ),
            redis_sentinels=_addresses(env, "REDIS_SENTINELS"),
            redis_sentinel_master=_text(env, "REDIS_SENTINEL_MASTER"),
            redis_password=_secret(env, "REDIS_PASSWORD"),
            redis_sentinel_password=_secret(env, "REDIS_SENTINEL_PASSWORD"),
            redis_min_replicas=_count(env, "BULKHOOK_REDIS_MIN_REPLICAS", 0),
            redis_replica_wait_ms=_int(
                env, "BULKHOOK_REDIS_REPLICA_WAIT_MS", DEFAULT_REDIS_REPLICA_WAIT_MS
            ),
            dashboard_token=_dashboard_token(env),
        )

    @property
    def api_configured(self) -> bool:
        """Whether the Open Connectors API can be called (base URL and credentials set)."""
        return bool(self.openconnectors_url and self.element_token and self.user_secret)

    def require_api(self) -> None:
        """Say which API setting is missing."""
        missing = [
            name
            for name, value in (
                ("BULKHOOK_OPENCONNECTORS_URL", self.openconnectors_url),
                ("BULKHOOK_ELEMENT_TOKEN", self.element_token),
                ("BULKHOOK_USER_SECRET", self.user_secret),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"the Open Connectors API needs {', '.join(missing)}")

    def require_public_url(self) -> str:
        """Return the URL Open Connectors reaches this service at, or say how to set it."""
        if not self.public_url:
            raise ConfigError(
                "BULKHOOK_PUBLIC_URL is not set: the externally reachable base URL of this "
                "service, e.g. https://hooks.example.com, which bulk jobs call back"
            )
        return self.public_url

    def require_redis(self) -> None:
        """Check that Redis is configured (REDIS_URL, or Sentinel), or say how to configure it."""
        if self.redis_sentinels or self.redis_sentinel_master:
            if not (self.redis_sentinels and self.redis_sentinel_master):
                raise ConfigError(
                    "Redis Sentinel needs both REDIS_SENTINELS (host:port,...) and "
                    "REDIS_SENTINEL_MASTER (the name the sentinels monitor)"
                )
            return
        if not self.redis_url:
            raise ConfigError(
                "REDIS_URL is not set: point it at your Redis (redis://host:6379/0), "
                "or set REDIS_SENTINELS and REDIS_SENTINEL_MASTER, "
                "or use `bulkhook run`, which starts an embedded Redis"
            )

    def check_receiver(self) -> None:
        """Refuse to receive callbacks without a key, unless unsigned ones are allowed."""
        if not self.signature_keys and not self.allow_unsigned:
            raise ConfigError(
                "no signature key: set BULKHOOK_SIGNATURE_KEY (or BULKHOOK_SIGNATURE_KEY_FILE) "
                "to the instance's Callback Notification Signature Key, or set "
                "BULKHOOK_ALLOW_UNSIGNED=true to accept unsigned callbacks"
            )


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "")
    return value if value.strip() else None


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """Read a secret from NAME or from the file NAME_FILE names (Docker/Kubernetes secrets)."""
    value = _text(env, name)
    path = _text(env, f"{name}_FILE")
    if value is not None and path is not None:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if path is None:
        return value
    try:
        content = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.__class__.__name__}") from None
    # Files usually end in a newline the key does not contain.
    content = content.rstrip("\r\n")
    if not content:
        raise ConfigError(f"{name}_FILE: {path} is empty")
    return content


def _url(env: Mapping[str, str], name: str) -> str | None:
    value = _text(env, name)
    if value is None:
        return None
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL, not {value!r}")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    value = _text(env, name)
    if value is None:
        return default
    if not value.strip().isdigit():
        raise ConfigError(f"{name} must be a whole number, 0 or more, not {value!r}")
    return int(value)


MIN_DASHBOARD_TOKEN_LENGTH = 16
"""The dashboard can requeue and discard tasks: its token must not be guessable."""


def _dashboard_token(env: Mapping[str, str]) -> str | None:
    token = _secret(env, "BULKHOOK_DASHBOARD_TOKEN")
    if token is not None and len(token) < MIN_DASHBOARD_TOKEN_LENGTH:
        raise ConfigError(
            f"BULKHOOK_DASHBOARD_TOKEN must be at least {MIN_DASHBOARD_TOKEN_LENGTH} characters "
            "(try: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def _addresses(env: Mapping[str, str], name: str) -> tuple[tuple[str, int], ...]:
    """Parse host:port,host:port (a Sentinel list)."""
    value = _text(env, name)
    if value is None:
        return ()
    addresses = []
    for item in _list(value):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name} must be host:port[,host:port...], not {item!r}")
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = (_text(env, name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _text(env, name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return _positive(env, name, default, int, "a whole number")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _positive(env, name, default, float, "a number of seconds")


def _positive(
    env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], what: str
) -> N:
    value = _text(env, name)
    if value is None:
        return default
    try:
        number = parse(value)
    except ValueError:
        raise ConfigError(f"{name} must be {what}, not {value!r}") from None
    if not number > 0:  # also refuses NaN
        raise ConfigError(f"{name} must be positive, not {value.strip()}")
    return number


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _intervals(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = _text(env, name)
    if value is None:
        return default
    try:
        intervals = tuple(int(item) for item in _list(value))
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated seconds, not {value!r}") from None
    if any(seconds < 0 for seconds in intervals):
        raise ConfigError(f"{name} must not hold negative seconds")
    return intervals
