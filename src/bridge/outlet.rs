//! A socket's write side, shared by the router and the socket's own task.
//!
//! The router writes a frame straight into the socket when nothing is queued
//! for it (the common case: no task wake-up between `NOTIFY` and the write).
//! Whatever the kernel does not take at once is queued, bounded, and flushed
//! by the socket's task when the socket becomes writable again. Writes never
//! block the caller: a write that cannot complete is queued, and a queue
//! that would overflow marks the socket slow instead.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::close_code::is_close_frame;
use super::send::{SendOutcome, send_now};

/// Pings and pongs allowed beyond the queue bound.
const CONTROL_HEADROOM: usize = 8;

/// Where an outlet writes: the raw byte stream of the socket. It must not
/// buffer (a successful write means the bytes are with the kernel).
pub enum Sink {
    /// A TCP socket, written by the router with one `send(2)`.
    Tcp(TcpSink),
    /// Any other byte stream (in-memory pipes in tests).
    Stream(Pin<Box<dyn AsyncWrite + Send>>),
}

/// A TCP socket's write half, with its descriptor kept beside it: the
/// router's direct write is a plain `send(2)`, without tokio's readiness
/// bookkeeping or a pointer chase to the descriptor through the stream
/// (each a cache miss per socket at 1,000 sockets). A `WouldBlock` seen
/// here leaves tokio's cached readiness set; the socket task's next write
/// finds it out again, clears it and waits for the edge, so no wake-up is
/// lost.
pub struct TcpSink {
    /// The descriptor of `half`, open as long as `half` is.
    fd: RawFd,
    half: OwnedWriteHalf,
}

impl AsFd for TcpSink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `fd` is `half`'s descriptor, which `half` keeps open
        // while `self` (and so the borrow) lives.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Sink {
    pub fn tcp(half: OwnedWriteHalf) -> Sink {
        let fd = half.as_ref().as_raw_fd();
        Sink::Tcp(TcpSink { fd, half })
    }

    pub fn stream(w: impl AsyncWrite + Send + 'static) -> Sink {
        Sink::Stream(Box::pin(w))
    }

    /// Writes what the kernel takes now, never waiting.
    fn write_now(&mut self, buf: &[u8]) -> SendOutcome {
        match self {
            Sink::Tcp(t) => send_now(t.as_fd(), buf),
            // The no-op waker is fine because on `WouldBlock` the socket's
            // task is woken and polls with its own.
            Sink::Stream(s) => SendOutcome::from_poll(
                s.as_mut()
                    .poll_write(&mut Context::from_waker(Waker::noop()), buf),
            ),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Sink::Tcp(t) => Pin::new(&mut t.half).poll_write(cx, buf),
            Sink::Stream(s) => s.as_mut().poll_write(cx, buf),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Sink::Tcp(t) => Pin::new(&mut t.half).poll_flush(cx),
            Sink::Stream(s) => s.as_mut().poll_flush(cx),
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Sink::Tcp(t) => Pin::new(&mut t.half).poll_shutdown(cx),
            Sink::Stream(s) => s.as_mut().poll_shutdown(cx),
        }
    }
}

/// Bytes to write: one or more complete WebSocket frames.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub bytes: Bytes,
    /// How many frames it holds, counted against the queue bound.
    pub frames: usize,
    /// The `ts` of each event it carries, for the delivery-latency
    /// histogram (empty for frames that are not events).
    pub stamps: Arc<[DateTime<Utc>]>,
}

impl Chunk {
    /// A chunk that carries no event (a resync or control frame).
    pub fn control(bytes: Bytes) -> Chunk {
        Chunk {
            bytes,
            frames: 1,
            stamps: Arc::from([]),
        }
    }
}

/// Envelope `ts` → the event's frame handed to the kernel.
pub(super) fn delivery_histogram() -> metrics::Histogram {
    metrics::histogram!("ragctl_bridge_delivery_seconds")
}

