"""Prometheus metrics, in three modules: ``counted`` (what is counted: every metric, its
labels and buckets), ``tally`` (the hot path's in-memory sums) and ``exposition`` (the
multiprocess directory, ``/metrics`` with its per-event gauges, each worker's process figures).
"""
