-- When each issue reached PostgreSQL (its flush's transaction time): write lag is
-- stored_at - issued_at, and a load run's "last row stored" is max(stored_at).
ALTER TABLE coupon_issues ADD COLUMN stored_at timestamptz NOT NULL DEFAULT now();
