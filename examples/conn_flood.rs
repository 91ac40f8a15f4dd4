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
/// Descriptors of this process kept out of the flood (for the probe).
const OWN_RESERVE: usize = 64;
const PROBE_EVERY: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Tally {
    opened: AtomicUsize,
    closed_by_server: AtomicUsize,
    connect_errors: AtomicUsize,
    last_open_ms: AtomicUsize,
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
    let nofile = raise_nofile();
    let deadline = Instant::now() + Duration::from_secs(deadline);
    let tally = Arc::new(Tally::default());
    let flooding = Arc::new(AtomicUsize::new(1));

    let probe = tokio::spawn(probe(target, flooding.clone(), deadline));
    let open_max = (nofile as usize).saturating_sub(OWN_RESERVE).max(1);
    let closes = flood(
        target,
        n as usize,
        sources as u8,
        open_max,
        &tally,
        deadline,
    )
    .await;
    flooding.store(0, Ordering::Relaxed);
    let (latencies, failures) = probe.await.expect("probe task");
    report(n as usize, &tally, closes, latencies, failures);
    ExitCode::SUCCESS
}

/// Opens `n` idle connections (at most `open_max` at once) and waits for
/// the server to close each one; returns when it closed them (sorted, from
/// the start) and how many were still open at the deadline.
async fn flood(
    target: SocketAddr,
    n: usize,
    sources: u8,
    open_max: usize,
    tally: &Arc<Tally>,
    deadline: Instant,
) -> (Vec<Duration>, usize) {
    let start = Instant::now();
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let open = Arc::new(Semaphore::new(open_max));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let socket = open.clone().acquire_owned().await.expect("open");
        let permit = connecting.clone().acquire_owned().await.expect("open");
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % sources as usize) as u8));
        let tally = tally.clone();
        tasks.spawn(async move {
            let mut tcp = connect_from(source, target, &tally, deadline).await?;
            drop(permit);
            tally.opened.fetch_add(1, Ordering::Relaxed);
            tally
                .last_open_ms
                .fetch_max(start.elapsed().as_millis() as usize, Ordering::Relaxed);
            let mut buf = [0u8; 64];
            let left = deadline.saturating_duration_since(Instant::now());
            // Any read that returns (EOF, reset, or an unexpected byte) ends it.
            let _ = tokio::time::timeout(left, tcp.read(&mut buf)).await.ok()?;
            tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
            drop(socket);
            Some(Instant::now())
        });
    }
    let mut closes = Vec::with_capacity(n);
    let mut open_at_deadline = 0;
    while let Some(r) = tasks.join_next().await {
        match r.ok().flatten() {
            Some(t) => closes.push(t - start),
            None => open_at_deadline += 1,
        }
    }
    closes.sort();
    (closes, open_at_deadline)
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
) -> (Vec<Duration>, Vec<String>) {
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    while flooding.load(Ordering::Relaxed) == 1 && Instant::now() < deadline {
        let t0 = Instant::now();
        match tokio::time::timeout(Duration::from_secs(30), healthz(target)).await {
            Ok(Ok(true)) => latencies.push(t0.elapsed()),
            Ok(Ok(false)) => failures.push("not 200".to_string()),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("no answer within 30 s".to_string()),
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
    (closes, open_at_deadline): (Vec<Duration>, usize),
    mut latencies: Vec<Duration>,
    failures: Vec<String>,
) {
    fn pct(v: &[Duration], p: f64, unit: f64, suffix: &str) -> String {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .map_or("-".to_string(), |d| {
                format!("{:.2} {suffix}", d.as_secs_f64() * unit)
            })
    }
    latencies.sort();
    println!("flood connections:       {n}");
    println!(
        "opened:                  {}",
        tally.opened.load(Ordering::Relaxed)
    );
    println!(
        "connect retries:         {}",
        tally.connect_errors.load(Ordering::Relaxed)
    );
    let opened_s = tally.last_open_ms.load(Ordering::Relaxed) as f64 / 1e3;
    println!("all opened after:        {opened_s:.2} s");
    println!(
        "closed by the server:    {} (open at the deadline: {open_at_deadline})",
        closes.len()
    );
    println!(
        "closed after (from the first connect): p50 {}, p99 {}, last {}",
        pct(&closes, 0.5, 1.0, "s"),
        pct(&closes, 0.99, 1.0, "s"),
        pct(&closes, 1.0, 1.0, "s")
    );
    println!(
        "healthz answered 200:    {} (failed: {})",
        latencies.len(),
        failures.len()
    );
    let ms = |p| pct(&latencies, p, 1e3, "ms");
    println!(
        "healthz latency:         p50 {}, p99 {}, max {}",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    let mut kinds: Vec<&String> = failures.iter().collect();
    kinds.sort();
    kinds.dedup();
    for k in kinds.iter().take(5) {
        println!(
            "  healthz failure: {k} (x{})",
            failures.iter().filter(|f| f == k).count()
        );
    }
}

/// Raises the soft open-file limit to the hard one; returns it.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}
