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
//! Where io_uring cannot be had (an old kernel, a seccomp profile, the
//! `kernel.io_uring_disabled` sysctl) or is switched off, the same calls
//! are plain sends, one per socket.

use std::io;
use std::os::fd::RawFd;
use std::task::Poll;

use bytes::Bytes;
use io_uring::{IoUring, Probe, opcode, types};

use super::outlet::{send_now, sent};

/// Done inline or failed at once, never waiting; no SIGPIPE.
const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;

/// Sends submitted at once at most (larger batches go in several calls).
const RING_ENTRIES: u32 = 256;

/// How the bridge sends to sockets: through its ring, or one call each.
pub struct Sender {
    ring: Option<IoUring>,
}

impl Sender {
    /// One `send(2)` per socket.
    pub fn plain() -> Sender {
        Sender { ring: None }
    }

    /// Batches through io_uring when `enabled` and the kernel allows it;
    /// says which on the log.
    pub fn new(enabled: bool) -> Sender {
        let sender = if !enabled {
            tracing::info!("io_uring off: the bridge sends one system call per frame");
            Sender::plain()
        } else {
            match ring_with_send() {
                Ok(ring) => Sender { ring: Some(ring) },
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
    /// in order, is appended to `out` (`Pending`: the kernel took nothing).
    pub fn send_all(&mut self, fds: &[RawFd], buf: &Bytes, out: &mut Vec<Poll<io::Result<usize>>>) {
        for part in fds.chunks(RING_ENTRIES as usize) {
            let start = out.len();
            let Some(ring) = &mut self.ring else {
                out.extend(part.iter().map(|&fd| send_now(fd, buf)));
                continue;
            };
            out.extend(part.iter().map(|_| Poll::Pending));
            if let Err(e) = submit(ring, part, buf, &mut out[start..], SEND_FLAGS) {
                // The ring itself failed: it is dropped, and every send of
                // this part that took nothing (`Pending`: failed with
                // EAGAIN, or never submitted) is done the plain way.
                tracing::warn!(error = %e, "io_uring submission failed: sending one call per frame");
                self.ring = None;
                self.report();
                for (slot, &fd) in out[start..].iter_mut().zip(part) {
                    if slot.is_pending() {
                        *slot = send_now(fd, buf);
                    }
                }
            }
        }
    }
}

/// A ring whose kernel has the send operation (5.6 and later): on an older
/// one every send would fail with EINVAL and close its socket.
fn ring_with_send() -> io::Result<IoUring> {
    let ring = IoUring::new(RING_ENTRIES)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode::Send::CODE) {
        return Err(io::Error::other(
            "this kernel's io_uring has no send operation",
        ));
    }
    Ok(ring)
}

/// Submits one send per fd, writing each outcome into `out`. Each send
/// completes during the submission (`MSG_DONTWAIT`: done inline, or failed
/// with EAGAIN). Should a kernel park one instead (wait for the socket),
/// the router must not wait with it: what is left is cancelled, its
/// outcome taken (cancelled = nothing sent), and an error returned so that
/// the caller stops using the ring. On any error the caller drops the ring
/// before `buf` is released: nothing is left in flight, and what was not
/// submitted is discarded with the ring.
fn submit(
    ring: &mut IoUring,
    fds: &[RawFd],
    buf: &Bytes,
    out: &mut [Poll<io::Result<usize>>],
    flags: i32,
) -> io::Result<()> {
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    {
        let mut sq = ring.submission();
        for (i, &fd) in fds.iter().enumerate() {
            let send = opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
                .flags(flags)
                .build()
                .user_data(i as u64);
            // SAFETY: `buf` outlives the operation: it is borrowed until
            // `send_all` returns, which is after every submitted send has
            // completed, or after the ring was dropped (see above).
            unsafe { sq.push(&send) }.map_err(|_| io::Error::other("submission queue full"))?;
        }
    }
    let mut done = vec![false; fds.len()];
    retry_interrupted(|| ring.submit())?;
    drain(ring, out, &mut done);
    let parked: Vec<usize> = (0..fds.len()).filter(|&i| !done[i]).collect();
    if parked.is_empty() {
        return Ok(());
    }
    {
        let mut sq = ring.submission();
        for &i in &parked {
            let cancel = opcode::AsyncCancel::new(i as u64).build().user_data(CANCEL);
            // SAFETY: a cancel refers to no buffer.
            unsafe { sq.push(&cancel) }.map_err(|_| io::Error::other("submission queue full"))?;
        }
    }
    while done.iter().any(|d| !d) {
        if let Err(e) = retry_interrupted(|| ring.submit_and_wait(1)) {
            // A send may still be in flight: its buffer must outlive it.
            std::mem::forget(buf.clone());
            return Err(e);
        }
        drain(ring, out, &mut done);
    }
    Err(io::Error::other(
        "the kernel parked a MSG_DONTWAIT send instead of failing it with EAGAIN",
    ))
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

/// Moves the completions that arrived into `out` (a cancelled send sent
/// nothing: `Pending`).
fn drain(ring: &mut IoUring, out: &mut [Poll<io::Result<usize>>], done: &mut [bool]) {
    for cqe in ring.completion() {
        let (i, res) = (cqe.user_data(), cqe.result());
        if i == CANCEL {
            continue;
        }
        out[i as usize] = match res {
            0.. => Poll::Ready(Ok(res as usize)),
            _ if -res == libc::ECANCELED => Poll::Pending,
            _ => sent(io::Error::from_raw_os_error(-res)),
        };
        done[i as usize] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// Connected pairs: (server end, non-blocking; client end).
    fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        (0..n)
            .map(|_| {
                let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (s, _) = l.accept().unwrap();
                s.set_nonblocking(true).unwrap();
                (s, c)
            })
            .collect()
    }

    fn check(sender: &mut Sender) {
        let mut socks = pairs(3);
        let fds: Vec<RawFd> = socks.iter().map(|(s, _)| s.as_raw_fd()).collect();
        let mut out = Vec::new();
        sender.send_all(&fds, &Bytes::from_static(b"hello"), &mut out);
        assert_eq!(out.len(), 3);
        for (r, (_, c)) in out.iter().zip(&mut socks) {
            assert!(matches!(r, Poll::Ready(Ok(5))), "{r:?}");
            let mut got = [0u8; 5];
            c.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello");
        }
        // A peer that never reads: its socket fills up and then takes
        // nothing (`Pending`), while the other socket still gets its bytes.
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let stuck = [fds[0]];
        let mut outcome = Poll::Ready(Ok(0));
        for _ in 0..256 {
            out.clear();
            sender.send_all(&stuck, &big, &mut out);
            outcome = out.pop().unwrap();
            if outcome.is_pending() {
                break;
            }
        }
        assert!(
            outcome.is_pending(),
            "a full socket must not block: {outcome:?}"
        );
        // A closed peer: the send fails (reset or broken pipe), no signal.
        drop(socks.remove(1).1);
        let dead = [fds[1]];
        let mut failed = false;
        for _ in 0..16 {
            out.clear();
            sender.send_all(&dead, &Bytes::from_static(b"x"), &mut out);
            if matches!(out[0], Poll::Ready(Err(_))) {
                failed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(failed, "sends to a closed peer must fail");
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn plain_sends_report_written_full_and_failed() {
        check(&mut Sender::plain());
    }

    #[test]
    fn batched_sends_report_the_same_outcomes() {
        let mut sender = Sender::new(true);
        let batched = sender.batched();
        if !batched {
            // Still a real test: of the fallback that such a host uses.
            eprintln!("io_uring is unavailable here: the plain sends were tested");
        }
        check(&mut sender);
        // A full socket failed its send with EAGAIN during the submission
        // (not parked in the ring, which would have made the sender give
        // the ring up).
        assert_eq!(sender.batched(), batched, "the ring was given up");
    }

    #[test]
    fn a_send_the_kernel_parks_is_cancelled_not_waited_for() {
        // Without MSG_DONTWAIT the kernel parks a send to a full socket
        // until it drains: what `submit` must never wait for.
        let Ok(mut ring) = ring_with_send() else {
            return eprintln!("io_uring is unavailable here: nothing to park");
        };
        let socks = pairs(1);
        let fd = [socks[0].0.as_raw_fd()];
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let mut out = vec![Poll::Pending];
        let mut parked = false;
        for _ in 0..256 {
            out[0] = Poll::Pending;
            if let Err(e) = submit(&mut ring, &fd, &big, &mut out, libc::MSG_NOSIGNAL) {
                assert!(e.to_string().contains("parked"), "{e}");
                parked = true;
                break;
            }
        }
        assert!(parked, "the socket never filled up");
        assert!(
            out[0].is_pending(),
            "a cancelled send sent nothing: {:?}",
            out[0]
        );
    }

    #[test]
    fn more_sockets_than_ring_entries_go_in_several_submissions() {
        let mut sender = Sender::new(true);
        let n = RING_ENTRIES as usize + 3;
        let mut socks = pairs(n);
        let fds: Vec<RawFd> = socks.iter().map(|(s, _)| s.as_raw_fd()).collect();
        let mut out = Vec::new();
        sender.send_all(&fds, &Bytes::from_static(b"ab"), &mut out);
        assert_eq!(out.len(), n);
        assert!(out.iter().all(|r| matches!(r, Poll::Ready(Ok(2)))));
        let mut got = [0u8; 2];
        socks[n - 1].1.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ab");
    }
}
