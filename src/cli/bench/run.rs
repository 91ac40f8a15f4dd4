//! The run: start or find the server, measure every phase in order,
//! report, and turn missed targets into the exit code.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fleet::{open_idle, raw_listener, start_fleet};
use super::machine::machine;
use super::phase::{Bench, Kind};
use super::publish::{PublishRuntime, connect_publisher};
use super::record::{Clock, Sink};
use super::render::{phase_line, render};
use super::report::{CeilingReport, Config, IdleReport, Report, disturbance, targets};
use super::sample::rss_kib;
use super::server::{admin_sql, endpoint, random_hex, start_server, wait_ready, with_db};
use super::{BenchArgs, progress};
use crate::cli::Failure;
use crate::config::ConnectOpts;
use crate::db::listener::quote_ident;

/// Database server used when none is configured.
pub(super) const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub async fn run(connect: ConnectOpts, args: BenchArgs) -> anyhow::Result<ExitCode> {
    crate::cli::serve::raise_nofile_limit();
    let channel = connect.channel()?;
    let cancel = CancellationToken::new();
    crate::cli::cancel_on_signal(cancel.clone());

    let (server, db_url, secret, api, pid) = match &args.server_url {
        Some(api) => {
            let api = api.trim_end_matches('/').to_string();
            (
                None,
                connect.database_url()?,
                connect.jwt_secret()?,
                api,
                args.server_pid,
            )
        }
        None => {
            let admin = connect
                .database_url()
                .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
            let db = format!("bench_{}_{}", std::process::id(), random_hex(4));
            admin_sql(&admin, &format!("CREATE DATABASE {}", quote_ident(&db)))
                .await
                .with_context(|| {
                    format!("cannot create the benchmark database on {}", redact(&admin))
                })?;
            let secret = random_hex(32);
            progress(&format!(
                "database {db} created; starting `ragctl serve --no-workers`"
            ));
            let server = match start_server(&admin, &db, &secret, &channel, &args).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = admin_sql(
                        &admin,
                        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&db)),
                    )
                    .await;
                    return Err(e);
                }
            };
            let (api, pid) = (server.api.clone(), server.pid);
            (Some(server), with_db(&admin, &db)?, secret, api, Some(pid))
        }
    };

    let outcome = tokio::select! {
        r = bench(&args, &db_url, &secret, &channel, &api, pid) => Some(r),
        _ = cancel.cancelled() => None,
    };
    if let Some(server) = server {
        progress("stopping the server and dropping its database");
        server.stop().await;
    }
    let report = match outcome {
        None => {
            eprintln!("ragctl: interrupted");
            return Ok(ExitCode::from(130));
        }
        Some(r) => r?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    let missed: Vec<&str> = report
        .targets
        .iter()
        .filter(|t| t.met == Some(false))
        .map(|t| t.key)
        .collect();
    if missed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::check(anyhow!(
            "missed targets: {} (see the report)",
            missed.join(", ")
        ))
        .into())
    }
}

pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub(super) async fn bench(
    args: &BenchArgs,
    db_url: &str,
    secret: &str,
    channel: &str,
    api: &str,
    pid: Option<u32>,
) -> anyhow::Result<Report> {
    wait_ready(api).await?;
    let ep = endpoint(api).await?;
    let machine = machine(db_url).await;
    let clock = Clock(Instant::now());
    let token_for = |user: Uuid| -> anyhow::Result<Arc<str>> {
        Ok(Arc::from(crate::auth::mint(
            secret,
            user,
            Duration::from_secs(6 * 3600),
        )?))
    };

    // 1. Idle sockets, on a fresh server.
    let idle = if args.idle_sockets > 0 {
        let idle_users: Vec<Arc<str>> = (0..100)
            .map(|_| token_for(Uuid::new_v4()))
            .collect::<anyhow::Result<_>>()?;
        progress("idle sockets: warming up with 100 sockets");
        let (warm, _, _) = open_idle(&ep, &idle_users, 100).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = pid.and_then(rss_kib);
        progress(&format!("idle sockets: opening {}", args.idle_sockets));
        let (held, opened, failed) = open_idle(&ep, &idle_users, args.idle_sockets).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = pid.and_then(rss_kib);
        let per = match (before, after) {
            (Some(b), Some(a)) if opened > 0 => {
                Some(((a as f64 - b as f64) / opened as f64 * 100.0).round() / 100.0)
            }
            _ => None,
        };
        progress(&format!(
            "idle sockets: {opened} open, {failed} failed; RSS {} → {} KiB: {} KiB/socket",
            before.map_or("?".into(), |v| v.to_string()),
            after.map_or("?".into(), |v| v.to_string()),
            per.map_or("?".into(), |v| format!("{v:.2}"))
        ));
        drop(held);
        drop(warm);
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some(IdleReport {
            requested: args.idle_sockets,
            opened,
            failed,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_socket: per,
        })
    } else {
        None
    };

    // Publishers, the raw listener and the bridge's clients.
    let publish_rt = PublishRuntime::start()?;
    let mut publishers = Vec::new();
    for _ in 0..args.publishers {
        let url = db_url.to_string();
        publishers.push(
            publish_rt
                .handle
                .spawn(async move { connect_publisher(&url).await })
                .await??,
        );
    }
    let raw_channel = format!("bench_raw_{}", std::process::id());
    let raw_sink = Arc::new(Sink::new(1));
    let _raw = raw_listener(db_url, &raw_channel, raw_sink.clone(), clock).await?;
    let users: Vec<Uuid> = (0..args.users).map(|_| Uuid::new_v4()).collect();
    let tokens: Vec<Arc<str>> = users
        .iter()
        .map(|&u| token_for(u))
        .collect::<anyhow::Result<_>>()?;
    progress(&format!(
        "connecting {} clients for {} users",
        args.clients, args.users
    ));
    let fleet = start_fleet(&ep, &tokens, args.clients as usize, clock).await?;
    let mut bench = Bench {
        clock,
        publish_rt,
        publishers,
        channel: channel.to_string(),
        raw_channel,
        raw_sink,
        fleet,
        users,
        next_phase: 0,
        server_pid: pid,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        api: api.to_string(),
    };

    // Warm-up: both paths, short, discarded.
    progress("warming up");
    bench
        .phase(
            Kind::Raw,
            args.rate.min(1000),
            Duration::from_secs(1),
            Duration::from_secs(3),
        )
        .await?;
    bench.settle(Kind::Raw).await?;
    bench
        .phase(
            Kind::Bridge,
            args.rate.min(1000),
            Duration::from_secs(1),
            Duration::from_secs(3),
        )
        .await?;
    bench.settle(Kind::Bridge).await?;

    // 2, 3. Latency at the chosen rate.
    progress(&format!(
        "raw NOTIFY → LISTEN: {} events/s for {:?}",
        args.rate, args.duration
    ));
    let raw = bench
        .phase(Kind::Raw, args.rate, args.duration, Duration::from_secs(10))
        .await?;
    progress(&phase_line(&raw));
    bench.settle(Kind::Raw).await?;
    progress(&format!(
        "bridge pg_notify → WebSocket: {} events/s for {:?} to {} clients / {} users",
        args.rate, args.duration, args.clients, args.users
    ));
    let bridge = bench
        .phase(
            Kind::Bridge,
            args.rate,
            args.duration,
            Duration::from_secs(10),
        )
        .await?;
    progress(&phase_line(&bridge));

    // 4. Ceilings.
    let ceiling = if args.no_ceiling {
        None
    } else {
        let raw_c = bench.ceiling(Kind::Raw, 2000, args.step).await?;
        let bridge_c = bench.ceiling(Kind::Bridge, 2000, args.step).await?;
        let ratio = if raw_c.events_per_s > 0 {
            bridge_c.events_per_s as f64 / raw_c.events_per_s as f64
        } else {
            0.0
        };
        Some(CeilingReport {
            raw: raw_c,
            bridge: bridge_c,
            ratio: (ratio * 1000.0).round() / 1000.0,
        })
    };

    let config = Config {
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        clients: args.clients,
        users: args.users,
        publishers: args.publishers,
        idle_sockets: args.idle_sockets,
        step_s: args.step.as_secs_f64(),
        server: match &args.server_url {
            Some(u) => u.clone(),
            None => format!(
                "started: ragctl serve --no-workers --ws-queue={}",
                args.ws_queue
            ),
        },
        ws_queue: args.server_url.is_none().then_some(args.ws_queue),
    };
    let targets = targets(&config, &raw, &bridge, ceiling.as_ref(), idle.as_ref());
    let ok = targets.iter().all(|t| t.met != Some(false));
    let disturbed = [("raw", &raw), ("bridge", &bridge)]
        .into_iter()
        .filter_map(|(label, p)| disturbance(label, p.cpu.as_ref()?))
        .collect();
    Ok(Report {
        machine,
        config,
        idle,
        raw,
        bridge,
        ceiling,
        targets,
        ok,
        disturbed,
    })
}
