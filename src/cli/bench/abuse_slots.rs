//! The many-connection attacks (3 slow bodies, 4 upload pin, 5 socket
//! flood, and the sockets of 7 fan-out): slots, each connecting, holding
//! its connection until it ends, and connecting again a second later,
//! until the attack is over. A slot's index picks its source address, so
//! that tens of thousands of connections do not run out of ports.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::abuse_raw::{End, await_answer, drip, head, send_head};
use super::abuse_target::{Tally, Target, reason};
use super::crowd::token;
use super::limits::source_addr;
use super::mass::connect_from;

/// Attack 3: slow requests per attacker process (two processes: one
/// process's descriptors cannot fill the server's connection budget), the
/// interval between body bytes, and the declared body.
const SLOW_PER_PROCESS: usize = 20_000;
const SLOW_PROCESSES: usize = 2;
const SLOW_EVERY: Duration = Duration::from_secs(5);
const SLOW_BODY: usize = 100_000;
/// Attack 4: declared uploads, over this many accounts; each declares the
/// largest body the default server takes (25 MiB + 64 KiB of multipart).
const PIN_UPLOADS: usize = 7;
const PIN_ACCOUNTS: usize = 4;
const PIN_DECLARED: usize = 25 * 1024 * 1024 + 64 * 1024;
/// Attack 5: sockets tried at most (above the default cap, 50,000; the
/// process's descriptors bound it further).
const FLOOD_MAX: usize = 60_000;
/// Attack 7: the attacker's sockets.
const FANOUT_SOCKETS: usize = 8_000;
/// Concurrent connects.
const GATE: usize = 256;
/// A slot whose connection ended waits this long before the next.
const RETRY: Duration = Duration::from_secs(1);
/// Descriptors an attacker process keeps for itself.
const FD_HEADROOM: usize = 500;

/// Attacker processes of attack `n`, and the slots of each.
pub(super) fn plan(n: u8) -> (usize, usize) {
    match n {
        3 => (SLOW_PROCESSES, SLOW_PER_PROCESS),
        4 => (1, PIN_UPLOADS),
        5 => (1, FLOOD_MAX),
        7 => (1, FANOUT_SOCKETS),
        _ => (1, 0),
    }
}

/// The account of slot `i` of the upload pin: the attacker's own, then
/// three more derived from it.
pub(super) fn pin_account(attacker: Uuid, i: usize) -> Uuid {
    Uuid::from_u128(attacker.as_u128().wrapping_add((i % PIN_ACCOUNTS) as u128))
}

/// What one slot does: attack `n`'s connection, held until it ends.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    SlowBody,
    PinUpload,
    Socket,
}

/// What the slots share.
struct Crew {
    t: Arc<Target>,
    tally: Arc<Tally>,
    gate: Semaphore,
    cancel: CancellationToken,
    kind: Kind,
}

/// This process's slots, as many as its descriptors allow, until `cancel`.
pub(super) async fn slots(
    t: &Arc<Target>,
    tally: &Arc<Tally>,
    cancel: &CancellationToken,
    kind: Kind,
) -> anyhow::Result<()> {
    let n = t.slots.min(fd_room());
    tally.ready_after(n);
    let crew = Arc::new(Crew {
        t: t.clone(),
        tally: tally.clone(),
        gate: Semaphore::new(GATE),
        cancel: cancel.clone(),
        kind,
    });
    let mut set = JoinSet::new();
    for i in t.first_slot..t.first_slot + n {
        set.spawn(slot(i, crew.clone()));
    }
    cancel.cancelled().await;
    // The slots see `cancel` too; give them a moment to count their ends.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Descriptors this process may still open, less `FD_HEADROOM`.
fn fd_room() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain syscall on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return usize::MAX;
    }
    (lim.rlim_cur as usize).saturating_sub(FD_HEADROOM)
}

/// One slot: connect, hold, count, wait `RETRY`, again.
async fn slot(i: usize, crew: Arc<Crew>) {
    let t = &crew.t;
    let account = match crew.kind {
        Kind::PinUpload => pin_account(t.attacker, i),
        _ => t.attacker,
    };
    let Ok(jwt) = token(&t.secret, account) else {
        return;
    };
    while !crew.cancel.is_cancelled() {
        let held = {
            let _permit = crew.gate.acquire().await;
            tokio::select! {
                r = connect(i, &crew, &jwt) => Some(r),
                _ = crew.cancel.cancelled() => None,
            }
        };
        let Some(held) = held else { return };
        crew.tally.attempt();
        match held {
            Ok(hold) => {
                crew.tally.open();
                crew.tally.end(hold.await.label());
            }
            Err(e) => crew.tally.fail(reason(&e)),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = crew.cancel.cancelled() => return,
        }
    }
}

/// Connects slot `i`; the future holds the connection until it ends.
async fn connect<'a>(i: usize, crew: &'a Crew, jwt: &str) -> anyhow::Result<BoxFuture<'a, End>> {
    let (ep, cancel) = (crew.t.ep(), &crew.cancel);
    Ok(match crew.kind {
        Kind::SlowBody => {
            let json = Some("application/json");
            let post = head(
                "POST",
                "/conversations",
                &ep.host,
                jwt,
                json,
                Some(SLOW_BODY),
            );
            let tcp = send_head(ep, i, &post).await?;
            Box::pin(drip(tcp, SLOW_EVERY, cancel))
        }
        Kind::PinUpload => {
            let multipart = Some("multipart/form-data; boundary=abuse");
            let post = head(
                "POST",
                "/documents",
                &ep.host,
                jwt,
                multipart,
                Some(PIN_DECLARED),
            );
            let tcp = send_head(ep, i, &post).await?;
            Box::pin(await_answer(tcp, cancel))
        }
        Kind::Socket => {
            let src = IpAddr::V4(source_addr(i));
            let connecting = connect_from(ep, src, jwt);
            let mut ws = tokio::time::timeout(Duration::from_secs(30), connecting)
                .await
                .map_err(|_| anyhow::anyhow!("handshake timed out (30 s)"))??;
            // Read (answering pings) until the server closes it.
            Box::pin(async move {
                let closed = async { while let Some(Ok(_)) = ws.next().await {} };
                tokio::select! {
                    _ = closed => End::Closed,
                    _ = cancel.cancelled() => End::Cancelled,
                }
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_pin_spreads_over_four_accounts() {
        let a = Uuid::new_v4();
        let accounts: std::collections::HashSet<Uuid> =
            (0..PIN_UPLOADS).map(|i| pin_account(a, i)).collect();
        assert_eq!(accounts.len(), PIN_ACCOUNTS);
        assert!(accounts.contains(&a));
        assert_eq!(plan(4), (1, 7));
        assert_eq!(plan(3).0 * plan(3).1, 40_000);
    }
}
