//! `ragctl bench`: how fast and how faithfully the realtime bridge forwards
//! events, measured end to end against a real server and a real PostgreSQL.
//!
//! One run measures, in order:
//!
//! 1. idle sockets: the server's RSS before and after opening
//!    `--idle-sockets` WebSockets that only answer pings (KiB per socket);
//! 2. raw `NOTIFY → LISTEN` latency (a LISTEN connection in this process, on
//!    a channel of its own), the baseline;
//! 3. bridge latency, `pg_notify` commit → WebSocket frame at the client, at
//!    `--rate` events/s to `--clients` sockets spread over `--users` users;
//! 4. the ceiling, raw then bridge: the highest rate committed in a 3-s step
//!    that lost nothing and whose backlog drained within a second of the
//!    last commit (doubling, then bisecting);
//! 5. with `--resume` only, the catch-up of a socket resuming with
//!    `/ws?since=` on 10,000 documents of its user (`resume`), then the
//!    bridge's heal of 10 rows for each of 1,000 connected users after
//!    its listener backend is killed (`heal`);
//! 6. with `--capacity` only, the capacity across API instances (see
//!    `capacity.rs` and docs/capacity.md); with `--bus nats`, both buses
//!    with 1 to 8 instances, the relay and its failover instead
//!    (`capacity_bus*.rs`, `pg_cpu`, `relay_proc`, `failover`).
//!
//! `--abuse` runs instead the attacks of issue #17 against 50 honest users
//! (`abuse*.rs`: the run, the attacks, the honest load, the seeding, the
//! report).
//!
//! `--queue` runs instead the job-queue benchmark of issue #18 (`queue*.rs`:
//! the run, the worker processes, the uploads, the documents, what the
//! database says, the statistics, the report).
//!
//! `--retrieval SET.jsonl` runs instead the retrieval benchmark of issue
//! #19 (`retrieval*.rs`: the run, the REST client, the QA set and its
//! metrics, the `--scale` phase, the report).
//!
//! The bridge phase also reports the server's CPU per delivered frame.
//!
//! Each phase also records the CPU used by this process, the server and
//! PostgreSQL (from `/proc`), and the server's own delivery histogram and
//! counters (from `/metrics`), so that a missed target can be explained.
//!
//! Latency starts when the `execute` of `SELECT pg_notify(..)` returns (the
//! commit) and ends when the payload or frame has been read by the receiving
//! task. Every event carries `bench:<phase>:<seq>` in its `error_message`, so
//! each delivery is matched to its commit instant after the run; nothing is
//! shared on the hot path but one mutex per receiver.
//!
//! One file per concern: `report` (what is reported and judged), `record`
//! (deliveries and statistics), `publish`, `fleet` (the receivers),
//! `sample` (CPU, RSS, the server's metrics), `phase`, `server`, `machine`,
//! `render`, `capacity`, and `run`, which ties them together. `args`
//! (`BenchArgs`) and `progress` are leaves the phases import; this file
//! only declares and re-exports, so no phase imports it.

mod abuse;
mod abuse_attack;
mod abuse_child;
mod abuse_honest;
mod abuse_raw;
mod abuse_report;
mod abuse_seed;
mod abuse_slots;
mod abuse_target;
mod args;
mod capacity;
mod capacity_bus;
mod capacity_bus_report;
mod crowd;
mod failover;
mod fanout;
mod fleet;
mod heal;
mod limits;
mod machine;
mod mass;
mod mass_child;
mod mass_fleet;
mod mass_fleet_report;
mod mass_report;
mod pg_cpu;
mod phase;
mod phases;
mod progress;
mod publish;
mod queue;
mod queue_docs;
mod queue_load;
mod queue_measure;
mod queue_report;
mod queue_stats;
mod queue_workers;
mod record;
mod relay_proc;
mod render;
mod report;
mod resume;
mod retrieval;
mod retrieval_ask;
mod retrieval_client;
mod retrieval_report;
mod retrieval_scale;
mod retrieval_set;
mod run;
mod sample;
mod serve_cmd;
mod server;
mod soak;
mod soak_check;
mod soak_faults;
mod soak_load;
mod soak_procs;
mod soak_report;
mod soak_rest;
mod soak_usage;
mod soak_view;
mod soak_ws;

pub use args::BenchArgs;
pub use run::run;
