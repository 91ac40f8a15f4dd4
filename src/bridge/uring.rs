//! Sends one chunk to many sockets in one system call.
//!
//! An event for a user with ten sockets here is ten `send(2)` calls, and
//! at a few thousand events a second their entries, exits and socket
//! look-ups are a tenth of the server's CPU (docs/benchmarks.md). With
//! io_uring the router queues all ten sends and submits them with one
//! `io_uring_enter`. Each send carries `MSG_DONTWAIT`, so the kernel does
//! it inline and a socket that cannot take it completes at once with
//! `EAGAIN` (never parked in the ring): the outcomes are exactly those of
//! plain sends, and the outlet queues what was not taken as before.
//!
//! The buffer is never borrowed by the ring: each send is pushed through
//! `InFlight`, which owns a clone of it until the send's completion is
//! reaped, and the `Sender` gets its ring back only once all are. On any
//! early exit the ring is dropped without being entered again, and a guard
//! with sends not reaped keeps the buffer for good (`inflight.rs`).
//!
//! Where io_uring cannot be had (an old kernel, a seccomp profile, the
//! `kernel.io_uring_disabled` sysctl) or is switched off, the same calls
//! are plain sends, one per socket.

use std::io;
use std::os::fd::BorrowedFd;

use bytes::Bytes;
use io_uring::{IoUring, Probe, opcode};

use super::inflight::InFlight;
use super::send::{SendOutcome, send_now};

/// Done inline or failed at once, never waiting; no SIGPIPE.
const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;

/// Sends submitted at once at most (larger batches go in several calls).
const RING_ENTRIES: u32 = 256;

/// How the bridge sends to sockets: through its ring, or one call each.
pub struct Sender {
    ring: Option<IoUring>,
    /// Sends per submission: as many as the submission queue holds.
    batch: usize,
}

impl Sender {
    /// One `send(2)` per socket.
    pub fn plain() -> Sender {
        Sender {
            ring: None,
            batch: RING_ENTRIES as usize,
        }
    }

    /// Batches through io_uring when `enabled` and the kernel allows it;
    /// says which on the log.
    pub fn new(enabled: bool) -> Sender {
        let sender = if !enabled {
            tracing::info!("io_uring off: the bridge sends one system call per frame");
            Sender::plain()
        } else {
            match ring_with_send(RING_ENTRIES) {
                Ok(ring) => Sender {
                    batch: ring.params().sq_entries() as usize,
                    ring: Some(ring),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable: the bridge sends one system call per frame");
                    Sender::plain()
                }
            }
        };
        sender.report();
        sender
    }

    /// `ragctl_bridge_io_uring`: 1 while sends are batched, else 0.
    fn report(&self) {
        metrics::gauge!("ragctl_bridge_io_uring").set(if self.batched() { 1.0 } else { 0.0 });
    }

    pub fn batched(&self) -> bool {
        self.ring.is_some()
    }

