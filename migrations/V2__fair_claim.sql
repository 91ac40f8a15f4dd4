-- Fair claiming (src/db/jobs.rs `claim`): among users with due jobs,
-- workers serve the one with the fewest running jobs, then the one served
-- least recently, so one user's backlog cannot starve another's document.

-- When the job was last claimed; a user's latest is their last turn.
ALTER TABLE jobs ADD COLUMN claimed_at timestamptz;

-- The users with due jobs are walked one index probe per user, and each
-- user's oldest due jobs read from the same index.
CREATE INDEX jobs_queued_user_idx ON jobs (kind, user_id, run_after) WHERE status = 'queued';
-- Running jobs per user.
CREATE INDEX jobs_running_user_idx ON jobs (kind, user_id) WHERE status = 'running';
-- A user's last turn.
CREATE INDEX jobs_claimed_user_idx ON jobs (kind, user_id, claimed_at) WHERE claimed_at IS NOT NULL;
