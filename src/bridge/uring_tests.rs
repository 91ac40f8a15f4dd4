//! Tests of `uring.rs`: outcomes of batched and plain sends, and the
//! lifetime of the buffer of sends in flight on every path.

use super::*;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

fn fds(socks: &[(TcpStream, TcpStream)]) -> Vec<BorrowedFd<'_>> {
    socks.iter().map(|(s, _)| s.as_fd()).collect()
}

/// Bytes whose storage counts its own release.
struct Counted(Arc<AtomicUsize>, Vec<u8>);

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.1
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counted(bytes: &[u8]) -> (Bytes, Arc<AtomicUsize>) {
    let freed = Arc::new(AtomicUsize::new(0));
    let buf = Bytes::from_owner(Counted(freed.clone(), bytes.to_vec()));
    (buf, freed)
}

fn check(sender: &mut Sender) {
    let mut socks = pairs(3);
    let mut out = Vec::new();
    sender.send_all(&fds(&socks), &Bytes::from_static(b"hello"), &mut out);
    assert_eq!(out.len(), 3);
    for (r, (_, c)) in out.iter().zip(&mut socks) {
        assert!(matches!(r, SendOutcome::Sent(5)), "{r:?}");
        let mut got = [0u8; 5];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }
    // A peer that never reads: its socket fills up and then takes
    // nothing (`WouldBlock`), while the other socket still gets its bytes.
    let big = Bytes::from(vec![7u8; 1 << 20]);
    let stuck = [socks[0].0.as_fd()];
    let mut outcome = SendOutcome::Sent(0);
    for _ in 0..256 {
        out.clear();
        sender.send_all(&stuck, &big, &mut out);
        outcome = out.pop().unwrap();
        if outcome.would_block() {
            break;
        }
    }
    assert!(
        outcome.would_block(),
        "a full socket must not block: {outcome:?}"
    );
    // A closed peer: the send fails (reset or broken pipe), no signal.
    let (server, client) = socks.remove(1);
    drop(client);
    fails_once_closed(sender, &server);
}

