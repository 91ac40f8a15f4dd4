//! `--sockets N`: N concurrent WebSockets on one server. The clients are
//! spread over loopback source addresses (`limits::source_addr`) and stay
//! lean (a small read buffer, one task each, answering pings). The run:
//!
//! 1. a sample fleet (`--sample` sockets, one user each) and a fan-out
//!    fleet (1,000 sockets of one user) connect; the server's RSS is read;
//! 2. the rest of the N sockets open, `HANDSHAKES_MASS` at a time: the
//!    accept rate, and the server's RSS at 10,000 and at N (KiB per socket
//!    over the RSS after step 1);
//! 3. while all are held: events at `--rate` to the sample (p50/p99), then
//!    events one by one to the user with 1,000 sockets.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

use super::args::BenchArgs;
use super::crowd::{Crowd, token};
use super::fleet::{Endpoint, Ws, start_fleet};
use super::limits::{Limits, source_addr};
use super::phase::{Bench, Kind};
use super::progress::progress;
use super::report::{CpuShare, Machine, PhaseResult};
use super::sample::{CpuSnap, gauge, rss_kib};
use super::server::Site;

/// Concurrent handshakes while opening the mass sockets.
const HANDSHAKES_MASS: usize = 512;
/// Sockets of the user that one event fans out to.
pub(super) const FAN_SOCKETS: usize = 1_000;
/// Where the first RSS reading is taken (the 10,000).
const FIRST_CHECKPOINT: usize = 10_000;
/// What a mass client reads at a time: it only sees pings.
const CLIENT_READ: usize = 256;
/// Let the allocator and the server settle before reading RSS.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    /// Mass sockets open (beside the sample and fan-out fleets).
    pub sockets: usize,
    pub rss_kib: Option<u64>,
    pub kib_per_socket: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MassReport {
    pub machine: Machine,
    pub limits: Limits,
    /// `--sockets`: all the sockets asked for, fleets included.
    pub asked: usize,
    /// Mass sockets tried (the bench's own limit may allow fewer).
    pub tried: usize,
    pub opened: usize,
    pub failed: usize,
    /// Why sockets failed to open, with counts.
    pub errors: BTreeMap<String, usize>,
    /// Mass sockets accepted per second while opening.
    pub accept_per_s: f64,
    /// Sockets the server held at the end, fleets included.
    pub held: usize,
    /// Mass sockets closed while they were held (must be 0).
    pub dropped: usize,
    pub rss_base_kib: Option<u64>,
    /// CPU while the first 10,000 opened, in % of one core: what the
    /// accept rate was bound by.
    pub open_cpu: Option<CpuShare>,
    pub checkpoints: Vec<Checkpoint>,
    pub sample: PhaseResult,
    pub fan_out: PhaseResult,
}

/// What the mass clients share.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) opened: AtomicUsize,
    pub(super) failed: AtomicUsize,
    pub(super) dropped: AtomicUsize,
    pub(super) errors: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    fn fail(&self, why: String) {
        *self.errors.lock().expect("tally").entry(why).or_default() += 1;
        self.failed.fetch_add(1, Ordering::SeqCst);
    }
}

/// A WebSocket from `src` (bound before connecting, so the kernel picks a
/// port of that address), with a small read buffer.
pub(super) async fn connect_from(ep: &Endpoint, src: IpAddr, jwt: &str) -> anyhow::Result<Ws> {
    let socket = match ep.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => bail!("--sockets needs an IPv4 loopback server"),
    };
    no_port_at_bind(&socket);
    socket.bind(SocketAddr::new(src, 0))?;
    let tcp = socket.connect(ep.addr).await?;
    tcp.set_nodelay(true)?;
    let request = format!("ws://{}/ws?token={jwt}", ep.host).into_client_request()?;
    let config = crate::bridge::unbuffered_ws_config().read_buffer_size(CLIENT_READ);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
    Ok(ws)
}

