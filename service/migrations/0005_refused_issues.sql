-- PostgreSQL is the last line of I1: the writer stores an issue only if its ordinal is
-- within its event's quantity. An issue it will not store (above the quantity, for an event
-- it does not know, or colliding with a different stored issue of the same user or ordinal)
-- is kept here, never dropped silently: it was answered 201 upstream, and an operator must
-- see it (docs/reliability.md).
CREATE TABLE refused_issues (
    event_id bigint NOT NULL,
    user_id text NOT NULL,
    ordinal bigint NOT NULL,
    issued_at timestamptz NOT NULL,
    reason text NOT NULL CHECK (reason IN ('over_quantity', 'unknown_event', 'conflict')),
    refused_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, user_id, ordinal, reason)
);
