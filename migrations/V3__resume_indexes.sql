-- Resume on connect (`/ws?since=`, src/db/changes.rs): a user's rows
-- changed at or after a cursor, oldest first, one index range per table.
CREATE INDEX documents_user_updated_idx ON documents (user_id, updated_at);
CREATE INDEX jobs_user_updated_idx ON jobs (user_id, updated_at);
CREATE INDEX messages_user_updated_idx ON messages (user_id, updated_at);
