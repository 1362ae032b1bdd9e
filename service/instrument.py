"""Per-answer bookkeeping: the request id echoed, the answer counted (by route and status;
issue answers by outcome, timed; admin lifecycle operations by result) and, if enabled, the
access log line.

Done in the handlers (``observed``) and in the error handler rather than in Sanic
middleware: a pair of middlewares costs every request more than all of this.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import Counter
from sanic import HTTPResponse, Request

from . import logs
from .errors import ServiceError
from .metrics import counted
from .metrics.tally import tally

Handler = Callable[..., Awaitable[HTTPResponse]]

_ISSUE_ROUTE = "issue"
_http_children: dict[tuple[str, int], Counter] = {}
_issue_outcome = {outcome: counted.issue_requests.labels(outcome) for outcome in counted.OUTCOMES}
# An issue answer's error code -> its outcome; any other 4xx is "invalid".
_OUTCOME_OF_CODE = {
    "already_issued": "already_issued",
    "sold_out": "sold_out",
    "not_started": "not_open",
    "ended": "not_open",
    "closed": "not_open",
    "event_not_found": "not_open",
    "unavailable": "unavailable",
}
access_log_enabled = False


def route_name(request: Request) -> str:
    """The matched route's short name ("issue", "event", …), or "unmatched"."""
    route = request.route
    return route.name.rsplit(".", 1)[-1] if route is not None else "unmatched"


def observed(handler: Handler) -> Handler:
    """Wraps a route handler: its successful answers are counted here; its refusals are
    counted by the error handler, which calls ``answered`` too."""

    @functools.wraps(handler)
    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        request.ctx.arrived = time.perf_counter()
        response = await handler(request, *args, **kwargs)
        answered(request, response)
        return response

    return wrapper


def answered(request: Request, response: HTTPResponse, error_code: str | None = None) -> None:
    arrived = getattr(request.ctx, "arrived", None)
    elapsed = time.perf_counter() - arrived if arrived is not None else 0.0
    route = route_name(request)
    status = response.status
    child = _http_children.get((route, status))
    if child is None:
        child = _http_children[route, status] = counted.http_requests.labels(route, str(status))
    tally.inc(child)
    if route == _ISSUE_ROUTE:
        tally.inc(_issue_outcome[issue_outcome(status, error_code)])
        tally.observe(counted.issue_duration, elapsed)
    response.headers[logs.HEADER] = logs.request_id(request)
    if access_log_enabled:
        logs.access.info(
            "request",
            extra={
                "method": request.method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3) if arrived is not None else None,
            },
        )


def issue_outcome(status: int, code: str | None) -> str:
    if status == 201:
        return "issued"
    if code in _OUTCOME_OF_CODE:
        return _OUTCOME_OF_CODE[code]
    if status == 503:
        return "unavailable"
    return "invalid" if status < 500 else "error"


@contextlib.contextmanager
def lifecycle_operation(operation: str) -> Iterator[None]:
    """Counts an admin operation by result: ok, refused (a 4xx) or failed."""
    try:
        yield
    except ServiceError as exc:
        counted.lifecycle_operations.labels(operation, "refused" if exc.status < 500 else "failed").inc()
        raise
    except Exception:
        counted.lifecycle_operations.labels(operation, "failed").inc()
        raise
    counted.lifecycle_operations.labels(operation, "ok").inc()