/// Sends to `server`, whose peer is gone, until a send fails (the peer's
/// reset comes back after the first; the bound only stops a hang).
fn fails_once_closed(sender: &mut Sender, server: &TcpStream) {
    let dead = [server.as_fd()];
    let mut out = Vec::new();
    for _ in 0..500 {
        out.clear();
        sender.send_all(&dead, &Bytes::from_static(b"x"), &mut out);
        assert_eq!(out.len(), 1);
        if matches!(out[0], SendOutcome::Failed(_)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("sends to a closed peer must fail: {:?}", out[0]);
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

/// Fills `sock`'s send buffer (its peer does not read); the bytes sent.
fn fill(sock: &TcpStream) -> usize {
    let big = vec![7u8; 1 << 16];
    let mut total = 0;
    loop {
        match send_now(sock.as_fd(), &big) {
            SendOutcome::Sent(n) => total += n,
            SendOutcome::WouldBlock => return total,
            SendOutcome::Failed(e) => panic!("filling a socket: {e}"),
        }
    }
}

#[test]
fn a_send_the_kernel_parks_is_cancelled_not_waited_for() {
    // Without MSG_DONTWAIT the kernel parks a send to a full socket
    // until it drains: what `submit` must never wait for.
    let Ok(mut ring) = ring_with_send(4) else {
        return eprintln!("io_uring is unavailable here: nothing to park");
    };
    let socks = pairs(1);
    let (buf, freed) = counted(&[7u8; 1 << 16]);
    let mut out = vec![SendOutcome::WouldBlock];
    // Room may open between `fill` and the send: then it is done inline
    // and the ring comes back; fill again.
    let e = loop {
        fill(&socks[0].0);
        out[0] = SendOutcome::WouldBlock;
        match submit(ring, &fds(&socks), &buf, &mut out, libc::MSG_NOSIGNAL) {
            Ok(back) => ring = back,
            Err(e) => break e,
        }
    };
    assert!(e.to_string().contains("parked"), "{e}");
    assert!(
        out[0].would_block(),
        "a cancelled send sent nothing: {:?}",
        out[0]
    );
    // Its completion was reaped: the buffer is released with the
    // caller's last clone, not leaked.
    drop(buf);
    assert_eq!(freed.load(Ordering::SeqCst), 1);
}

/// Fills `sock` and pushes a send of `sends`' buffer to it until one is
/// parked (no completion during the submission); the bytes sent before.
fn park(ring: &mut IoUring, sends: &mut InFlight, sock: &TcpStream) -> usize {
    let mut sent = 0;
    loop {
        sent += fill(sock);
        let mut sq = ring.submission();
        sends
            .push_send(&mut sq, sock.as_fd(), libc::MSG_NOSIGNAL, 0)
            .unwrap();
        drop(sq);
        ring.submit().unwrap();
        let Some(cqe) = ring.completion().next() else {
            return sent;
        };
        // Done inline after all: room had opened.
        assert_eq!(sends.reaped(&cqe), Some(0));
        sent += usize::try_from(cqe.result()).expect("a send to a live socket");
    }
}

#[test]
fn a_parked_send_keeps_its_buffer_until_its_completion_is_reaped() {
    let Ok(mut ring) = ring_with_send(4) else {
        return eprintln!("io_uring is unavailable here: nothing to park");
    };
    let mut socks = pairs(1);
    let (buf, freed) = counted(b"parked");
    let mut sends = InFlight::new(&buf);
    let before = park(&mut ring, &mut sends, &socks[0].0);
    drop(buf);
    assert_eq!(sends.pending(), 1);
    let freed_now = || freed.load(Ordering::SeqCst);
    assert_eq!(freed_now(), 0, "the kernel may still read it");
    // The peer reads everything: the parked send completes.
    let mut got = vec![0u8; before + 6];
    socks[0].1.read_exact(&mut got).unwrap();
    assert_eq!(&got[before..], b"parked");
    ring.submit_and_wait(1).unwrap();
    let cqe = ring.completion().next().expect("the send's completion");
    assert_eq!(cqe.result(), 6);
    assert_eq!(freed_now(), 0, "still held by the guard");
    assert_eq!(sends.reaped(&cqe), Some(0));
    assert_eq!(sends.reaped(&cqe), None, "a send is reaped once");
    drop(sends);
    assert_eq!(freed_now(), 1, "reaped: released");
    drop(socks.pop());
}

#[test]
fn a_guard_dropped_with_a_send_in_flight_never_frees_its_buffer() {
    let Ok(mut ring) = ring_with_send(4) else {
        return eprintln!("io_uring is unavailable here: nothing to park");
    };
    let socks = pairs(1);
    let (buf, freed) = counted(b"parked");
    let leaked = InFlight::leaked();
    let mut sends = InFlight::new(&buf);
    park(&mut ring, &mut sends, &socks[0].0);
    // Given up with the send parked: the ring is closed, which cancels
    // the send when the kernel gets to it.
    drop((sends, buf, ring));
    assert_eq!(freed.load(Ordering::SeqCst), 0, "leaked, never freed early");
    assert!(InFlight::leaked() > leaked);
}

#[test]
fn a_full_submission_queue_gives_the_ring_up_and_keeps_the_buffer() {
    // A ring of 2 entries asked for 3 sends at once: the third does not
    // fit, and the sender returns early, before submitting anything.
    let Ok(ring) = ring_with_send(2) else {
        return eprintln!("io_uring is unavailable here: no ring to fill");
    };
    let mut sender = Sender {
        ring: Some(ring),
        batch: 3,
    };
    let mut socks = pairs(3);
    let (buf, freed) = counted(b"hello");
    let leaked = InFlight::leaked();
    let mut out = Vec::new();
    sender.send_all(&fds(&socks), &buf, &mut out);
    assert!(!sender.batched(), "the ring was given up");
    // Nothing was submitted: each socket got the bytes once, the plain way.
    assert!(
        out.iter().all(|r| matches!(r, SendOutcome::Sent(5))),
        "{out:?}"
    );
    sender.send_all(&fds(&socks), &Bytes::from_static(b"!"), &mut out);
    for (_, c) in &mut socks {
        let mut got = [0u8; 6];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello!", "sent once, then the next send");
    }
    // Two sends were pushed and never reaped: the guard keeps the buffer.
    drop((buf, sender));
    assert_eq!(freed.load(Ordering::SeqCst), 0, "never freed early");
    assert!(InFlight::leaked() > leaked);
}

#[test]
fn more_sockets_than_ring_entries_go_in_several_submissions() {
    let mut sender = Sender::new(true);
    let n = RING_ENTRIES as usize + 3;
    let mut socks = pairs(n);
    let mut out = Vec::new();
    sender.send_all(&fds(&socks), &Bytes::from_static(b"ab"), &mut out);
    assert_eq!(out.len(), n);
    assert!(out.iter().all(|r| matches!(r, SendOutcome::Sent(2))));
    let mut got = [0u8; 2];
    socks[n - 1].1.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ab");
}
