-- The per-row foreign-key check on coupon_issues cost 0.7-1.0 s per 100,000 rows written
-- (measured 2026-11-24, docs/performance.md), most of the writer's time. Events are never
-- deleted, and an issue exists only because Redis decided it for an event that PostgreSQL
-- created first, so the constraint guarded nothing the design does not already guarantee.
ALTER TABLE coupon_issues DROP CONSTRAINT coupon_issues_event_id_fkey;
