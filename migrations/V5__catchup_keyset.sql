-- Catch-up pages (`/ws?since=`, src/db/changes.rs `page`): keyset
-- pagination on (updated_at, id) within a user, one index range per page
-- even when many rows share one `updated_at` (one transaction's `now()`).
-- They replace V3's (user_id, updated_at) indexes, which they cover.
CREATE INDEX documents_user_updated_id_idx ON documents (user_id, updated_at, id);
CREATE INDEX jobs_user_updated_id_idx ON jobs (user_id, updated_at, id);
CREATE INDEX messages_user_updated_id_idx ON messages (user_id, updated_at, id);
DROP INDEX documents_user_updated_idx;
DROP INDEX jobs_user_updated_idx;
DROP INDEX messages_user_updated_idx;
