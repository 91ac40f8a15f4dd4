//! The allocator's view of the serve process: how much of its heap is in
//! use and how much it keeps free, as gauges, and a periodic trim.
//!
//! glibc's malloc keeps freed memory in its arenas (one per thread that
//! allocated, up to 8 per core) and returns only the top of each heap to
//! the system. A burst (a PostgreSQL restart: every socket's catch-up and
//! the heal at once) leaves the arenas holding pages nothing uses, and the
//! RSS stays up after the memory is freed (the soak's RSS step, #20).
//! `malloc_trim(0)` hands every whole free page of every arena back
//! (madvise), at the cost of a walk of the free lists under each arena's
//! lock: cheap once a minute, and nothing is trimmed that is in use.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the heap is measured and trimmed.
const EVERY: Duration = Duration::from_secs(60);

/// Measures (and trims) once now, so the gauges are set before the
/// process says it is ready, then every [`EVERY`] until `shutdown`.
pub fn spawn(shutdown: CancellationToken) {
    trim_and_measure();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + EVERY;
        let mut tick = tokio::time::interval_at(start, EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A walk of the arenas: off the runtime's worker threads.
            if tokio::task::spawn_blocking(trim_and_measure).await.is_err() {
                return;
            }
        }
    });
}

/// Trims, then sets the gauges from the arenas' totals.
fn trim_and_measure() {
    let Some(before) = usage() else { return };
    let released = trim();
    let Some(after) = usage() else { return };
    metrics::gauge!("ragctl_heap_in_use_bytes").set(after.in_use as f64);
    metrics::gauge!("ragctl_heap_free_held_bytes").set(after.free_held as f64);
    metrics::counter!("ragctl_heap_trims_total").increment(1);
    tracing::debug!(
        in_use = after.in_use,
        free_held_before = before.free_held,
        free_held_after = after.free_held,
        released,
        "heap trimmed"
    );
}

/// What the allocator holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Allocated and not freed (small chunks and mmapped blocks).
    pub in_use: u64,
    /// Freed but still held by the arenas (pages a trim handed back to
    /// the system included: they stay free chunks).
    pub free_held: u64,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn usage() -> Option<Usage> {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    Some(Usage {
        in_use: (m.uordblks + m.hblkhd) as u64,
        free_held: m.fordblks as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn usage() -> Option<Usage> {
    None
}

/// True if memory was returned to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim takes the arenas' locks itself; pad 0 keeps
    // nothing spare at the top of the main heap.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    /// The gauges read the arenas: 20 MB of small blocks show in use while
    /// held, and leave it when freed (other tests allocate meanwhile: the
    /// margins are wide).
    fn usage_follows_allocations() {
        let before = usage().unwrap();
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 1000]).collect();
        let held = usage().unwrap();
        assert!(
            held.in_use >= before.in_use + 15_000_000,
            "{before:?} → {held:?}"
        );
        drop(blocks);
        let freed = usage().unwrap();
        assert!(
            freed.in_use + 15_000_000 <= held.in_use,
            "{held:?} → {freed:?}"
        );
        assert!(freed.free_held > 0, "{freed:?}");
        trim();
        assert!(
            usage().unwrap().in_use <= held.in_use,
            "a trim frees nothing in use"
        );
    }
}
