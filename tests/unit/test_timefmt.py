"""Redis microseconds as the API's ISO 8601 text."""

from __future__ import annotations

import random

from service.timefmt import from_us, iso, iso_us, to_us


def test_iso_us_matches_datetime_formatting_across_seconds_and_its_cache() -> None:
    moments = [0, 1, 999_999, 1_000_000, 951_782_400_000_000, 1_795_569_604_824_123, 253_402_300_799_999_999]
    rng = random.Random(5)
    moments += [rng.randrange(0, 4_102_444_800_000_000) for _ in range(2000)]
    start = 1_795_569_604_999_990
    moments += list(range(start, start + 20))  # across a second boundary, in order
    for us in moments:
        assert iso_us(us) == iso(from_us(us)), us
        assert to_us(from_us(us)) == us
    assert iso_us(1_795_569_604_000_456) == "2026-11-25T01:20:04.000456Z"
