"""The public API: issue a coupon, read an event, read a user's issue, health and readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from sanic import Blueprint, HTTPResponse, Request

from . import store, validation
from .auth import issuing_user
from .errors import EventNotFound, IssueNotFound, Unavailable
from .failures import DEPENDENCY_FAILURES
from .http import json
from .instrument import observed
from .metrics import exposition
from .readiness import readiness
from .runtime import Worker, worker_of
from .timefmt import iso, iso_us, to_us

logger = logging.getLogger(__name__)

public = Blueprint("public")


@public.post("/events/<event_id:str>/issue", name="issue")
@observed
async def issue(request: Request, event_id: str) -> HTTPResponse:
    ctx = worker_of(request)
    event = validation.event_id(event_id)
    if ctx.verifier is None:
        user = validation.issue_body(request.body)
    else:
        body_user = validation.issue_body_optional(request.body)
        user = issuing_user(ctx.verifier, request.headers.get("authorization"), body_user)
    ordinal, issued_at = await ctx.issuer.issue(event, user)
    return json({"event_id": event, "user_id": user, "ordinal": ordinal, "issued_at": issued_at}, 201)


@public.get("/events/<event_id:str>", name="event")
@observed
async def event(request: Request, event_id: str) -> HTTPResponse:
    """What a sale page polls. While the event is live this reads Redis only: the row comes
    from the worker's cache (EVENT_CACHE_MS), the remaining stock from the event's keys."""
    ctx = worker_of(request)
    event = validation.event_id(event_id)
    row = await ctx.directory.event(event)
    if row is None:
        raise EventNotFound()
    state = await ctx.events.shared_state(event)
    if state.status is not None:
        issued = state.issued
    else:  # not in Redis: closed, never opened, or being recovered
        issued = await store.issue_count(ctx.pool, event)
    page = _page(row)
    remaining = max(0, row.quantity - issued)
    return json(
        {**page.fields, "status": _public_status(page, state.status, remaining), "remaining": remaining}
    )


@dataclass(frozen=True, slots=True)
class _Page:
    """What an event's page shows that only its row decides, made once per row read."""

    row: store.EventRow
    fields: dict[str, Any]
    starts_at_us: int
    ends_at_us: int | None


_pages: dict[int, _Page] = {}
_MAX_PAGES = 10_000  # as many as the event directory keeps


def _page(row: store.EventRow) -> _Page:
    page = _pages.get(row.id)
    if page is None or page.row is not row:  # the directory read the row again
        if len(_pages) >= _MAX_PAGES:
            _pages.clear()
        fields = {
            "id": row.id,
            "name": row.name,
            "quantity": row.quantity,
            "starts_at": iso(row.starts_at),
            "ends_at": iso(row.ends_at),
            "coupon": row.coupon,
        }
        ends_at_us = None if row.ends_at is None else to_us(row.ends_at)
        page = _pages[row.id] = _Page(row, fields, to_us(row.starts_at), ends_at_us)
    return page


def _public_status(page: _Page, live: str | None, remaining: int) -> str:
    """What a shopper sees: created, scheduled, open, sold_out, ended, closed or unavailable.

    The stored status may be up to EVENT_CACHE_MS old; ``live`` (Redis) is not, and wins
    where the two can disagree."""
    stored = page.row.status
    if stored == "closed" or live == "closed":
        return "closed"
    if live is None or live == "syncing":
        return "created" if stored == "created" else "unavailable"
    now_us = time.time_ns() // 1000
    if now_us < page.starts_at_us:
        return "scheduled"
    if page.ends_at_us is not None and now_us >= page.ends_at_us:
        return "ended"
    return "sold_out" if remaining == 0 else "open"


@public.get("/events/<event_id:str>/issues/<user_id:str>", name="user_issue")
@observed
async def user_issue(request: Request, event_id: str, user_id: str) -> HTTPResponse:
    """A user checking their coupon. While the event is open and whole in Redis, Redis holds
    every issue of it and answers alone; otherwise PostgreSQL is asked."""
    ctx = worker_of(request)
    event = validation.event_id(event_id)
    user = validation.user_id_path(user_id)
    record, complete = await ctx.events.issue_of(event, user)
    if record is not None:
        ordinal, issued_at_us = record
        issued_at: str | None = iso_us(issued_at_us)
    elif complete:
        raise IssueNotFound()
    else:
        row = await store.issue(ctx.pool, event, user)
        if row is None:
            if await ctx.directory.event(event) is None:
                raise EventNotFound()
            raise IssueNotFound()
        ordinal, issued_at = row["ordinal"], iso(row["issued_at"])
    return json({"event_id": event, "user_id": user, "ordinal": ordinal, "issued_at": issued_at})


_OPENAPI = resources.files("service").joinpath("openapi.json").read_bytes()


@public.get("/openapi.json", name="openapi")
@observed
async def openapi(request: Request) -> HTTPResponse:
    """The API contract (OpenAPI 3.0), kept beside the code and checked by schemathesis."""
    return HTTPResponse(_OPENAPI, content_type="application/json")


@public.get("/metrics", name="metrics")
@observed
async def prometheus_metrics(request: Request) -> HTTPResponse:
    """Every worker's metrics (multiprocess mode) and the open events' counts, for Prometheus.

    Not public: nginx refuses it from outside. If Redis or PostgreSQL cannot be read, the
    per-event gauges are left out and the rest is served.
    """
    ctx = worker_of(request)
    try:
        states = await asyncio.wait_for(_event_states(ctx), max(ctx.settings.redis_timeout_s, 1.0))
    except DEPENDENCY_FAILURES as exc:
        logger.debug("event gauges left out: %s", type(exc).__name__)
        states = []
    body = exposition.render(exposition.event_families(states))
    return HTTPResponse(body, content_type=exposition.CONTENT_TYPE)


async def _event_states(ctx: Worker) -> list[tuple[int, int, int, int]]:
    pool, events = ctx.pool, ctx.events
    open_events = await store.open_events(pool, exposition.MAX_EVENTS)
    if not open_events:
        return []
    stored = await store.issue_counts(pool, [event_id for event_id, _ in open_events])
    states = []
    for event_id, quantity in open_events:
        state = await events.state(event_id)
        states.append((event_id, quantity, state.issued, stored.get(event_id, 0)))
    return states


@public.get("/health", name="health")
@observed
async def health(request: Request) -> HTTPResponse:
    return json({"status": "ok"})


@public.get("/ready", name="ready")
@observed
async def ready(request: Request) -> HTTPResponse:
    """Ready when Redis answers with the scripts loaded, has been verified against PostgreSQL
    since it last changed, and cannot evict keys (or an operator accepted that it may), and
    PostgreSQL answers."""
    ctx = worker_of(request)
    checks = await readiness(ctx)
    workers = len(ctx.board.slots())
    if all(checks.values()):
        return json({"status": "ready", "checks": checks, "workers": workers})
    refusal = Unavailable("not ready: " + ", ".join(name for name, ok in checks.items() if not ok))
    return json(
        {"error": {"code": refusal.code, "message": refusal.detail}, "checks": checks, "workers": workers},
        503,
    )
