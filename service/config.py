"""The service's settings, read once from the environment into frozen dataclasses: the storage
settings alone for couponctl and the load tools, all of them for the service."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from .keys import NAMESPACE

MIN_ADMIN_TOKEN_CHARS = 16


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


@dataclass(frozen=True)
class StorageSettings:
    """Where the service keeps its state, and how long Redis keeps an event's keys: what
    couponctl and the load tools read too, without an admin token."""

    # URLs may carry passwords: a repr leaves them out.
    database_url: str = field(default="postgresql://postgres@127.0.0.1:5432/coupons", repr=False)
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    # Seeds of a Redis Cluster ((host, port), ...); when set, REDIS_URL is not used.
    redis_cluster_nodes: tuple[tuple[str, int], ...] = ()
    # The namespace of every Redis key; unset, the one the database was created with.
    redis_key_prefix: str | None = None
    # Event keys live this long past the event's end (or past the last open or sync
    # for an open-ended event): the safety net behind deleting them on close.
    key_ttl_grace_s: int = 86_400
    open_ended_ttl_s: int = 30 * 86_400

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageSettings:
        return cls(**_storage(_Env(os.environ if environ is None else environ)))

    @property
    def redis_cluster(self) -> bool:
        return bool(self.redis_cluster_nodes)


@dataclass(frozen=True)
class Settings(StorageSettings):
    """Everything the service runs with: the storage settings and the rest."""

    # Replicas that must acknowledge a batch's decisions (WAIT) before its answers leave.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 50
    # Accept a Redis whose maxmemory-policy may evict keys (issues can then be lost or
    # served twice): an operator's explicit, logged choice, never a default.
    redis_allow_eviction: bool = False
    admin_token: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Users decided by one Lua call; bounds the script's run time inside Redis.
    issue_batch_max: int = 512
    # Lua calls in flight per worker; more requests wait and join the next batch.
    issue_inflight_max: int = 4
    redis_timeout_ms: int = 500
    # Consecutive failed decisions that open the circuit, and how long it stays open.
    redis_breaker_failures: int = 3
    redis_breaker_open_ms: int = 500
    flush_batch_rows: int = 5000
    flush_interval_ms: int = 100
    # Rows a worker may hold unwritten; past it issuing answers 503 (I5), never drops.
    buffer_max_rows: int = 200_000
    flush_retry_max_s: float = 5.0
    sold_out_cache_ms: int = 1000
    # How stale a worker's copy of an event's row may be; open, close and sync on this host
    # clear it at once. At least 100 ms, so a flood of reads never becomes a flood of queries.
    event_cache_ms: int = 1000
    reconcile_interval_s: float = 30.0
    reconcile_min_age_s: float = 10.0
    sync_timeout_s: float = 30.0
    graceful_timeout_s: float = 60.0
    request_max_bytes: int = 16_384
    log_level: str = "INFO"
    # "json" (one object a line, for log shippers) or "text" (for a terminal).
    log_format: str = "json"
    # One line per answered request (route, status, duration, request id); off by default.
    access_log: bool = False
    auth_jwt_secret: str | None = None
    auth_jwt_public_key: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        storage = _storage(env)
        d = _defaults(cls)
        return cls(
            **storage,
            redis_wait_replicas=env.integer("REDIS_WAIT_REPLICAS", d["redis_wait_replicas"], 0, 16),
            redis_wait_timeout_ms=env.integer("REDIS_WAIT_TIMEOUT_MS", d["redis_wait_timeout_ms"], 1, 60_000),
            redis_allow_eviction=env.boolean("REDIS_ALLOW_EVICTION", d["redis_allow_eviction"]),
            admin_token=env.admin_token("ADMIN_TOKEN"),
            host=env.text("HOST", d["host"]),
            port=env.integer("PORT", d["port"], 1, 65535),
            workers=env.integer("WORKERS", d["workers"], 1, 256),
            issue_batch_max=env.integer("ISSUE_BATCH_MAX", d["issue_batch_max"], 1, 10_000),
            issue_inflight_max=env.integer("ISSUE_INFLIGHT_MAX", d["issue_inflight_max"], 1, 64),
            redis_timeout_ms=env.integer("REDIS_TIMEOUT_MS", d["redis_timeout_ms"], 10, 60_000),
            redis_breaker_failures=env.integer(
                "REDIS_BREAKER_FAILURES", d["redis_breaker_failures"], 1, 1000
            ),
            redis_breaker_open_ms=env.integer(
                "REDIS_BREAKER_OPEN_MS", d["redis_breaker_open_ms"], 10, 600_000
            ),
            flush_batch_rows=env.integer("FLUSH_BATCH_ROWS", d["flush_batch_rows"], 1, 1_000_000),
            flush_interval_ms=env.integer("FLUSH_INTERVAL_MS", d["flush_interval_ms"], 1, 60_000),
            buffer_max_rows=env.integer("BUFFER_MAX_ROWS", d["buffer_max_rows"], 1, 100_000_000),
            flush_retry_max_s=env.number("FLUSH_RETRY_MAX_S", d["flush_retry_max_s"], 0.01, 600.0),
            sold_out_cache_ms=env.integer("SOLD_OUT_CACHE_MS", d["sold_out_cache_ms"], 0, 60_000),
            event_cache_ms=env.integer("EVENT_CACHE_MS", d["event_cache_ms"], 100, 60_000),
            reconcile_interval_s=env.number("RECONCILE_INTERVAL_S", d["reconcile_interval_s"], 0.1, 86_400.0),
            reconcile_min_age_s=env.number("RECONCILE_MIN_AGE_S", d["reconcile_min_age_s"], 0.0, 86_400.0),
            sync_timeout_s=env.number("SYNC_TIMEOUT_S", d["sync_timeout_s"], 0.1, 3600.0),
            graceful_timeout_s=env.number("GRACEFUL_TIMEOUT_S", d["graceful_timeout_s"], 0.0, 3600.0),
            request_max_bytes=env.integer("REQUEST_MAX_BYTES", d["request_max_bytes"], 256, 10_000_000),
            log_level=env.choice("LOG_LEVEL", d["log_level"], ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=env.choice("LOG_FORMAT", d["log_format"].upper(), ("JSON", "TEXT")).lower(),
            access_log=env.boolean("ACCESS_LOG", d["access_log"]),
            auth_jwt_secret=env.secret("AUTH_JWT_SECRET"),
            auth_jwt_public_key=env.public_key("AUTH_JWT_PUBLIC_KEY"),
        )

    def __post_init__(self) -> None:
        if self.flush_batch_rows > self.buffer_max_rows:
            raise ConfigError("FLUSH_BATCH_ROWS", "must not exceed BUFFER_MAX_ROWS")
        if self.issue_batch_max > self.buffer_max_rows:
            raise ConfigError("ISSUE_BATCH_MAX", "must not exceed BUFFER_MAX_ROWS")
        if self.redis_wait_replicas and self.redis_wait_timeout_ms >= self.redis_timeout_ms:
            # WAIT blocks the connection: past the command timeout the batch would fail anyway.
            raise ConfigError("REDIS_WAIT_TIMEOUT_MS", "must be below REDIS_TIMEOUT_MS")
        if self.auth_jwt_secret and self.auth_jwt_public_key:
            raise ConfigError("AUTH_JWT_SECRET", "set AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY, not both")

    def __repr__(self) -> str:
        # The admin token never reaches a log line, even through a repr.
        return f"Settings(host={self.host!r}, port={self.port}, workers={self.workers})"

    @property
    def redis_timeout_s(self) -> float:
        return self.redis_timeout_ms / 1000

    @property
    def flush_interval_s(self) -> float:
        return self.flush_interval_ms / 1000

    @property
    def sold_out_cache_s(self) -> float:
        return self.sold_out_cache_ms / 1000

    @property
    def event_cache_s(self) -> float:
        return self.event_cache_ms / 1000


def _storage(env: _Env) -> dict[str, Any]:
    """The storage settings' values, read and checked as the service reads them."""
    cluster_nodes = env.addresses("REDIS_CLUSTER_NODES")
    if cluster_nodes and env.text("REDIS_URL", ""):
        raise ConfigError("REDIS_CLUSTER_NODES", "set REDIS_URL or REDIS_CLUSTER_NODES, not both")
    d = _defaults(StorageSettings)
    return {
        "database_url": env.url("DATABASE_URL", d["database_url"], ("postgresql", "postgres")),
        "redis_url": env.url("REDIS_URL", d["redis_url"], ("redis", "rediss", "unix")),
        "redis_cluster_nodes": cluster_nodes,
        "redis_key_prefix": env.namespace("REDIS_KEY_PREFIX"),
        "key_ttl_grace_s": env.integer("KEY_TTL_GRACE_S", d["key_ttl_grace_s"], 1, 365 * 86_400),
        "open_ended_ttl_s": env.integer("OPEN_ENDED_TTL_S", d["open_ended_ttl_s"], 60, 3650 * 86_400),
    }


