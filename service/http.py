"""JSON responses (orjson) and the one place errors become HTTP answers."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sanic import HTTPResponse, Request
from sanic.exceptions import MethodNotAllowed as SanicMethodNotAllowed
from sanic.exceptions import NotFound as SanicNotFound
from sanic.exceptions import PayloadTooLarge as SanicPayloadTooLarge
from sanic.exceptions import SanicException

from .errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
)
from .failures import unavailable
from .instrument import answered, route_name

logger = logging.getLogger(__name__)

_JSON = "application/json"


class Response(HTTPResponse):
    """Sanic's response, with its header check made cheap for the common case.

    Sanic strips CR, LF and NUL from every header name and value with ``str.translate``, a
    dictionary lookup per character: about a microsecond for a request id, several per
    answer (py-spy put it at 12% of a worker's time under ``wrk``). Three ``in`` scans find
    whether there is anything to strip at a tenth of that; only then is it stripped.
    """

    __slots__ = ()

    @staticmethod
    def _sanitize_header_value(value: str) -> str:
        if "\r" in value or "\n" in value or "\x00" in value:
            return value.translate(_HEADER_UNSAFE)
        return value


_HEADER_UNSAFE = str.maketrans("", "", "\r\n\x00")


def json(body: Any, status: int = 200) -> HTTPResponse:
    return Response(orjson.dumps(body), status=status, content_type=_JSON)


def error(exc: ServiceError) -> HTTPResponse:
    response = json({"error": {"code": exc.code, "message": exc.detail}}, exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def handle(request: Request, exc: Exception) -> HTTPResponse:
    """Every exception a route lets through becomes {"error": {"code", "message"}}."""
    refusal = _refusal(request, exc)
    response = error(refusal)
    if isinstance(exc, SanicMethodNotAllowed):
        # RFC 9110: a 405 lists the methods the route does allow.
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods or ()))
    answered(request, response, refusal.code)
    return response


def _refusal(request: Request, exc: Exception) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, SanicNotFound):
        return NotFound()
    if isinstance(exc, SanicMethodNotAllowed):
        return MethodNotAllowed()
    if isinstance(exc, SanicPayloadTooLarge):
        return PayloadTooLarge()
    # Logged by route name, never by path: a path can hold a user id.
    refusal = unavailable(exc)
    if refusal is not None:
        logger.warning("dependency failed on %s: %s", route_name(request), type(exc).__name__)
        return refusal
    if isinstance(exc, SanicException) and 400 <= exc.status_code < 500:
        return _client_error(exc.status_code)
    logger.exception("unhandled error on %s %s", request.method, route_name(request))
    return ServiceError()


def _client_error(status: int) -> ServiceError:
    exc = InvalidRequest("the request could not be read")
    exc.status = status
    return exc