/// Records, now, the delivery latency of the events stamped `stamps`.
pub(super) fn record_latency(latency: &metrics::Histogram, stamps: &[DateTime<Utc>]) {
    if stamps.is_empty() {
        return;
    }
    let now = Utc::now();
    for ts in stamps {
        let lag = (now - *ts).num_microseconds().unwrap_or(0).max(0);
        latency.record(lag as f64 / 1e6);
    }
}

/// What became of a pushed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Handed to the kernel.
    Written,
    /// Queued behind earlier bytes; the socket's task writes it.
    Queued,
    /// The queue is full: the socket is now marked slow and will be closed.
    Slow,
    /// The socket is closing or broken; dropped.
    Closed,
}

struct State {
    sink: Sink,
    queue: VecDeque<Chunk>,
    /// Bytes of `queue.front()` already written.
    offset: usize,
    /// Frames in `queue`.
    frames: usize,
    /// No more events: a close frame is on its way.
    closing: bool,
    /// A write failed: the connection is gone.
    broken: bool,
    /// The close frame is queued or written: it has a slot of its own.
    close_sent: bool,
    /// `Outlet::slow` was cancelled, read here under the lock we hold
    /// anyway (the token's own check takes a second lock per frame).
    slow: bool,
}

pub struct Outlet {
    state: Mutex<State>,
    /// Wakes the socket's task when bytes are left to flush.
    pub wake: Notify,
    /// Cancelled when the queue overflowed.
    pub slow: CancellationToken,
    limit: usize,
    latency: metrics::Histogram,
}

