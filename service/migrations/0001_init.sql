-- The durable record: coupons (the benefit), events (window and quantity), and one row per
-- coupon issued. Users are not modelled: a user id is the client's text.
CREATE TABLE coupons (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    details jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    coupon_id bigint REFERENCES coupons (id),
    quantity bigint NOT NULL CHECK (quantity > 0),
    starts_at timestamptz NOT NULL,
    ends_at timestamptz CHECK (ends_at IS NULL OR ends_at > starts_at),
    status text NOT NULL DEFAULT 'created' CHECK (status IN ('created', 'open', 'closed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE coupon_issues (
    event_id bigint NOT NULL REFERENCES events (id),
    user_id text NOT NULL,
    ordinal bigint NOT NULL CHECK (ordinal > 0),
    issued_at timestamptz NOT NULL,
    CONSTRAINT coupon_issues_event_user_key UNIQUE (event_id, user_id),
    CONSTRAINT coupon_issues_event_ordinal_key UNIQUE (event_id, ordinal)
);
