-- Paginated lists (src/db/page.rs): each page is one index range on the
-- list's scope and its keyset `(created_at, id)`, read forwards or
-- backwards. They replace the indexes on `created_at` alone, their prefixes.
CREATE INDEX documents_user_created_id_idx ON documents (user_id, created_at, id);
DROP INDEX documents_user_created_idx;
CREATE INDEX conversations_user_created_id_idx ON conversations (user_id, created_at, id);
DROP INDEX conversations_user_idx;
CREATE INDEX messages_conversation_created_id_idx ON messages (conversation_id, created_at, id);
DROP INDEX messages_conversation_idx;
