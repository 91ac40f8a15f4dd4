//! `ragctl bench --retrieval SET.jsonl` (issue #19): retrieval quality and
//! speed on a QA set, for each mode (bm25, dense, hybrid) side by side.
//!
//! Each mode gets a fresh database and `ragctl serve` (with its workers)
//! started with `RAG_RETRIEVAL=<mode>` (and `RAG_EMBED_MODEL` for dense and
//! hybrid). The corpus is uploaded through REST by one user, every question
//! asked in a conversation of its own, and each answer's sources are read
//! back from the `chunks` table to see whether they hold the answer phrase
//! (`retrieval_set`). With `--scale N`, a second user then gets about N
//! chunks of documents made from the corpus's paragraphs (other users
//! present too) and the questions are asked again for the latency at that
//! size (`retrieval_scale`). The report is `retrieval_report`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::Client as Db;
use uuid::Uuid;

use super::args::BenchArgs;
use super::crowd::token;
use super::progress::progress;
use super::retrieval_ask::{ask_all, count_chunks};
use super::retrieval_client::Client;
use super::retrieval_report::{Latency, ModeRun, RetrievalReport, Scale};
use super::retrieval_set::{QaSet, quality};
use super::server::OwnServer;
use crate::config::ConnectOpts;
use crate::harness::{Ready, ScratchDb, random_hex};

pub(super) async fn run(
    connect: &ConnectOpts,
    args: &BenchArgs,
    channel: &str,
    set_path: &Path,
) -> anyhow::Result<RetrievalReport> {
    let set = QaSet::load(set_path)?;
    let modes = modes(args)?;
    let mut runs = Vec::new();
    for mode in &modes {
        progress(&format!("retrieval: mode {mode}"));
        let server = start(connect, args, channel, mode).await?;
        let measured = measure_mode(&server, args, &set, mode).await;
        server.own.stop().await;
        runs.push(measured?);
    }
    Ok(RetrievalReport::new(
        &set,
        set_path,
        args.embed_model.is_some(),
        runs,
    ))
}

/// `--modes`, or every mode the flags allow; dense and hybrid need a model.
fn modes(args: &BenchArgs) -> anyhow::Result<Vec<&str>> {
    let all: &[&str] = match args.embed_model {
        Some(_) => &["bm25", "dense", "hybrid"],
        None => {
            progress("no --embed-model: only bm25 runs");
            &["bm25"]
        }
    };
    if args.modes.is_empty() {
        return Ok(all.to_vec());
    }
    let picked: Vec<&str> = args.modes.iter().map(String::as_str).collect();
    if let Some(m) = picked.iter().find(|m| !all.contains(m)) {
        anyhow::bail!("--modes {m} needs --embed-model / RAG_EMBED_MODEL");
    }
    Ok(picked)
}

/// One mode on its own server.
async fn measure_mode(
    server: &Served,
    args: &BenchArgs,
    set: &QaSet,
    mode: &str,
) -> anyhow::Result<ModeRun> {
    let (api, secret) = (&server.own.api, &server.secret);
    let db = connect_db(&server.own.db.url).await?;
    let user = Uuid::new_v4();
    let client = Client::new(api, &token(secret, user)?)?;
    let started = Instant::now();
    let mut ids = Vec::new();
    for path in &set.corpus {
        ids.push(upload_file(&client, path).await?);
    }
    client.wait_ingested(&ids).await?;
    let ingest = started.elapsed();
    let chunks = count_chunks(&db, user).await?;
    progress(&format!(
        "{mode}: {} documents, {chunks} chunks in {ingest:.1?}",
        ids.len()
    ));
    let (outcomes, latencies) = ask_all(&client, &db, set).await?;
    let scale = match args.scale {
        0 => None,
        n => Some(super::retrieval_scale::run(api, secret, &db, set, n).await?),
    };
    Ok(ModeRun {
        mode: mode.to_string(),
        chunks,
        ingest_secs: ingest.as_secs_f64(),
        chunks_per_sec: chunks as f64 / ingest.as_secs_f64().max(1e-9),
        quality: quality(&outcomes),
        latency: Latency::of(&latencies),
        scale: scale.map(|(chunks, l): (u64, Vec<Duration>)| Scale {
            chunks,
            latency: Latency::of(&l),
        }),
    })
}

pub(super) async fn upload_file(client: &Client, path: &Path) -> anyhow::Result<Uuid> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    client.upload(&name, &bytes).await
}

async fn connect_db(url: &str) -> anyhow::Result<Db> {
    let (client, conn) = crate::db::connect(url, "ragctl-bench-retrieval").await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A server this run started, and the secret its tokens are signed with.
struct Served {
    own: OwnServer,
    secret: String,
}

/// A fresh database and `ragctl serve` (with workers) in `mode`.
async fn start(
    connect: &ConnectOpts,
    args: &BenchArgs,
    channel: &str,
    mode: &str,
) -> anyhow::Result<Served> {
    let db = super::server::scratch_db(connect).await?;
    let secret = random_hex(32);
    match spawn(&db, &secret, channel, args, mode).await {
        Ok((child, pid, api)) => Ok(Served {
            own: OwnServer {
                child,
                pid,
                api,
                db,
            },
            secret,
        }),
        Err(e) => {
            let _ = db.drop_now().await;
            Err(e)
        }
    }
}

async fn spawn(
    db: &ScratchDb,
    secret: &str,
    channel: &str,
    args: &BenchArgs,
    mode: &str,
) -> anyhow::Result<(tokio::process::Child, u32, String)> {
    let ready_path = std::env::temp_dir().join(format!("{}.{}.ready", db.name, random_hex(4)));
    let exe = std::env::current_exe().context("cannot find the ragctl executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ready-file",
    ])
    .arg(&ready_path)
    .env("DATABASE_URL", &db.url)
    .env("RAG_JWT_SECRET", secret)
    .env("RAG_EVENTS_CHANNEL", channel)
    .env("RAG_RETRIEVAL", mode)
    .env("RAG_LOG", if args.server_log { "info" } else { "warn" })
    .env_remove("RAG_LISTEN_DATABASE_URL")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(if args.server_log {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    })
    .kill_on_drop(true);
    match (&args.embed_model, mode) {
        (Some(dir), "dense" | "hybrid") => cmd.env("RAG_EMBED_MODEL", dir),
        _ => cmd.env_remove("RAG_EMBED_MODEL"),
    };
    let mut child = cmd.spawn().context("cannot start `ragctl serve`")?;
    let pid = child.id().unwrap_or_default();
    let ready = Ready::wait(&ready_path, Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(None))
    })
    .await;
    let _ = std::fs::remove_file(&ready_path);
    match ready {
        Ok(Some(r)) => Ok((child, pid, r.url)),
        _ => {
            let _ = child.kill().await;
            anyhow::bail!("`ragctl serve` ({mode}) did not start; rerun with --server-log")
        }
    }
}
