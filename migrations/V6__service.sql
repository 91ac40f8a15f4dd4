-- Fair claim by service received (src/db/jobs.rs `claim`, issue #18): a
-- user's turn comes after what their slots already ran recently, so a
-- fresh account cannot jump ahead of users who were waiting.

-- Wall seconds that slots spent on this job's ended attempts (succeeded,
-- failed, released, preempted, or lapsed and taken over).
ALTER TABLE jobs ADD COLUMN service_secs double precision NOT NULL DEFAULT 0;

-- A user's last turn and their service of the last minutes, one index
-- range per user; it replaces V2's (kind, user_id, claimed_at) index.
CREATE INDEX jobs_service_idx ON jobs (kind, user_id, claimed_at)
    INCLUDE (service_secs, status) WHERE claimed_at IS NOT NULL;
DROP INDEX jobs_claimed_user_idx;