    /// Sends `buf` to each of `fds` without waiting; the outcome of each,
    /// in order, is appended to `out`.
    pub fn send_all(&mut self, fds: &[BorrowedFd<'_>], buf: &Bytes, out: &mut Vec<SendOutcome>) {
        for part in fds.chunks(self.batch.max(1)) {
            let start = out.len();
            let Some(ring) = self.ring.take() else {
                out.extend(part.iter().map(|&fd| send_now(fd, buf)));
                continue;
            };
            out.extend(part.iter().map(|_| SendOutcome::WouldBlock));
            match submit(ring, part, buf, &mut out[start..], SEND_FLAGS) {
                Ok(ring) => self.ring = Some(ring),
                Err(e) => self.give_up(&e, part, buf, &mut out[start..]),
            }
        }
    }

    /// The ring failed (and is gone): every send of `part` that took
    /// nothing (`WouldBlock`: EAGAIN, or never submitted) is done the
    /// plain way, as is everything after.
    fn give_up(
        &mut self,
        e: &io::Error,
        part: &[BorrowedFd<'_>],
        buf: &Bytes,
        out: &mut [SendOutcome],
    ) {
        tracing::warn!(error = %e, "io_uring submission failed: sending one call per frame");
        self.report();
        for (slot, &fd) in out.iter_mut().zip(part) {
            if slot.would_block() {
                *slot = send_now(fd, buf);
            }
        }
    }
}

/// A ring whose kernel has the send operation (5.6 and later): on an older
/// one every send would fail with EINVAL and close its socket.
fn ring_with_send(entries: u32) -> io::Result<IoUring> {
    let ring = IoUring::new(entries)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode::Send::CODE) {
        return Err(io::Error::other(
            "this kernel's io_uring has no send operation",
        ));
    }
    Ok(ring)
}

/// Submits one send of `buf` per fd and writes each outcome into `out`.
/// Each send completes during the submission (`MSG_DONTWAIT`: done inline,
/// or failed with EAGAIN); should a kernel park one instead, what is parked
/// is cancelled and its completion reaped (cancelled = `WouldBlock`).
///
/// The ring comes back only when the completion of every send was reaped;
/// on an error it is dropped, so nothing left in it is ever submitted, and
/// the sends' `InFlight` keeps the buffer alive if one may still be read.
/// A send whose outcome cannot be known then is `Failed` (its socket is
/// closed: bytes may or may not have gone out); one never submitted stays
/// `WouldBlock`.
fn submit(
    mut ring: IoUring,
    fds: &[BorrowedFd<'_>],
    buf: &Bytes,
    out: &mut [SendOutcome],
    flags: i32,
) -> io::Result<IoUring> {
    let mut sends = InFlight::new(buf);
    {
        let mut sq = ring.submission();
        for (i, &fd) in fds.iter().enumerate() {
            sends
                .push_send(&mut sq, fd, flags, i)
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
    }
    let mut done = vec![false; fds.len()];
    // An error of io_uring_enter(2) means it consumed nothing.
    retry_interrupted(|| ring.submit())?;
    drain(&mut ring, &mut sends, out, &mut done);
    if sends.pending() == 0 {
        return Ok(ring);
    }
    let cancelled = cancel_parked(&mut ring, &mut sends, out, &mut done);
    if sends.pending() > 0 {
        for (slot, _) in out.iter_mut().zip(&done).filter(|(_, d)| !**d) {
            *slot =
                SendOutcome::Failed(io::Error::other("io_uring failed with this send in flight"));
        }
    }
    cancelled?;
    Err(io::Error::other(
        "the kernel parked a MSG_DONTWAIT send instead of failing it with EAGAIN",
    ))
}

/// Cancels the sends not done and waits for every send's completion.
fn cancel_parked(
    ring: &mut IoUring,
    sends: &mut InFlight,
    out: &mut [SendOutcome],
    done: &mut [bool],
) -> io::Result<()> {
    {
        let mut sq = ring.submission();
        for i in (0..done.len()).filter(|&i| !done[i]) {
            let cancel = opcode::AsyncCancel::new(i as u64).build().user_data(CANCEL);
            // SAFETY: a cancel refers to no buffer.
            unsafe { sq.push(&cancel) }.map_err(|_| io::Error::other("submission queue full"))?;
        }
    }
    while sends.pending() > 0 {
        retry_interrupted(|| ring.submit_and_wait(1))?;
        drain(ring, sends, out, done);
    }
    Ok(())
}

/// The user data of cancel requests (sends use their index).
const CANCEL: u64 = u64::MAX;

fn retry_interrupted(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Moves the completions that arrived into `out`, each reaped off `sends`
/// (a cancelled send sent nothing: `WouldBlock`).
fn drain(ring: &mut IoUring, sends: &mut InFlight, out: &mut [SendOutcome], done: &mut [bool]) {
    for cqe in ring.completion() {
        // Not a send: a cancel's completion.
        let Some(i) = sends.reaped(&cqe) else {
            continue;
        };
        let res = cqe.result();
        out[i] = match res {
            _ if -res == libc::ECANCELED => SendOutcome::WouldBlock,
            _ => SendOutcome::from_raw(res),
        };
        done[i] = true;
    }
}

#[cfg(test)]
#[path = "uring_tests.rs"]
mod tests;
