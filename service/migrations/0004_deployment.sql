-- The deployment's identity. Every Redis key the service writes carries this namespace, so
-- two deployments sharing one Redis database never touch each other's keys, and a database
-- dropped and re-created gets a new namespace: it cannot adopt the keys of its predecessor
-- that Redis still holds (docs/reliability.md).
CREATE TABLE deployment (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    redis_namespace text NOT NULL CHECK (redis_namespace ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO deployment (redis_namespace) VALUES (substr(replace(gen_random_uuid()::text, '-', ''), 1, 16));
