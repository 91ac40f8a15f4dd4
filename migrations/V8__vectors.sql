-- Dense retrieval (issue #19): one vector per chunk and model, and the
-- `embed` job kind that fills in the vectors a document lacks (backfill).

-- f32 little-endian in bytea: decoded with one copy, a third of the size
-- of real[]'s text form, and read whole per user (see src/embed/cache.rs).
CREATE TABLE chunk_vectors (
    chunk_id uuid NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
    user_id  uuid NOT NULL,
    model    text NOT NULL,
    vec      bytea NOT NULL,
    PRIMARY KEY (chunk_id, model)
);
CREATE INDEX chunk_vectors_user_model_idx ON chunk_vectors (user_id, model);

-- Bumped by every statement that adds or removes a user's vectors (also
-- through the cascade from chunks): a cache of the user's vectors is
-- current while its version is.
CREATE TABLE vector_versions (
    user_id uuid NOT NULL,
    model   text NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (user_id, model)
);

CREATE FUNCTION ragctl_bump_vector_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO vector_versions (user_id, model, version)
    SELECT DISTINCT user_id, model, 1 FROM changed
    ORDER BY user_id, model
    ON CONFLICT (user_id, model) DO UPDATE SET version = vector_versions.version + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER chunk_vectors_added AFTER INSERT ON chunk_vectors
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION ragctl_bump_vector_version();
CREATE TRIGGER chunk_vectors_removed AFTER DELETE ON chunk_vectors
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION ragctl_bump_vector_version();

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('parse', 'ingest', 'embed'));

-- At most one pending embed job per document: two workers starting at
-- once both run the backfill, and the second's inserts are no-ops.
CREATE UNIQUE INDEX jobs_embed_pending_idx ON jobs (document_id)
    WHERE kind = 'embed' AND status IN ('queued', 'running');
