//! Chunk vectors (`chunk_vectors`, V8): one per chunk and model id, f32
//! little-endian in bytea. Written in the ingest transaction right after
//! `chunks::replace`, or by an `embed` job (backfill); removed with their
//! chunk (ON DELETE CASCADE). Each write or removal bumps the user's
//! `vector_versions` row (a trigger), which caches check.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;
use super::jobs::{COLUMNS, Job};

/// f32 little-endian bytes.
pub fn encode(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Appends the f32s of `bytes` to `out`; `false` if the length is not
/// `dims` floats.
pub fn decode_into(bytes: &[u8], dims: usize, out: &mut Vec<f32>) -> bool {
    if bytes.len() != dims * 4 {
        return false;
    }
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    true
}

/// Stores the vectors of a document's chunks, `vecs[i]` for chunk_index
/// `i`, in the caller's transaction (right after `chunks::replace`).
pub async fn put_document(
    tx: &impl GenericClient,
    document_id: Uuid,
    model: &str,
    vecs: &[Vec<f32>],
) -> Result<u64, DbError> {
    let idx: Vec<i32> = (0..vecs.len() as i32).collect();
    let bytes: Vec<Vec<u8>> = vecs.iter().map(|v| encode(v)).collect();
    let n = tx
        .execute(
            "INSERT INTO chunk_vectors (chunk_id, user_id, model, vec)
             SELECT c.id, c.user_id, $2, t.v
             FROM unnest($3::int[], $4::bytea[]) AS t(i, v)
             JOIN chunks c ON c.document_id = $1 AND c.chunk_index = t.i
             ON CONFLICT (chunk_id, model) DO UPDATE SET vec = EXCLUDED.vec",
            &[&document_id, &model, &idx, &bytes],
        )
        .await?;
    Ok(n)
}

/// Stores vectors by chunk id (an embed job); chunks removed meanwhile
/// are skipped.
pub async fn put_chunks(
    tx: &impl GenericClient,
    model: &str,
    chunk_ids: &[Uuid],
    vecs: &[Vec<f32>],
) -> Result<u64, DbError> {
    let bytes: Vec<Vec<u8>> = vecs.iter().map(|v| encode(v)).collect();
    let n = tx
        .execute(
            "INSERT INTO chunk_vectors (chunk_id, user_id, model, vec)
             SELECT c.id, c.user_id, $1, t.v
             FROM unnest($2::uuid[], $3::bytea[]) AS t(id, v)
             JOIN chunks c ON c.id = t.id
             ON CONFLICT (chunk_id, model) DO NOTHING",
            &[&model, &chunk_ids, &bytes],
        )
        .await?;
    Ok(n)
}

/// A document's chunks with no vector for `model`: (id, content).
pub async fn missing(
    client: &impl GenericClient,
    document_id: Uuid,
    model: &str,
) -> Result<Vec<(Uuid, String)>, DbError> {
    let rows = client
        .query(
            "SELECT c.id, c.content FROM chunks c
             WHERE c.document_id = $1 AND NOT EXISTS (
                SELECT 1 FROM chunk_vectors v WHERE v.chunk_id = c.id AND v.model = $2)
             ORDER BY c.chunk_index",
            &[&document_id, &model],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every vector of `user_id` for `model`: chunk ids and their vectors laid
/// end to end (`dims` each); rows of another length are skipped.
pub async fn load(
    client: &impl GenericClient,
    user_id: Uuid,
    model: &str,
    dims: usize,
) -> Result<(Vec<Uuid>, Vec<f32>), DbError> {
    let rows = client
        .query(
            "SELECT chunk_id, vec FROM chunk_vectors WHERE user_id = $1 AND model = $2",
            &[&user_id, &model],
        )
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut flat = Vec::with_capacity(rows.len() * dims);
    for r in &rows {
        if decode_into(r.get::<_, &[u8]>(1), dims, &mut flat) {
            ids.push(r.get(0));
        }
    }
    Ok((ids, flat))
}

/// The version of the user's vectors for `model` (0: none written yet).
pub async fn version(
    client: &impl GenericClient,
    user_id: Uuid,
    model: &str,
) -> Result<i64, DbError> {
    let row = client
        .query_opt(
            "SELECT version FROM vector_versions WHERE user_id = $1 AND model = $2",
            &[&user_id, &model],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// The embed-job insert: at most one pending per document (the partial
/// unique index), so a second enqueue is a no-op.
fn enqueue_sql(documents: &str) -> String {
    format!(
        "INSERT INTO jobs (id, document_id, user_id, kind, status, max_retries, run_after,
                           created_at, updated_at)
         SELECT gen_random_uuid(), d.id, d.user_id, 'embed', 'queued', $2,
                now() + make_interval(secs => $3), clock_timestamp(), clock_timestamp()
         FROM ({documents}) d
         ON CONFLICT (document_id) WHERE kind = 'embed' AND status IN ('queued', 'running')
         DO NOTHING
         RETURNING {COLUMNS}"
    )
}

/// Queues an embed job for one document, due in `after_secs` (its chunks
/// could not be embedded at ingest); `None` if one is already pending.
pub async fn enqueue_one(
    tx: &impl GenericClient,
    document_id: Uuid,
    max_retries: i32,
    after_secs: f64,
) -> Result<Option<Job>, DbError> {
    let docs = "SELECT id, user_id FROM documents WHERE id = $1";
    let row = tx
        .query_opt(
            &enqueue_sql(docs),
            &[&document_id, &max_retries, &after_secs],
        )
        .await?;
    Ok(row.as_ref().map(Job::from_row))
}

/// An embed job's result and the backfill's decision of what is missing
/// serialise on this lock (shared by each result's transaction, exclusive
/// for the decision): otherwise a decision whose snapshot predates a job's
/// commit, but which checks the pending-job index after it, queues the
/// document a second time.
const BACKFILL_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('ragctl-embed-backfill', 0))";
const BACKFILL_LOCK_SHARED: &str =
    "SELECT pg_advisory_xact_lock_shared(hashtextextended('ragctl-embed-backfill', 0))";

/// Holds the backfill lock shared until `tx` ends (an embed job's result).
pub async fn hold_for_result(tx: &impl GenericClient) -> Result<(), DbError> {
    tx.execute(BACKFILL_LOCK_SHARED, &[]).await?;
    Ok(())
}

/// Queues an embed job for every `ingested` document with chunks lacking a
/// vector for `model`, at most one pending per document; in its own
/// transaction, after every embed result being committed has committed.
pub async fn enqueue_backfill(
    client: &mut deadpool_postgres::Object,
    model: &str,
    max_retries: i32,
    embargo_secs: f64,
) -> Result<Vec<Job>, DbError> {
    let tx = client.transaction().await?;
    tx.execute(BACKFILL_LOCK, &[]).await?;
    let queued = enqueue_missing(&tx, model, max_retries, embargo_secs).await?;
    tx.commit().await?;
    Ok(queued)
}

/// The backfill: queues an embed job for every `ingested` document with a
/// chunk lacking a vector for `$1` (the model id), unless one is pending.
/// Embargoed by `embargo_secs` like [`super::jobs::enqueue`].
async fn enqueue_missing(
    client: &impl GenericClient,
    model: &str,
    max_retries: i32,
    embargo_secs: f64,
) -> Result<Vec<Job>, DbError> {
    let docs = "SELECT d.id, d.user_id FROM documents d
        WHERE d.status = 'ingested' AND EXISTS (
            SELECT 1 FROM chunks c WHERE c.document_id = d.id AND NOT EXISTS (
                SELECT 1 FROM chunk_vectors v WHERE v.chunk_id = c.id AND v.model = $1))";
    let rows = client
        .query(&enqueue_sql(docs), &[&model, &max_retries, &embargo_secs])
        .await?;
    Ok(rows.iter().map(Job::from_row).collect())
}

/// Lifts the embargo of `ids` (queued embed jobs) at once.
pub async fn start_all(client: &impl GenericClient, ids: &[Uuid]) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE jobs SET run_after = now() WHERE id = ANY($1) AND status = 'queued'",
            &[&ids],
        )
        .await?;
    Ok(())
}

/// The chunks `ids` of `user_id`'s `ingested` documents, as hits with no
/// score yet (in no particular order); others are left out.
pub async fn hits(
    client: &impl GenericClient,
    user_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<crate::rag::hit::Hit>, DbError> {
    let rows = client
        .query(
            "SELECT c.id, c.document_id, d.filename, c.chunk_index, c.content
             FROM chunks c JOIN documents d ON d.id = c.document_id
             WHERE c.id = ANY($2) AND c.user_id = $1 AND d.user_id = $1
               AND d.status = 'ingested'",
            &[&user_id, &ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| crate::rag::hit::Hit {
            chunk_id: r.get(0),
            document_id: r.get(1),
            filename: r.get(2),
            chunk_index: r.get(3),
            content: r.get(4),
            score: 0.0,
            coverage: 0.0,
            cosine: None,
        })
        .collect())
}