impl Outlet {
    /// `limit` bounds the frames queued behind a socket that is not keeping up.
    pub fn new(sink: Sink, limit: usize) -> Outlet {
        Outlet {
            state: Mutex::new(State {
                sink,
                queue: VecDeque::new(),
                offset: 0,
                frames: 0,
                closing: false,
                broken: false,
                close_sent: false,
                slow: false,
            }),
            wake: Notify::new(),
            slow: CancellationToken::new(),
            limit: limit.max(1),
            latency: delivery_histogram(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("outlet lock")
    }

    /// An event (or resync) frame. Refused once the socket is closing.
    /// Copied only if it has to wait in the queue. A chunk written at once
    /// is not timed here: the hub times an event once for all the sockets
    /// that took it at once (`record_latency`).
    pub fn push(&self, chunk: &Chunk) -> Pushed {
        match self.begin(chunk) {
            Begun::Done(p) => p,
            Begun::Direct(d) => {
                let sent = send_now(d.fd(), &chunk.bytes);
                d.finish(chunk, sent)
            }
        }
    }

    /// A push whose write may be batched with other sockets' (`Direct`):
    /// the outlet stays locked until `Direct::finish` takes the outcome.
    /// Anything that needs no write of the caller's is done here.
    pub fn begin(&self, chunk: &Chunk) -> Begun<'_> {
        let mut st = self.lock();
        // A slow socket is being closed: it takes no more events.
        if st.closing || st.broken || st.slow {
            return Begun::Done(Pushed::Closed);
        }
        match &st.sink {
            Sink::Tcp(_) if st.queue.is_empty() => Begun::Direct(Direct { outlet: self, st }),
            _ => Begun::Done(self.enqueue(&mut st, chunk, self.limit)),
        }
    }

    /// A frame written on behalf of the WebSocket protocol (pong, ping,
    /// close): accepted while closing, so that the close frame goes out
    /// after what was already queued.
    pub fn push_control(&self, bytes: Bytes) -> Pushed {
        let mut st = self.lock();
        if st.broken {
            return Pushed::Closed;
        }
        // One close frame always fits, whatever fills the queue: room is
        // kept for it beyond the bound (and the headroom of pings and
        // pongs, which a client flooding pings without reading can fill).
        let limit = if is_close_frame(&bytes) && !st.close_sent {
            st.close_sent = true;
            usize::MAX
        } else {
            self.limit + CONTROL_HEADROOM
        };
        self.enqueue(&mut st, &Chunk::control(bytes), limit)
    }

    fn enqueue(&self, st: &mut State, chunk: &Chunk, limit: usize) -> Pushed {
        if !st.queue.is_empty() {
            if st.frames + chunk.frames > limit {
                st.slow = true;
                self.slow.cancel();
                return Pushed::Slow;
            }
            st.frames += chunk.frames;
            st.queue.push_back(chunk.clone());
            return Pushed::Queued;
        }
        // Nothing queued: write now.
        let result = st.sink.write_now(&chunk.bytes);
        self.wrote(st, chunk, result)
    }

    /// Takes the outcome of writing `chunk` straight to the socket: the
    /// rest is queued for the socket's task, a failure breaks the outlet.
    fn wrote(&self, st: &mut State, chunk: &Chunk, result: SendOutcome) -> Pushed {
        let written = match result {
            SendOutcome::Sent(0) => Err(()),
            SendOutcome::Sent(n) => Ok(n),
            SendOutcome::WouldBlock => Ok(0),
            SendOutcome::Failed(_) => Err(()),
        };
        match written {
            Ok(n) if n == chunk.bytes.len() => Pushed::Written,
            Ok(n) => {
                st.offset = n;
                st.frames += chunk.frames;
                st.queue.push_back(chunk.clone());
                self.wake.notify_one();
                Pushed::Queued
            }
            Err(()) => {
                st.broken = true;
                self.wake.notify_one();
                Pushed::Closed
            }
        }
    }

    /// Writes what is queued until the queue is empty. Called by the
    /// socket's task after `wake`; the caller bounds it with a timeout.
    pub async fn flush(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        loop {
            if st.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let Some(front) = st.queue.front().cloned() else {
                return st.sink.poll_flush(cx);
            };
            let offset = st.offset;
            match st.sink.poll_write(cx, &front.bytes[offset..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => {
                    st.offset += n;
                    if st.offset == front.bytes.len() {
                        st.queue.pop_front();
                        st.offset = 0;
                        st.frames -= front.frames;
                        record_latency(&self.latency, &front.stamps);
                    }
                }
                Poll::Ready(Ok(_)) => {
                    st.broken = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Err(e)) => {
                    st.broken = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    /// Stops taking events. With `discard`, also drops every queued chunk
    /// except a partly written one (cutting a frame would corrupt the
    /// stream): for a slow consumer, whose close frame should not wait
    /// behind what it failed to read.
    pub fn close(&self, discard: bool) {
        let mut st = self.lock();
        st.closing = true;
        if discard {
            let keep = usize::from(st.offset > 0);
            while st.queue.len() > keep {
                if let Some(c) = st.queue.pop_back() {
                    st.frames -= c.frames;
                }
            }
        }
    }

    /// Half-closes the socket (TCP FIN) once the queue is written.
    pub async fn shutdown(&self) -> io::Result<()> {
        self.flush().await?;
        std::future::poll_fn(|cx| self.lock().sink.poll_shutdown(cx)).await
    }

    /// Frames waiting in the queue.
    pub fn queued(&self) -> usize {
        self.lock().frames
    }
}

/// See [`Outlet::begin`].
pub enum Begun<'a> {
    Done(Pushed),
    /// The caller writes the chunk to `Direct::fd`, then calls `finish`.
    Direct(Direct<'a>),
}

/// A locked outlet whose socket (a `TcpSink`) takes the chunk straight away.
pub struct Direct<'a> {
    outlet: &'a Outlet,
    st: std::sync::MutexGuard<'a, State>,
}

impl Direct<'_> {
    /// The socket to write to, borrowed from the locked outlet: it stays
    /// open, and is no other file, while the borrow lives.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.st.sink {
            Sink::Tcp(t) => t.as_fd(),
            Sink::Stream(_) => unreachable!("`Outlet::begin` makes a Direct of a TCP sink only"),
        }
    }

    /// Takes the outcome of the caller's write of `chunk` to `fd`.
    pub fn finish(mut self, chunk: &Chunk, result: SendOutcome) -> Pushed {
        self.outlet.wrote(&mut self.st, chunk, result)
    }
}

#[cfg(test)]
#[path = "outlet_tests.rs"]
mod tests;
