"""`couponctl`: the admin CLI over the HTTP admin API (list, watch, create, open, close, sync,
stats), plus `migrate`, `check` and `upgrade-keys`, which talk to the databases directly."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.parse
from typing import Any

from .client import AdminClient, ApiError
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
    listing = commands.add_parser("list", help="events, newest first")
    listing.add_argument("--status", choices=("created", "open", "closed"), help="only events of this status")
    listing.add_argument("--limit", type=_positive, default=50, help="events to list (default 50)")
    listing.add_argument(
        "--json", action="store_true", help="JSON (the default when stdout is not a terminal)"
    )
    listing.add_argument("--quiet", "-q", action="store_true", help="the ids alone, one a line")
    watch = commands.add_parser("watch", help="a live view of one event (Ctrl-C stops it)")
    watch.add_argument("event_id", type=int)
    watch.add_argument(
        "--until-sold-out", action="store_true", help="stop once it sold out and all is stored"
    )
    watch.add_argument(
        "--interval", type=_interval, default=0.25, help="seconds between polls (default 0.25)"
    )
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
        print("couponctl: the admin token is required: set ADMIN_TOKEN or pass --token", file=sys.stderr)
        raise SystemExit(2)
    try:
        client = AdminClient(args.url, args.token)
    except ValueError as exc:
        raise SystemExit(f"couponctl: {exc}") from None
    try:
        _admin(client, args)
    except ApiError as exc:
        print(f"couponctl: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _admin(client: AdminClient, args: argparse.Namespace) -> None:
    if args.command == "create":
        body: dict[str, Any] = {"name": args.name, "quantity": args.quantity}
        if args.starts_at:
            body["starts_at"] = args.starts_at
        if args.ends_at:
            body["ends_at"] = args.ends_at
        if args.coupon:
            try:
                body["coupon"] = json.loads(args.coupon)
            except ValueError:
                raise SystemExit(f"couponctl: --coupon is not JSON: {args.coupon!r}") from None
        created = client.call("POST", "/admin/events", body)
        if args.open:
            created = client.call("POST", f"/admin/events/{created['id']}/open")
        if args.quiet:
            print(created["id"])
        else:
            _print(created)
    elif args.command == "list":
        _list(client, args.status, args.limit, "ids" if args.quiet else "json" if args.json else "table")
    elif args.command == "watch":
        from .watch import watch

        raise SystemExit(watch(client, args.event_id, args.interval, args.until_sold_out))
    elif args.command == "stats":
        _print(client.call("GET", f"/admin/events/{args.event_id}"))
    else:
        _print(client.call("POST", f"/admin/events/{args.event_id}/{args.command}"))


def _list(client: AdminClient, status: str | None, limit: int, shown_as: str) -> None:
    """Up to ``limit`` events, newest first, a page of at most 200 at a time: their ids, JSON,
    or a table (JSON when stdout is not a terminal)."""
    events: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(events) < limit:
        query = {"limit": str(min(200, limit - len(events)))}
        if status:
            query["status"] = status
        if cursor:
            query["cursor"] = cursor
        page = client.call("GET", "/admin/events?" + urllib.parse.urlencode(query))
        events += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    if shown_as == "ids":
        for event in events:
            print(event["id"])
        return
    if shown_as == "json" or not sys.stdout.isatty():
        _print({"events": events, "next_cursor": cursor})
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    for column in ("id", "name", "status", "quantity", "remaining", "starts at", "ends at"):
        table.add_column(column, justify="right" if column in ("id", "quantity", "remaining") else "left")
    for event in events:
        remaining = event["remaining"]
        table.add_row(
            str(event["id"]),
            Text(event["name"]),  # as written: an event's name is never read as markup
            event["status"],
            f"{event['quantity']:,}",
            "?" if remaining is None else f"{remaining:,}",
            _short_time(event["starts_at"]),
            _short_time(event["ends_at"]) if event["ends_at"] else "-",
        )
    console = Console()
    console.print(table if events else "no events" + (f" with status {status}" if status else ""))
    if cursor is not None:
        console.print(f"(more events: raise --limit above {limit})", style="dim")


def _short_time(iso_text: str) -> str:
    """2026-11-24T20:35:23.015127Z as 2026-11-24 20:35:23Z."""
    return iso_text[:19].replace("T", " ") + "Z"


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.05 <= value <= 60:
        raise argparse.ArgumentTypeError(f"expected 0.05 to 60 seconds, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


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
