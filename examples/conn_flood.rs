//! Floods a server with idle TCP connections (they never send a byte) and
//! probes `/healthz` on fresh connections meanwhile: how long until the
//! server has closed every flood connection, and the health check's
//! latency throughout. Loopback only; bounded in count and in time.
//!
//! ```text
//! cargo run --release --example conn_flood -- ADDR [CONNECTIONS] [SOURCES] [DEADLINE_SECS]
//! cargo run --release --example conn_flood -- 127.0.0.1:8080 20000 4 120
//! ```
//!
//! SOURCES spreads the flood over 127.0.0.1..=127.0.0.SOURCES as source
//! addresses, for when ephemeral ports run short.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Connects in flight at once.
const CONNECTING: usize = 256;
const PROBE_EVERY: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Tally {
    opened: AtomicUsize,
    closed_by_server: AtomicUsize,
    connect_errors: AtomicUsize,
}

fn usage() -> ExitCode {
    eprintln!("usage: conn_flood ADDR [CONNECTIONS=20000] [SOURCES=1] [DEADLINE_SECS=120]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(target) = args.first().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return usage();
    };
    let num = |i: usize, default: u64| args.get(i).map_or(Some(default), |a| a.parse().ok());
    let (Some(n), Some(sources), Some(deadline)) = (num(1, 20_000), num(2, 1), num(3, 120)) else {
        return usage();
    };
    if !target.ip().is_loopback() || !(1..=254).contains(&sources) {
        eprintln!("conn_flood: loopback targets only, 1..=254 sources");
        return ExitCode::from(2);
    }
    raise_nofile();
    let deadline = Instant::now() + Duration::from_secs(deadline);
    let tally = Arc::new(Tally::default());
    let flooding = Arc::new(AtomicUsize::new(1));

    let probe = tokio::spawn(probe(target, flooding.clone(), deadline));
    let start = Instant::now();
    let last_close = flood(target, n as usize, sources as u8, &tally, deadline).await;
    flooding.store(0, Ordering::Relaxed);
    let (latencies, failures) = probe.await.expect("probe task");
    report(n as usize, &tally, start, last_close, latencies, failures);
    ExitCode::SUCCESS
}

/// Opens `n` idle connections and waits for the server to close each one;
/// returns when it did so last (`None` if some were still open at the
/// deadline).
async fn flood(
    target: SocketAddr,
    n: usize,
    sources: u8,
    tally: &Arc<Tally>,
    deadline: Instant,
) -> Option<Instant> {
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = connecting.clone().acquire_owned().await.expect("open");
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % sources as usize) as u8));
        let tally = tally.clone();
        tasks.spawn(async move {
            let mut tcp = connect_from(source, target, &tally, deadline).await?;
            drop(permit);
            tally.opened.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 64];
            let left = deadline.saturating_duration_since(Instant::now());
            // Any read that returns (EOF, reset, or an unexpected byte) ends it.
            tokio::time::timeout(left, tcp.read(&mut buf)).await.ok()?;
            tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
            Some(Instant::now())
        });
    }
    let mut last = None;
    let mut all = true;
    while let Some(r) = tasks.join_next().await {
        match r.ok().flatten() {
            Some(t) => last = last.max(Some(t)),
            None => all = false,
        }
    }
    last.filter(|_| all)
}

/// Connects, retrying while this process is out of descriptors (it frees
/// one each time the server closes a flood connection).
async fn connect_from(
    source: IpAddr,
    target: SocketAddr,
    tally: &Tally,
    deadline: Instant,
) -> Option<TcpStream> {
    while Instant::now() < deadline {
        let attempt = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(target).await
        };
        match attempt.await {
            Ok(tcp) => return Some(tcp),
            Err(_) => {
                tally.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    None
}

/// `GET /healthz` on a fresh connection every `PROBE_EVERY` while the
/// flood lasts; the latencies of 200 answers and the count of failures.
async fn probe(
    target: SocketAddr,
    flooding: Arc<AtomicUsize>,
    deadline: Instant,
) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::new();
    let mut failures = 0;
    while flooding.load(Ordering::Relaxed) == 1 && Instant::now() < deadline {
        let t0 = Instant::now();
        let left = deadline.saturating_duration_since(t0);
        match tokio::time::timeout(left, healthz(target)).await {
            Ok(Ok(true)) => latencies.push(t0.elapsed()),
            _ => failures += 1,
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    (latencies, failures)
}

async fn healthz(target: SocketAddr) -> std::io::Result<bool> {
    let mut tcp = TcpStream::connect(target).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: flood\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await?;
    Ok(out.starts_with(b"HTTP/1.1 200"))
}

fn report(
    n: usize,
    tally: &Tally,
    start: Instant,
    last_close: Option<Instant>,
    mut latencies: Vec<Duration>,
    failures: usize,
) {
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or("-".to_string(), |d| {
                format!("{:.2} ms", d.as_secs_f64() * 1e3)
            })
    };
    println!("flood connections:       {n}");
    println!(
        "opened:                  {}",
        tally.opened.load(Ordering::Relaxed)
    );
    println!(
        "closed by the server:    {}",
        tally.closed_by_server.load(Ordering::Relaxed)
    );
    println!(
        "connect retries:         {}",
        tally.connect_errors.load(Ordering::Relaxed)
    );
    match last_close {
        Some(t) => println!(
            "all closed after:        {:.2} s",
            (t - start).as_secs_f64()
        ),
        None => println!("all closed after:        not all closed before the deadline"),
    }
    println!(
        "healthz answered 200:    {} (failed: {failures})",
        latencies.len()
    );
    println!(
        "healthz latency:         p50 {}, p99 {}, max {}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
