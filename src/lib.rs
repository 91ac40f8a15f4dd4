//! ragctl: a RAG backend whose workers publish events through PostgreSQL
//! `pg_notify`, and whose API processes LISTEN and forward each event to the
//! WebSocket `/ws` connections of the right user; plus the terminal toolkit
//! to inspect it.
//!
//! The modules, one per concern:
//!
//! - [`config`]: the shared connection options, runtime knobs and the state
//!   file `ragctl serve` writes in embedded mode.
//! - [`db`]: URLs and TLS, the pool, migrations, the embedded cluster, the
//!   LISTEN connection, and the queries of each table.
//! - [`events`]: the event contract and its NOTIFY envelope; the only module
//!   that knows the wire form. Publishing happens here.
//! - [`bridge`]: LISTEN → validate → route by `user_id` to this process's
//!   sockets.
//! - [`bus`]: the NATS bus (issue #21): per-user subscriptions fed to the
//!   bridge, and the relay's heartbeats and gaps.
//! - [`api`]: REST, `/ws`, health, readiness and metrics.
//! - [`workers`]: the parse and ingest workers, `--concurrency` job slots each.
//! - [`rag`]: text extraction, chunking and answering.
//! - [`auth`]: Supabase-style JWTs.
//! - [`backoff`]: exponential backoff with jitter, for every reconnect loop.
//! - [`own_exe`]: the running binary, for the processes it re-executes.
//! - [`cli`]: the `ragctl` subcommands and the error handler at the edge.
//! - [`harness`]: the `serve --ready-file` line and scratch databases, for
//!   tests, `ragctl bench` and scripts that start a server.

pub mod api;
pub mod auth;
pub mod backoff;
pub mod bridge;
pub mod bus;
pub mod cli;
pub mod config;
pub mod db;
pub mod embed;
pub mod events;
pub mod harness;
pub mod own_exe;
pub mod rag;
pub mod workers;