def _defaults(cls: type[StorageSettings]) -> dict[str, Any]:
    """Each setting's default, as its field declares it: written once."""
    found: dict[str, Any] = {}
    for item in fields(cls):
        if item.default is not MISSING:
            found[item.name] = item.default
        elif item.default_factory is not MISSING:
            found[item.name] = item.default_factory()
    return found


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw, 10)
        except ValueError:
            raise ConfigError(name, f"expected an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(name, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"expected a number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(name, f"must be between {low} and {high}, got {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.upper() not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
        return raw.upper()

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"expected true or false, got {raw!r}")

    def addresses(self, name: str) -> tuple[tuple[str, int], ...]:
        """Comma-separated host:port pairs; empty when unset."""
        raw = self._raw(name)
        if raw is None:
            return ()
        found = []
        for item in (part.strip() for part in raw.split(",")):
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ConfigError(name, f"expected host:port[,host:port...], got {item!r}")
            found.append((host.strip("[]"), int(port)))
        return tuple(found)

    def namespace(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is not None and not NAMESPACE.fullmatch(raw):
            raise ConfigError(name, f"must be 1-64 characters of A-Z a-z 0-9 . _ - (no braces), got {raw!r}")
        return raw

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        raw = self._raw(name) or default
        parts = urlsplit(raw)
        if parts.scheme not in schemes:
            raise ConfigError(name, f"scheme must be one of {', '.join(schemes)}, got {raw!r}")
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigError(name, "has no host")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ConfigError(name, "has a malformed port") from None
        return raw

    def secret(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is not None and len(raw) < 32:
            raise ConfigError(name, "must be at least 32 characters (an HS256 key)")
        return raw

    def public_key(self, name: str) -> str | None:
        """A PEM public key, given inline or as the path of a file holding it."""
        raw = self._raw(name)
        if raw is None:
            return None
        if not raw.startswith("-----BEGIN"):
            try:
                with open(raw, encoding="ascii") as pem:
                    raw = pem.read().strip()
            except OSError as exc:
                raise ConfigError(
                    name, f"is neither a PEM key nor a readable file ({exc.strerror})"
                ) from None
        try:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            load_pem_public_key(raw.encode())
        except ValueError:
            raise ConfigError(name, "is not a PEM public key") from None
        return raw

    def admin_token(self, name: str) -> str:
        raw = self._raw(name)
        if raw is None:
            raise ConfigError(name, "is required (the bearer token for the admin API)")
        if len(raw) < MIN_ADMIN_TOKEN_CHARS:
            raise ConfigError(name, f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters")
        return raw
