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

use io_uring::{IoUring, Probe, opcode, types};

use super::outlet::{send_now, sent};

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
    pub fn send_all(&mut self, fds: &[RawFd], buf: &[u8], out: &mut Vec<Poll<io::Result<usize>>>) {
        for part in fds.chunks(RING_ENTRIES as usize) {
            let start = out.len();
            let Some(ring) = &mut self.ring else {
                out.extend(part.iter().map(|&fd| send_now(fd, buf)));
                continue;
            };
            out.extend(part.iter().map(|_| Poll::Pending));
            if let Err(e) = submit(ring, part, buf, &mut out[start..]) {
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

/// Submits one send per fd and waits for every completion (each is
/// immediate: `MSG_DONTWAIT`), writing each outcome into `out`. On an
/// error the caller drops the ring before `buf` is released: what was not
/// submitted is discarded with it, and nothing was left in flight.
fn submit(
    ring: &mut IoUring,
    fds: &[RawFd],
    buf: &[u8],
    out: &mut [Poll<io::Result<usize>>],
) -> io::Result<()> {
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    {
        let mut sq = ring.submission();
        for (i, &fd) in fds.iter().enumerate() {
            let send = opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                .build()
                .user_data(i as u64);
            // SAFETY: `buf` outlives the operation: it is borrowed until
            // `send_all` returns, which is after every submitted send has
            // completed, or after the ring was dropped (see above).
            unsafe { sq.push(&send) }.map_err(|_| io::Error::other("submission queue full"))?;
        }
    }
    let mut done = 0;
    while done < fds.len() {
        let waited = ring.submit_and_wait(fds.len() - done);
        drain(ring, out, &mut done);
        match waited {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Moves the completions that arrived into `out`.
fn drain(ring: &mut IoUring, out: &mut [Poll<io::Result<usize>>], done: &mut usize) {
    for cqe in ring.completion() {
        let res = cqe.result();
        out[cqe.user_data() as usize] = match res {
            0.. => Poll::Ready(Ok(res as usize)),
            _ => sent(io::Error::from_raw_os_error(-res)),
        };
        *done += 1;
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

    fn check(mut sender: Sender) {
        let mut socks = pairs(3);
        let fds: Vec<RawFd> = socks.iter().map(|(s, _)| s.as_raw_fd()).collect();
        let mut out = Vec::new();
        sender.send_all(&fds, b"hello", &mut out);
        assert_eq!(out.len(), 3);
        for (r, (_, c)) in out.iter().zip(&mut socks) {
            assert!(matches!(r, Poll::Ready(Ok(5))), "{r:?}");
            let mut got = [0u8; 5];
            c.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello");
        }
        // A peer that never reads: its socket fills up and then takes
        // nothing (`Pending`), while the other socket still gets its bytes.
        let big = vec![7u8; 1 << 20];
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
            sender.send_all(&dead, b"x", &mut out);
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
        check(Sender::plain());
    }

    #[test]
    fn batched_sends_report_the_same_outcomes() {
        let sender = Sender::new(true);
        if !sender.batched() {
            // Still a real test: of the fallback that such a host uses.
            eprintln!("io_uring is unavailable here: the plain sends were tested");
        }
        check(sender);
    }

    #[test]
    fn more_sockets_than_ring_entries_go_in_several_submissions() {
        let mut sender = Sender::new(true);
        let n = RING_ENTRIES as usize + 3;
        let mut socks = pairs(n);
        let fds: Vec<RawFd> = socks.iter().map(|(s, _)| s.as_raw_fd()).collect();
        let mut out = Vec::new();
        sender.send_all(&fds, b"ab", &mut out);
        assert_eq!(out.len(), n);
        assert!(out.iter().all(|r| matches!(r, Poll::Ready(Ok(2)))));
        let mut got = [0u8; 2];
        socks[n - 1].1.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ab");
    }
}
