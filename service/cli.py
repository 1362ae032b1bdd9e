"""`couponctl`: the admin CLI over the HTTP admin API, plus `migrate` and `check`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from .config import ConfigError, StorageSettings

_REDIS_HINT = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
_POSTGRES_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="couponctl", description=__doc__)
    parser.add_argument(
        "--url",
        default=os.environ.get("COUPON_URL")
        or f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}",
        help="the service's base URL (env COUPON_URL; default http://HOST:PORT)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("ADMIN_TOKEN"), help="admin token (env ADMIN_TOKEN)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", help="create an event")
    create.add_argument("name")
    create.add_argument("quantity", type=int)
    create.add_argument("--starts-at", help="ISO 8601 with a time zone (default: now)")
    create.add_argument("--ends-at", help="ISO 8601 with a time zone (default: open-ended)")
    create.add_argument("--coupon", help="the coupon as a JSON object, e.g. '{\"discount\": 10}'")
    create.add_argument("--open", action="store_true", help="open the event right away")
    create.add_argument("--quiet", "-q", action="store_true", help="print the new event's id alone")
    for name, text in (
        ("open", "open an event (rebuilds its Redis state from PostgreSQL)"),
        ("close", "close an event: stop issuing, store everything, delete its Redis keys"),
        ("sync", "rebuild an event's Redis state from PostgreSQL and the buffers"),
        ("stats", "an event's counts in Redis and PostgreSQL"),
    ):
        commands.add_parser(name, help=text).add_argument("event_id", type=int)
    migrate = commands.add_parser("migrate", help="apply database migrations (env DATABASE_URL)")
    migrate.add_argument("--create-db", action="store_true", help="create the database if missing")
    commands.add_parser("check", help="say whether Redis and PostgreSQL are reachable")
    commands.add_parser(
        "upgrade-keys",
        help="move live events opened by a version without Redis namespaces into this deployment's"
        " namespace (env DATABASE_URL, REDIS_URL, REDIS_KEY_PREFIX); run once, before the new version serves",
    )

    args = parser.parse_args(argv)
    if args.command == "migrate":
        raise SystemExit(_migrate(_storage(), args.create_db))
    if args.command == "check":
        raise SystemExit(_check(_storage()))
    if args.command == "upgrade-keys":
        raise SystemExit(asyncio.run(_upgrade_keys(_storage())))
    if not args.token:
        parser.error("the admin token is required: set ADMIN_TOKEN or pass --token")
    client = _Client(args.url, args.token)
    if args.command == "create":
        body: dict[str, Any] = {"name": args.name, "quantity": args.quantity}
        if args.starts_at:
            body["starts_at"] = args.starts_at
        if args.ends_at:
            body["ends_at"] = args.ends_at
        if args.coupon:
            body["coupon"] = json.loads(args.coupon)
        created = client.call("POST", "/admin/events", body)
        if args.open:
            created = client.call("POST", f"/admin/events/{created['id']}/open")
        if args.quiet:
            print(created["id"])
        else:
            _print(created)
    elif args.command == "stats":
        _print(client.call("GET", f"/admin/events/{args.event_id}"))
    else:
        _print(client.call("POST", f"/admin/events/{args.event_id}/{args.command}"))


class _Client:
    def __init__(self, url: str, token: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise SystemExit(f"couponctl: --url must be http:// or https://, got {url!r}")
        self._url = url.rstrip("/")
        self._token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._url + path, data=data, method=method)  # noqa: S310 - scheme checked
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())["error"]
                message = f"{exc.code} {err['code']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            print(f"couponctl: {method} {path} failed: {message}", file=sys.stderr)
            raise SystemExit(1) from None
        except urllib.error.URLError as exc:
            print(f"couponctl: cannot reach the service at {self._url}: {exc.reason}", file=sys.stderr)
            raise SystemExit(1) from None


def _storage() -> StorageSettings:
    """DATABASE_URL, REDIS_URL and the rest of the storage settings, read as the service reads them."""
    try:
        return StorageSettings.from_env()
    except ConfigError as exc:
        raise SystemExit(f"couponctl: configuration error: {exc}") from None


def _print(body: Any) -> None:
    print(json.dumps(body, indent=2, ensure_ascii=False))


def _migrate(storage: StorageSettings, create_db: bool) -> int:
    from .schema import create_database, migrate

    url = storage.database_url

    async def run() -> list[str]:
        if create_db and await create_database(url):
            print(f"couponctl: created database {url.rsplit('/', 1)[-1]}")
        return await migrate(url)

    applied = asyncio.run(run())
    print(f"couponctl: {len(applied)} migration(s) applied" + (f": {', '.join(applied)}" if applied else ""))
    return 0


async def _upgrade_keys(storage: StorageSettings) -> int:
    import dataclasses

    import asyncpg

    from .config import Settings
    from .keys import Keyspace, stored_namespace
    from .lifecycle import Lifecycle
    from .redis_events import RedisEvents
    from .redis_link import RedisLink, connect
    from .upgrade import upgrade_keys
    from .workers import WorkerBoard

    if storage.redis_cluster:
        print("couponctl: upgrade-keys: versions without namespaces ran on one Redis only", file=sys.stderr)
        return 2
    # The lifecycle reads only the storage settings here (the keys' lifetimes); it answers
    # no admin request, so it is given no admin token.
    settings = Settings(**dataclasses.asdict(storage))
    pool = await asyncpg.create_pool(storage.database_url, min_size=1, max_size=2)
    redis = connect(storage.redis_url, max_connections=4, timeout_s=10)
    try:
        namespace = storage.redis_key_prefix or await stored_namespace(pool)
        link = RedisLink(redis)
        await link.load_scripts()
        events = RedisEvents(link, Keyspace(namespace))
        moved = await upgrade_keys(pool, events, Lifecycle(pool, events, WorkerBoard.local(), settings))
    finally:
        await redis.aclose()
        await pool.close()
    for result in moved:
        print(f"couponctl: {result.line()}")
    refused = sum(result.outcome == "refused" for result in moved)
    print(
        f"couponctl: {sum(r.outcome == 'moved' for r in moved)} event(s) moved to namespace {namespace}"
        + (f", {refused} refused" if refused else "")
    )
    return 1 if refused else 0


def _check(storage: StorageSettings) -> int:
    """One clear line per unreachable server, with how to start it."""
    import asyncpg
    import redis

    from .failures import POSTGRES_FAILURES, REDIS_FAILURES

    redis_url, database_url = storage.redis_url, storage.database_url
    failed = 0
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2).ping()
    except REDIS_FAILURES as exc:
        print(f"Redis is not reachable at {redis_url} ({exc}); start it with: {_REDIS_HINT}", file=sys.stderr)
        failed = 1

    async def postgres() -> None:
        from urllib.parse import urlsplit, urlunsplit

        # The server, not the database: `migrate --create-db` creates that.
        parts = urlsplit(database_url)
        conn = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")), timeout=3)
        await conn.close()

    try:
        asyncio.run(postgres())
    except POSTGRES_FAILURES as exc:
        print(
            f"PostgreSQL is not reachable at {database_url} ({exc}); start it with: {_POSTGRES_HINT}",
            file=sys.stderr,
        )
        failed = 1
    return failed


if __name__ == "__main__":
    main()
