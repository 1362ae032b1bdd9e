"""Conversions between Redis microsecond timestamps and the API's ISO 8601 text."""

from __future__ import annotations

from datetime import UTC, datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_second: tuple[int, str] = (-1, "")


def iso_us(us: int) -> str:
    """Redis's µs as ISO 8601 UTC text, e.g. 2026-11-25T01:02:03.000456Z.

    One call per issue batch: the text up to the second is kept for the next batch, which
    is nearly always in the same second (a datetime per batch showed in the profile)."""
    global _second
    seconds, micros = divmod(us, 1_000_000)
    cached_second, prefix = _second
    if seconds != cached_second:
        prefix = from_us(seconds * 1_000_000).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (seconds, prefix)
    return f"{prefix}.{micros:06d}Z"


def now_utc() -> datetime:
    return datetime.now(UTC)
