-- BM25 statistics per user (issue #19). Maintained by db::chunks::replace
-- and db::documents::delete in the transaction that changes the chunks.

-- A tsvector's length in tokens (positions), which is BM25's document
-- length; `length(tsv)` would count distinct lexemes only.
CREATE FUNCTION bm25_tokens(v tsvector) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT coalesce(sum(coalesce(array_length(u.positions, 1), 1)), 0)::integer FROM unnest(v) AS u $$;

ALTER TABLE chunks
    ADD COLUMN tokens integer GENERATED ALWAYS AS (bm25_tokens(to_tsvector('english', content))) STORED;

-- Chunk count and total length of each user's chunks (the average length
-- is total_tokens / chunks). A user with no chunks has no row.
CREATE TABLE bm25_users (
    user_id      uuid PRIMARY KEY,
    chunks       bigint NOT NULL,
    total_tokens bigint NOT NULL
);

-- Document frequency: how many of the user's chunks contain the lexeme.
-- A lexeme no chunk contains has no row. No CHECK on the counters: they
-- are written as signed deltas (INSERT ... ON CONFLICT adds EXCLUDED), and a
-- row that reaches 0 is deleted in the same transaction.
CREATE TABLE bm25_terms (
    user_id uuid NOT NULL,
    lexeme  text NOT NULL,
    df      integer NOT NULL,
    PRIMARY KEY (user_id, lexeme)
);

INSERT INTO bm25_users (user_id, chunks, total_tokens)
SELECT user_id, count(*), sum(tokens) FROM chunks GROUP BY user_id;

INSERT INTO bm25_terms (user_id, lexeme, df)
SELECT c.user_id, l.lexeme, count(*)
FROM chunks c, unnest(tsvector_to_array(c.tsv)) AS l(lexeme)
GROUP BY c.user_id, l.lexeme;
