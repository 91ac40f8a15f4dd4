//! A minimal worker in Rust: publishes one `document.status_updated` event
//! through the library's `Publisher`, exactly as `ragctl worker` does after
//! it commits a status change.
//!
//! ```text
//! cargo run --example worker -- postgres://postgres@127.0.0.1/ragctl 6f1c...-user-uuid [STATUS] [DOCUMENT_ID]
//! ```
//!
//! Watch it arrive with `ragctl ws-client --user <the same uuid>`.

use std::process::ExitCode;
use std::time::Duration;

use ragctl::events::{DEFAULT_CHANNEL, Envelope, EventType, Publisher, validate_payload};
use serde_json::json;
use uuid::Uuid;

#[tokio::main]
async fn main() -> ExitCode {
    // The pool speaks TLS through rustls, which needs a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker example: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: worker DATABASE_URL USER_ID [STATUS] [DOCUMENT_ID]";
    let url = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let user: Uuid = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let status = args.next().unwrap_or_else(|| "parsed".into());
    let document: Uuid = match args.next() {
        Some(id) => id.parse()?,
        None => Uuid::new_v4(),
    };

    let pool = ragctl::db::pool(&url, 2, "example-worker").await?;
    let publisher = Publisher::new(
        pool,
        DEFAULT_CHANNEL,
        "example-worker",
        Duration::from_secs(2),
    );

    let payload = json!({
        "document_id": document,
        "status": status,
        "error_message": null,
        "updated_at": chrono::Utc::now(),
    });
    // Check against the contract before publishing: the bridge drops (and
    // counts) anything that does not validate.
    validate_payload(EventType::DocumentStatusUpdated, &payload)?;
    let env = Envelope::new(
        user,
        EventType::DocumentStatusUpdated,
        payload,
        "example-worker",
    );
    let id = env.id;
    // Business code ignores the result (realtime is best effort); a tool
    // wants to know.
    publisher.publish(env).await?;
    println!(
        "published document.status_updated {id} for user {user}: document {document} is {status}"
    );
    Ok(())
}
