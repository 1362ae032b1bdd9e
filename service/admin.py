"""The admin API: event lifecycle for operators, behind a bearer token."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl

from sanic import Blueprint, HTTPResponse, Request

from . import validation
from .errors import Unauthorized
from .http import json
from .instrument import lifecycle_operation, observed
from .lifecycle import Lifecycle
from .live import event_list, event_live
from .readiness import readiness
from .runtime import worker_of
from .timefmt import iso, now_utc

admin = Blueprint("admin", url_prefix="/admin")


@admin.on_request
async def authorize(request: Request) -> None:
    expected = request.app.ctx.settings.admin_token.encode()
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # Constant-time comparison: the answer's timing says nothing of the token.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized()


def _lifecycle(request: Request) -> Lifecycle:
    return worker_of(request).lifecycle


@admin.get("/events", name="list_events")
@observed
async def list_events(request: Request) -> HTTPResponse:
    listing = validation.event_listing(parse_qsl(request.query_string, keep_blank_values=True))
    ctx = worker_of(request)
    return json(await event_list(ctx.pool, ctx.events, listing))


@admin.post("/events", name="create_event")
@observed
async def create_event(request: Request) -> HTTPResponse:
    spec = validation.event_spec(request.body, now_utc())
    row = await _lifecycle(request).create(spec)
    return json(
        {
            "id": row.id,
            "name": row.name,
            "status": row.status,
            "quantity": row.quantity,
            "starts_at": iso(row.starts_at),
            "ends_at": iso(row.ends_at),
            "coupon": row.coupon,
        },
        201,
    )


@admin.post("/events/<event_id:str>/open", name="open_event")
@observed
async def open_event(request: Request, event_id: str) -> HTTPResponse:
    with lifecycle_operation("open"):
        report = await _lifecycle(request).open(validation.event_id(event_id))
    return json(report.as_json())


@admin.post("/events/<event_id:str>/close", name="close_event")
@observed
async def close_event(request: Request, event_id: str) -> HTTPResponse:
    with lifecycle_operation("close"):
        report = await _lifecycle(request).close(validation.event_id(event_id))
    return json(report.as_json())


@admin.post("/events/<event_id:str>/sync", name="sync_event")
@observed
async def sync_event(request: Request, event_id: str) -> HTTPResponse:
    with lifecycle_operation("sync"):
        report = await _lifecycle(request).sync(validation.event_id(event_id))
    return json(report.as_json())


@admin.get("/events/<event_id:str>", name="event_report")
@observed
async def event_report(request: Request, event_id: str) -> HTTPResponse:
    report = await _lifecycle(request).report(validation.event_id(event_id))
    return json(report.as_json())


@admin.get("/events/<event_id:str>/live", name="event_live")
@observed
async def event_live_view(request: Request, event_id: str) -> HTTPResponse:
    """What `couponctl watch` polls a few times a second: the report, the sale's moments,
    this host's answers and latency buckets (cumulative: the client diffs them), readiness."""
    ctx = worker_of(request)
    live = await event_live(ctx.pool, ctx.lifecycle, validation.event_id(event_id))
    checks = await readiness(ctx, read_eviction=False)
    return json({**live, "checks": checks, "workers": len(ctx.board.slots()), "now": iso(now_utc())})
