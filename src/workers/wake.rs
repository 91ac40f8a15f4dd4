//! Job wake-ups for every slot of a worker process: one LISTEN connection
//! per process, its NOTIFYs of this kind turned into a generation counter.
//!
//! A `watch` rather than a `Notify`: `notify_one` wakes a single waiter
//! and `notify_waiters` misses a slot that is between its claim and its
//! nap. A slot marks the generation seen *before* it claims, so a wake-up
//! that arrives while it claims ends its nap at once: none is lost, and
//! every idle slot looks.

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::jobs::{JOBS_CHANNEL, JobKind};
use crate::db::listener::{self, ListenItem, ListenerConfig};

/// What the slots hold: `changed()` resolves after each wake-up.
pub(super) type Wake = watch::Receiver<u64>;

/// The process's listener and the task that counts its wake-ups; both end
/// once `shutdown` is cancelled.
pub(super) struct Listening {
    pub wake: Wake,
    pub listen_task: JoinHandle<()>,
    pub wake_task: JoinHandle<()>,
}

/// LISTENs on the jobs channel and bumps the generation for jobs of
/// `kinds` (the first names the listener).
pub(super) fn listen(
    listen_url: &str,
    kinds: &'static [JobKind],
    shutdown: CancellationToken,
) -> Listening {
    let kind = kinds[0];
    // The wake task only bumps a counter, so this queue never fills for
    // long; an overflow is counted by the listener and reported as a gap.
    let (queue_tx, mut queue_rx) = mpsc::channel::<ListenItem>(64);
    let (_handle, listen_task) = listener::spawn(
        ListenerConfig::new(
            listen_url,
            &format!("ragctl-worker-{kind}"),
            &[JOBS_CHANNEL],
        ),
        queue_tx,
        shutdown,
    );
    let (tx, wake) = watch::channel(0u64);
    let wake_task = tokio::spawn(async move {
        while let Some(item) = queue_rx.recv().await {
            let bump = match item {
                ListenItem::Notification(n) => kinds.iter().any(|k| n.payload == k.as_str()),
                // After a gap we may have missed a wake-up: look anyway.
                ListenItem::Gap(_) => true,
            };
            if bump {
                tx.send_modify(|generation| *generation = generation.wrapping_add(1));
            }
        }
    });
    Listening {
        wake,
        listen_task,
        wake_task,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every receiver that marked the generation seen wakes, however many
    /// wait and whether or not they were waiting when it was bumped.
    #[tokio::test]
    async fn a_bump_wakes_every_slot_even_one_not_yet_waiting() {
        let (tx, rx) = watch::channel(0u64);
        let mut slots: Vec<Wake> = (0..3).map(|_| rx.clone()).collect();
        for s in &mut slots {
            s.borrow_and_update();
        }
        tx.send_modify(|g| *g += 1);
        for s in &mut slots {
            // Each call would wait forever had the bump been lost.
            tokio::time::timeout(std::time::Duration::from_secs(60), s.changed())
                .await
                .expect("woken")
                .expect("sender alive");
        }
    }
}
