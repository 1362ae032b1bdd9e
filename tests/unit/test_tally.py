"""The hot path's tally writes exactly what prometheus-client's own calls would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from service.metrics.tally import Tally

_BUCKETS = (0.001, 0.01, 0.1, 1.0)
# On a bound, just past one, past the last, zero, and repeats.
_OBSERVED = [0.0, 0.001, 0.0010001, 0.05, 0.1, 0.5, 1.0, 7.5, 0.05, 0.0005]


def _pair(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    counter = Counter("answers", "answers by outcome", ["outcome"], registry=registry)
    histogram = Histogram("duration_seconds", "duration", buckets=_BUCKETS, registry=registry)
    return counter, histogram


def test_a_flushed_tally_equals_direct_increments_and_observations() -> None:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    counter, histogram = _pair(direct)
    for amount in _OBSERVED:
        counter.labels("issued").inc()
        counter.labels("sold_out").inc(2)
        histogram.observe(amount)

    counter2, histogram2 = _pair(tallied)
    tally = Tally()
    for amount in _OBSERVED:
        tally.inc(counter2.labels("issued"))
        tally.inc(counter2.labels("sold_out"), 2)
        tally.observe(histogram2, amount)
    assert generate_latest(tallied) != generate_latest(direct)  # nothing written before a flush
    tally.flush()

    def samples(registry: CollectorRegistry) -> bytes:
        # Creation timestamps differ between the two registries; every value must not.
        return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)

    assert samples(tallied) == samples(direct)
    tally.flush()  # a second flush adds nothing
    assert samples(tallied) == samples(direct)
