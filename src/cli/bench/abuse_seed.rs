//! What each `--abuse` phase finds in its fresh database, inserted with
//! SQL: the honest users' documents, chunks and conversations, and the
//! attacker's history (long messages) or corpus (many chunks).

use anyhow::Context;
use tokio_postgres::Client;
use uuid::Uuid;

/// Chunks of each honest user's one ingested document.
const HONEST_CHUNKS: i32 = 10;
/// Messages already in each honest user's conversation.
const HONEST_MESSAGES: i32 = 10;
/// The attacker's history for attacks 1 and 2 (issue #17: 10,000 long
/// messages of control characters, 6 bytes each in JSON).
pub(super) const LONG_MESSAGES: i32 = 10_000;
/// Characters of each long message (the API takes up to 16,000).
pub(super) const LONG_MESSAGE_CHARS: i32 = 7_000;
/// The attacker's chunks for the search flood (attack 6).
pub(super) const ATTACKER_CHUNKS: i32 = 100_000;

/// Words of every honest chunk, and of the honest users' questions.
pub(super) const HONEST_TEXT: &str = "Reimbursement requests need a receipt and the \
    manager's approval. Travel is booked through the portal. Expenses over the \
    budget are refunded after review.";
/// Words of every attacker chunk; its questions ask for all of them, so
/// that every one of its chunks matches and is ranked.
pub(super) const ATTACKER_QUESTION: &str =
    "policy travel expense reimbursement receipt manager approval budget invoice payment";

/// An honest user's rows: one conversation to read and ask in.
pub(super) struct HonestRows {
    pub(super) users: Vec<Uuid>,
    pub(super) conversations: Vec<Uuid>,
}

/// A database connection for seeding; its connection task runs until the
/// client is dropped.
pub(super) async fn connect(db_url: &str) -> anyhow::Result<Client> {
    let (client, conn) = crate::db::connect(db_url, "ragctl-bench-abuse").await?;
    tokio::spawn(conn);
    Ok(client)
}

/// `n` honest users, each with an ingested document of `HONEST_CHUNKS`
/// chunks and a conversation of `HONEST_MESSAGES` messages.
pub(super) async fn honest(client: &Client, n: usize) -> anyhow::Result<HonestRows> {
    let users: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let conversations: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    client
        .execute(
            "WITH d AS (
               INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status)
               SELECT gen_random_uuid(), u, 'handbook.txt', 'text/plain', 4096, 'ingested'
                 FROM unnest($1::uuid[]) AS u
               RETURNING id, user_id)
             INSERT INTO chunks (id, document_id, user_id, chunk_index, content)
             SELECT gen_random_uuid(), d.id, d.user_id, i, $2::text || ' Section ' || i || '.'
               FROM d, generate_series(0, $3::int - 1) AS i",
            &[&users, &HONEST_TEXT, &HONEST_CHUNKS],
        )
        .await
        .context("seeding the honest users' documents")?;
    crate::db::lexical::recount(client, &users).await?;
    client
        .execute(
            "WITH c AS (
               INSERT INTO conversations (id, user_id, title)
               SELECT c, u, 'honest' FROM unnest($1::uuid[], $2::uuid[]) AS t(c, u)
               RETURNING id, user_id)
             INSERT INTO messages (id, conversation_id, user_id, role, content, status, created_at)
             SELECT gen_random_uuid(), c.id, c.user_id,
                    CASE WHEN i % 2 = 0 THEN 'user' ELSE 'assistant' END,
                    'message ' || i, 'completed', clock_timestamp()
               FROM c, generate_series(1, $3::int) AS i",
            &[&conversations, &users, &HONEST_MESSAGES],
        )
        .await
        .context("seeding the honest users' conversations")?;
    Ok(HonestRows {
        users,
        conversations,
    })
}

/// The attacker's conversation of `LONG_MESSAGES` messages of
/// `LONG_MESSAGE_CHARS` control characters each; returns its id.
pub(super) async fn long_history(client: &Client, user: Uuid) -> anyhow::Result<Uuid> {
    let conversation = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO conversations (id, user_id, title) VALUES ($1, $2, 'history')",
            &[&conversation, &user],
        )
        .await?;
    client
        .execute(
            "INSERT INTO messages (id, conversation_id, user_id, role, content, status, created_at, updated_at)
             SELECT gen_random_uuid(), $1, $2, 'user', repeat(chr(1), $3::int), 'completed', t, t
               FROM (SELECT clock_timestamp() AS t FROM generate_series(1, $4::int)) AS s",
            &[&conversation, &user, &LONG_MESSAGE_CHARS, &LONG_MESSAGES],
        )
        .await
        .context("seeding the attacker's long messages")?;
    Ok(conversation)
}

/// An ingested document of `ATTACKER_CHUNKS` chunks for the attacker, each
/// matching every word of [`ATTACKER_QUESTION`], and a conversation to ask
/// in; returns the conversation's id.
pub(super) async fn corpus(client: &Client, user: Uuid) -> anyhow::Result<Uuid> {
    let document = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status)
             VALUES ($1, $2, 'corpus.txt', 'text/plain', 1, 'ingested')",
            &[&document, &user],
        )
        .await?;
    client
        .execute(
            "INSERT INTO chunks (id, document_id, user_id, chunk_index, content)
             SELECT gen_random_uuid(), $1, $2, i, 'Part ' || i || '. ' || repeat($3::text || '. ', 5)
               FROM generate_series(0, $4::int - 1) AS i",
            &[&document, &user, &ATTACKER_QUESTION, &ATTACKER_CHUNKS],
        )
        .await
        .context("seeding the attacker's chunks")?;
    crate::db::lexical::recount(client, &[user]).await?;
    let conversation = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO conversations (id, user_id, title) VALUES ($1, $2, 'search')",
            &[&conversation, &user],
        )
        .await?;
    Ok(conversation)
}

/// Fresh statistics, so that the planner sees the seeded rows.
pub(super) async fn analyze(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute("ANALYZE documents, chunks, conversations, messages")
        .await
        .context("ANALYZE")
}
