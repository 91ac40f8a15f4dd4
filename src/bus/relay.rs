//! The relay: connects to NATS, waits for leadership (`relay_lock`), then
//! leads (`relay_term`) until its lock session is lost (back to standby)
//! or shutdown (resign, release). `ragctl relay` runs one; every
//! `serve --bus nats` runs one as a task unless `--relay off`.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::connect::{Link, connect_link};
pub use super::relay_config::{RELAY_LISTENER_NAME, RelayConfig, RelayRole};
pub use super::relay_lock::LOCK_SESSION_NAME;
use super::relay_lock::{self, LockSession};
use super::relay_term::{self, TermEnd};

#[derive(Clone)]
pub struct RelayHandle {
    pub role: watch::Receiver<RelayRole>,
}

/// Starts a relay candidate; the task ends after `shutdown` (having
/// resigned if it led).
pub fn spawn(
    cfg: RelayConfig,
    shutdown: CancellationToken,
) -> (RelayHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(RelayRole::Standby);
    let task = tokio::spawn(run(cfg, tx, shutdown));
    (RelayHandle { role: rx }, task)
}

async fn run(cfg: RelayConfig, role: watch::Sender<RelayRole>, shutdown: CancellationToken) {
    let leader = metrics::gauge!("ragctl_relay_leader");
    leader.set(0.0);
    let link = tokio::select! {
        _ = shutdown.cancelled() => return,
        l = connect_link(&cfg.nats, "ragctl-relay") => l,
    };
    let link = match link {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the relay cannot connect to NATS; it will not run");
            return;
        }
    };
    loop {
        let Some(lock) = relay_lock::acquire(&cfg.listen_url, &cfg.channel, &shutdown).await else {
            return;
        };
        if lead_once(&cfg, &link, lock, &role, &shutdown).await == TermEnd::Shutdown {
            return;
        }
    }
}

/// One leadership term: the lock held by a task of its own that cancels
/// `lost` the moment its session dies, while the term publishes.
async fn lead_once(
    cfg: &RelayConfig,
    link: &Link,
    lock: LockSession,
    role: &watch::Sender<RelayRole>,
    shutdown: &CancellationToken,
) -> TermEnd {
    if lock.waited {
        // Another relay led before this one (it died or resigned).
        metrics::counter!("ragctl_relay_failovers_total").increment(1);
    }
    let (lost, stop) = (CancellationToken::new(), CancellationToken::new());
    let holder = tokio::spawn(lock.hold(lost.clone(), stop.clone()));
    let end = relay_term::lead(cfg, link, &lost, shutdown, role).await;
    role.send_replace(RelayRole::Standby);
    metrics::gauge!("ragctl_relay_leader").set(0.0);
    stop.cancel();
    let _ = holder.await;
    end
}
