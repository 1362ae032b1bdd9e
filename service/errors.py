"""The service's errors: each type carries its stable code and HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    code = "internal"
    message = "internal error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)

    @property
    def detail(self) -> str:
        return str(self)


class InvalidRequest(ServiceError):
    status, code, message = 400, "invalid_request", "the request is malformed"


class Unauthorized(ServiceError):
    status, code, message = 401, "unauthorized", "a valid admin bearer token is required"


class InvalidToken(ServiceError):
    status, code, message = 401, "unauthorized", "a valid bearer token is required"


class UserMismatch(ServiceError):
    status, code, message = 403, "user_mismatch", "user_id differs from the authenticated user"


class NotStarted(ServiceError):
    status, code, message = 403, "not_started", "the event has not started"


class Ended(ServiceError):
    status, code, message = 403, "ended", "the event has ended"


class Closed(ServiceError):
    status, code, message = 403, "closed", "the event is closed"


class EventNotFound(ServiceError):
    status, code, message = 404, "event_not_found", "no such event"


class IssueNotFound(ServiceError):
    status, code, message = 404, "issue_not_found", "this user holds no coupon of the event"


class NotFound(ServiceError):
    status, code, message = 404, "not_found", "no such route"


class MethodNotAllowed(ServiceError):
    status, code, message = 405, "method_not_allowed", "method not allowed on this route"


class AlreadyIssued(ServiceError):
    status, code, message = 409, "already_issued", "this user already holds a coupon of the event"


class Busy(ServiceError):
    status, code, message = 409, "busy", "another lifecycle operation on this event is running"


class ForeignState(ServiceError):
    status, code, message = 409, "foreign_state", "Redis holds state that cannot belong to this event"


class SoldOut(ServiceError):
    status, code, message = 410, "sold_out", "all coupons of the event are issued"


class PayloadTooLarge(ServiceError):
    status, code, message = 413, "payload_too_large", "the request body is too large"


class Unavailable(ServiceError):
    status, code, message = 503, "unavailable", "the service cannot decide now; retry shortly"
