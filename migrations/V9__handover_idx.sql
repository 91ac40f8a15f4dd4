-- Queued jobs that carry a hand-back mark (`lease_expires_at`, set by the
-- preemption in src/db/queue_sql.rs): the preemption counts those still in
-- flight at every decision. Without this index the count scans every job of
-- the kind; with it, only the few marked rows (tests/fair_sql.rs
-- `fair_queries_use_the_indexes`, planned after VACUUM ANALYZE).
CREATE INDEX jobs_handover_idx ON jobs (kind, lease_expires_at)
    WHERE status = 'queued' AND lease_expires_at IS NOT NULL;