/// Lets the kernel pick the port at `connect`, by the whole 4-tuple,
/// instead of at `bind` (which takes only every other port of the range,
/// and gets slow as they run out). Best effort: without it the bench still
/// works, as `PER_SOURCE` stays under half the range.
pub(super) fn no_port_at_bind(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a socket we own, with a local int.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Why a connect failed, short enough to count by.
fn reason(e: &anyhow::Error) -> String {
    let text = e.to_string();
    text.chars().take(80).collect()
}

/// Opens mass sockets `range`, each for a user of its own (socket `i` to
/// server `i % eps.len()`), and holds them (reading, which answers pings)
/// in `held`.
pub(super) async fn open(
    secret: &str,
    eps: &[Endpoint],
    range: std::ops::Range<usize>,
    tally: &Arc<Tally>,
    held: &mut JoinSet<()>,
) -> anyhow::Result<Duration> {
    let gate = Arc::new(Semaphore::new(HANDSHAKES_MASS));
    let started = Instant::now();
    let (start, end) = (range.start, range.end);
    let done = |t: &Tally| t.opened.load(Ordering::SeqCst) + t.failed.load(Ordering::SeqCst);
    let before = done(tally);
    for i in range {
        let jwt = token(secret, Uuid::new_v4())?;
        let ep = eps[i % eps.len()].clone();
        let (gate, tally) = (gate.clone(), tally.clone());
        held.spawn(async move {
            let permit = gate.acquire_owned().await;
            let connecting = connect_from(&ep, IpAddr::V4(source_addr(i)), &jwt);
            let ws = tokio::time::timeout(Duration::from_secs(30), connecting).await;
            drop((permit, jwt));
            let mut ws = match ws {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => return tally.fail(reason(&e)),
                Err(_) => return tally.fail("handshake timed out (30 s)".into()),
            };
            tally.opened.fetch_add(1, Ordering::SeqCst);
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
            tally.dropped.fetch_add(1, Ordering::SeqCst);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while done(tally) - before < end - start {
        if Instant::now() > deadline {
            bail!("sockets still opening after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

/// The server's RSS once settled, and what it says per mass socket.
async fn checkpoint(pid: Option<u32>, base: Option<u64>, sockets: usize) -> Checkpoint {
    tokio::time::sleep(SETTLE).await;
    let rss = pid.and_then(rss_kib);
    let per = match (base, rss) {
        (Some(b), Some(a)) if sockets > 0 => Some(per_socket_kib(b, a, sockets)),
        _ => None,
    };
    progress(&format!(
        "{sockets} mass sockets: server RSS {} KiB ({} KiB/socket)",
        rss.map_or("?".into(), |v| v.to_string()),
        per.map_or("?".into(), |v| format!("{v:.2}"))
    ));
    Checkpoint {
        sockets,
        rss_kib: rss,
        kib_per_socket: per,
    }
}

/// (after − before) / sockets, rounded to 0.01 KiB.
pub(super) fn per_socket_kib(before: u64, after: u64, sockets: usize) -> f64 {
    ((after as f64 - before as f64) / sockets as f64 * 100.0).round() / 100.0
}

/// How `asked` sockets split into the sample, the fan-out fleet and the
/// mass, and how many of the mass the bench can open (`room`).
pub(super) fn split(asked: usize, sample: usize, room: usize) -> (usize, usize, usize) {
    let sample = sample.min(asked);
    let fan = FAN_SOCKETS.min(asked - sample);
    let mass = (asked - sample - fan).min(room);
    (sample, fan, mass)
}

pub(super) async fn run(
    args: &BenchArgs,
    site: &Site,
    channel: &str,
    ep: &Endpoint,
    machine: Machine,
) -> anyhow::Result<MassReport> {
    let (limits, sample, fan, mass) = plan(args, site).await;
    let crowd = Crowd {
        users: (0..sample).map(|_| Uuid::new_v4()).collect(),
        clients: sample,
    };
    let mut bench = Bench::connect(site, channel, ep, args.publishers, crowd).await?;
    let fan_user = Uuid::new_v4();
    progress(&format!("fan-out fleet: {fan} sockets of one user"));
    let fan_fleet = start_fleet(ep, &[token(&site.secret, fan_user)?], fan, bench.clock).await?;
    let base = checkpoint(site.pid, None, 0).await.rss_kib;
    let tally = Arc::new(Tally::default());
    let mut held = JoinSet::new();
    let waves = open_waves(site, ep, mass, base, &tally, &mut held).await?;
    let sample_result = hold_latency(&mut bench, args).await?;
    bench.fleet = fan_fleet;
    bench.users = vec![fan_user];
    progress(&format!(
        "one event at a time to the user with {fan} sockets"
    ));
    let (length, drain) = (Duration::from_secs(4), Duration::from_secs(10));
    let fan_result = bench.phase(Kind::Bridge, 5, length, drain).await?;
    progress(&super::render::phase_line(&fan_result));
    let opened = tally.opened.load(Ordering::SeqCst);
    let dropped = tally.dropped.load(Ordering::SeqCst);
    let errors = tally.errors.lock().expect("tally").clone();
    drop(held);
    Ok(MassReport {
        machine,
        limits,
        asked: args.sockets,
        tried: mass,
        opened,
        failed: tally.failed.load(Ordering::SeqCst),
        errors,
        accept_per_s: rate(opened, waves.opening),
        held: opened - dropped + sample + fan,
        dropped,
        rss_base_kib: base,
        open_cpu: waves.cpu,
        checkpoints: waves.checkpoints,
        sample: sample_result,
        fan_out: fan_result,
    })
}

/// The limits, and how many sockets of each kind they allow.
async fn plan(args: &BenchArgs, site: &Site) -> (Limits, usize, usize, usize) {
    let mut limits = Limits::take(site.pid);
    limits.server_ws_cap = server_ws_cap(&site.api).await;
    progress(&limits.describe());
    let (sample, fan, _) = split(args.sockets, args.sample, usize::MAX);
    let room = limits
        .bench_room(sample + fan)
        .min(limits.server_room(sample + fan));
    let (_, _, mass) = split(args.sockets, sample, room);
    if mass + sample + fan < args.sockets {
        progress(&format!(
            "the open-file limits allow {} of the {} sockets asked (bench: {} beside the fleets, server: {} WebSockets)",
            mass + sample + fan,
            args.sockets,
            limits.bench_room(sample + fan),
            limits.server_ws_cap.map_or("?".into(), |v| v.to_string()),
        ));
    }
    (limits, sample, fan, mass)
}

/// What opening the mass sockets measured.
struct Waves {
    /// Time spent opening (the settling for RSS readings excluded).
    opening: Duration,
    cpu: Option<CpuShare>,
    checkpoints: Vec<Checkpoint>,
}

/// Opens `mass` sockets in two waves, up to 10,000 and up to all, reading
/// the server's RSS after each.
async fn open_waves(
    site: &Site,
    ep: &Endpoint,
    mass: usize,
    base: Option<u64>,
    tally: &Arc<Tally>,
    held: &mut JoinSet<()>,
) -> anyhow::Result<Waves> {
    let mut waves = Waves {
        opening: Duration::ZERO,
        cpu: None,
        checkpoints: Vec::new(),
    };
    let mut at = 0;
    for stop in [FIRST_CHECKPOINT.min(mass), mass] {
        if stop <= at {
            continue;
        }
        progress(&format!("opening mass sockets {at}..{stop}"));
        let before = CpuSnap::take(site.pid.as_slice());
        let eps = std::slice::from_ref(ep);
        waves.opening += open(&site.secret, eps, at..stop, tally, held).await?;
        if at == 0 {
            let end = CpuSnap::take(site.pid.as_slice());
            waves.cpu = before.zip(end).map(|(b, e)| b.share(&e));
        }
        let opened = tally.opened.load(Ordering::SeqCst);
        progress(&format!(
            "{opened} open, {} failed after {:.1} s",
            tally.failed.load(Ordering::SeqCst),
            waves.opening.as_secs_f64()
        ));
        waves
            .checkpoints
            .push(checkpoint(site.pid, base, opened).await);
        at = stop;
    }
    Ok(waves)
}

/// The server's WebSocket cap, from its `/metrics`.
async fn server_ws_cap(api: &str) -> Option<u64> {
    gauge(api, "ragctl_ws_connections_limit")
        .await
        .map(|v| v as u64)
}

/// Events at `--rate` to the sample while every socket is held.
pub(super) async fn hold_latency(
    bench: &mut Bench,
    args: &BenchArgs,
) -> anyhow::Result<PhaseResult> {
    progress(&format!(
        "held: {} events/s for {:?} to the sample",
        args.rate, args.duration
    ));
    let r = bench
        .phase(
            Kind::Bridge,
            args.rate,
            args.duration,
            Duration::from_secs(10),
        )
        .await?;
    progress(&super::render::phase_line(&r));
    Ok(r)
}

pub(super) fn rate(n: usize, took: Duration) -> f64 {
    match took.as_secs_f64() {
        s if s > 0.0 => (n as f64 / s).round(),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleets_come_first_and_the_mass_fits_the_room() {
        assert_eq!(split(100_000, 1_000, usize::MAX), (1_000, 1_000, 98_000));
        // The bench's own limit cuts the mass, not the fleets.
        assert_eq!(split(100_000, 1_000, 17_000), (1_000, 1_000, 17_000));
        assert_eq!(split(1_500, 1_000, usize::MAX), (1_000, 500, 0));
        assert_eq!(split(10, 1_000, usize::MAX), (10, 0, 0));
    }

    #[test]
    fn rss_per_socket_is_the_growth_over_the_base() {
        assert_eq!(per_socket_kib(20_000, 60_000, 10_000), 4.0);
        assert_eq!(per_socket_kib(20_000, 20_100, 3), 33.33);
        assert_eq!(rate(10_000, Duration::from_millis(800)), 12_500.0);
        assert_eq!(rate(5, Duration::ZERO), 0.0);
    }
}
