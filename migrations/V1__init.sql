-- Domain tables. The database is the source of truth; realtime events are
-- a best-effort mirror of the changes made here.

CREATE TABLE documents (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    filename      text NOT NULL,
    mime_type     text NOT NULL,
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    status        text NOT NULL CHECK (status IN ('uploaded', 'parsing', 'parsed', 'ingesting', 'ingested', 'error')),
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_user_created_idx ON documents (user_id, created_at DESC);

-- Uploaded bytes live in Postgres so a worker on any host can read them.
CREATE TABLE document_blobs (
    document_id uuid PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    content     bytea NOT NULL
);

-- Text produced by parse, consumed by ingest.
CREATE TABLE document_texts (
    document_id uuid PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    content     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    document_id      uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    user_id          uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('parse', 'ingest')),
    status           text NOT NULL CHECK (status IN ('queued', 'running', 'success', 'failed')),
    retry_count      integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    max_retries      integer NOT NULL CHECK (max_retries >= 0),
    error_message    text,
    run_after        timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_document_idx ON jobs (document_id, created_at);
CREATE INDEX jobs_queued_idx ON jobs (kind, run_after) WHERE status = 'queued';
CREATE INDEX jobs_running_idx ON jobs (kind, lease_expires_at) WHERE status = 'running';

CREATE TABLE chunks (
    id          uuid PRIMARY KEY,
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL,
    chunk_index integer NOT NULL,
    content     text NOT NULL,
    tsv         tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    UNIQUE (document_id, chunk_index)
);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);
CREATE INDEX chunks_user_idx ON chunks (user_id);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    title      text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_idx ON conversations (user_id, created_at DESC);

CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL,
    role            text NOT NULL CHECK (role IN ('user', 'assistant')),
    content         text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'completed', 'error')),
    sources         jsonb NOT NULL DEFAULT '[]'::jsonb,
    error_message   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, created_at);
