//! The buffer of sends handed to an io_uring, owned until the kernel is done
//! with it.
//!
//! A send in a ring reads its buffer whenever the kernel gets to it, which
//! may be after the call that submitted it returned (a send the kernel
//! parked; closing a ring cancels what is in it asynchronously). So the
//! only way to put a send in a ring is `InFlight::push_send`, which takes
//! the buffer from the guard's own `Bytes` and counts the send, and the
//! buffer is released only when every counted send's completion has been
//! reaped (`reaped`). A guard dropped before that leaks its buffer on
//! purpose: a leak is bounded (the ring is given up on the paths that can
//! do it), a use after free is not.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use io_uring::squeue::PushError;
use io_uring::{SubmissionQueue, cqueue, opcode, types};

/// Buffers leaked by guards dropped with sends not reaped, in this process.
static LEAKED: AtomicU64 = AtomicU64::new(0);

/// One buffer and the sends of it that the kernel may still read.
pub struct InFlight {
    buf: Bytes,
    /// By send index (its user data): pushed, completion not reaped yet.
    /// Indexed rather than searched: a batch holds up to a ring's worth of
    /// sends, and each completion is looked up once.
    pending: Vec<bool>,
    /// How many of `pending` are true.
    count: usize,
}

impl InFlight {
    /// Keeps `buf` (a reference-counted clone: no copy) for the sends.
    pub fn new(buf: &Bytes) -> InFlight {
        InFlight {
            buf: buf.clone(),
            pending: Vec::new(),
            count: 0,
        }
    }

    /// Pushes a send of the whole buffer (at most 4 GiB) to `fd`, tagged
    /// with `index` (its place in the batch, distinct per send; its user
    /// data), and counts it in flight.
    pub fn push_send(
        &mut self,
        sq: &mut SubmissionQueue<'_>,
        fd: BorrowedFd<'_>,
        flags: i32,
        index: usize,
    ) -> Result<(), PushError> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        let send = opcode::Send::new(types::Fd(fd.as_raw_fd()), self.buf.as_ptr(), len)
            .flags(flags)
            .build()
            .user_data(index as u64);
        // SAFETY: the send reads `self.buf`, which this guard holds until
        // the send's completion is reaped, or forever (`Drop`). The fd is
        // open now; once submitted, the kernel holds its own reference to
        // the file.
        unsafe { sq.push(&send) }?;
        if self.pending.len() <= index {
            self.pending.resize(index + 1, false);
        }
        assert!(!self.pending[index], "send index {index} pushed twice");
        self.pending[index] = true;
        self.count += 1;
        Ok(())
    }

    /// Takes `cqe`, a completion reaped from the ring: the index of one of
    /// this guard's sends (which no longer reads the buffer), or `None`
    /// for any other operation's. Each send is reaped once.
    pub fn reaped(&mut self, cqe: &cqueue::Entry) -> Option<usize> {
        let index = usize::try_from(cqe.user_data()).ok()?;
        let slot = self.pending.get_mut(index).filter(|p| **p)?;
        *slot = false;
        self.count -= 1;
        Some(index)
    }

    /// Sends pushed whose completion was not reaped.
    pub fn pending(&self) -> usize {
        self.count
    }

    /// Buffers leaked so far in this process (see `Drop`).
    #[cfg(test)]
    pub fn leaked() -> u64 {
        LEAKED.load(Ordering::Relaxed)
    }
}

impl Drop for InFlight {
    /// With a send not reaped, the kernel may still read the buffer: it is
    /// never freed (counted in `ragctl_bridge_io_uring_leaked_buffers_total`).
    fn drop(&mut self) {
        if self.count == 0 {
            return;
        }
        LEAKED.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ragctl_bridge_io_uring_leaked_buffers_total").increment(1);
        tracing::warn!(
            sends = self.count,
            bytes = self.buf.len(),
            "io_uring sends not reaped: their buffer is kept for the life of the process"
        );
        std::mem::forget(std::mem::take(&mut self.buf));
    }
}
