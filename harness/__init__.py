"""What the tests and the load tools share: the service as a process, private Redis,
PostgreSQL and Redis Cluster servers, fault proxies, an HTTP client of the API, and the
invariants (docs/design.md) checked on Redis and PostgreSQL themselves."""
