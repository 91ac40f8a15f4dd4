//! Timeouts a slow client cannot defeat: a request body must keep up with
//! a minimum rate, and a response write that makes no progress for a while
//! ends the connection. Both also tell the limiter when a request is
//! waiting on its client ([`Progress`]), which makes it sheddable.
//!
//! Written here because nothing well-kept does it: tower-http's
//! `TimeoutBody` restarts its timer at every frame, so a body dribbled a
//! byte at a time never times out; hyper's HTTP/1 server has a timeout for
//! headers only, none for the body or for writes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::limiter::Progress;
use crate::api::error::ApiError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a request body must keep up with: it must have arrived by `grace`
/// after its first read plus its size over `min_bytes_per_sec`.
#[derive(Debug, Clone, Copy)]
pub struct BodyRate {
    pub grace: Duration,
    pub min_bytes_per_sec: u64,
}

impl Default for BodyRate {
    fn default() -> Self {
        BodyRate {
            grace: Duration::from_secs(10),
            min_bytes_per_sec: 4096,
        }
    }
}

impl BodyRate {
    fn deadline(&self, started: Instant, received: u64) -> Instant {
        let rate = self.min_bytes_per_sec.max(1) as f64;
        started + self.grace + Duration::from_secs_f64(received as f64 / rate)
    }

    /// The answer to a body that fell behind.
    fn refusal(&self) -> Response {
        let e = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body arrived slower than {} bytes/s after a {}-s allowance \
                 (RAG_MIN_BODY_BYTES_PER_SEC, RAG_BODY_TIMEOUT_SECS)",
                self.min_bytes_per_sec,
                self.grace.as_secs()
            ),
        );
        let mut response = e.into_response();
        let close = header::HeaderValue::from_static("close");
        response.headers_mut().insert(header::CONNECTION, close);
        response
    }
}

/// Set by a [`RateBody`] that fell behind: the request's answer is then
/// 408, whatever its handler made of the failed read.
#[derive(Clone)]
pub(super) struct TooSlow {
    flag: Arc<AtomicBool>,
    rate: BodyRate,
}

impl TooSlow {
    pub(super) fn answer(&self) -> Option<Response> {
        self.flag
            .load(Ordering::Relaxed)
            .then(|| self.rate.refusal())
    }
}

/// A request body held to a [`BodyRate`].
pub(super) struct RateBody<B> {
    inner: B,
    rate: BodyRate,
    started: Option<Instant>,
    received: u64,
    timer: Option<Pin<Box<Sleep>>>,
    progress: Arc<Progress>,
    too_slow: TooSlow,
    counter: metrics::Counter,
}

impl<B> RateBody<B> {
    pub(super) fn new(
        inner: B,
        rate: BodyRate,
        progress: Arc<Progress>,
        listener: &'static str,
    ) -> (RateBody<B>, TooSlow) {
        let too_slow = TooSlow {
            flag: Arc::default(),
            rate,
        };
        let body = RateBody {
            inner,
            rate,
            started: None,
            received: 0,
            timer: None,
            progress,
            too_slow: too_slow.clone(),
            counter: slow_counter(listener, "body_rate"),
        };
        (body, too_slow)
    }

    /// Whether the body is past its deadline (the timer is armed, and
    /// wakes the task, otherwise).
    fn behind(&mut self, cx: &mut Context<'_>) -> bool {
        // The clock starts at the first read: a handler that waits on the
        // database before reading does not use up the client's time.
        let started = *self.started.get_or_insert_with(Instant::now);
        let deadline = self.rate.deadline(started, self.received);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

fn slow_counter(listener: &'static str, reason: &'static str) -> metrics::Counter {
    metrics::counter!("ragctl_http_slow_clients_total", "listener" => listener, "reason" => reason)
}

#[derive(Debug, thiserror::Error)]
#[error("the request body fell behind the minimum rate")]
struct BodyTooSlow;

impl<B> Body for RateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.too_slow.flag.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
        }
        let started = *this.started.get_or_insert_with(Instant::now);
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                this.received += data.map_or(0, |d| d.len() as u64);
            }
            // A body dribbled below the minimum rate stays "waiting on its
            // client" (sheddable) even though bytes trickle in.
            let due = started.elapsed().as_secs_f64() * this.rate.min_bytes_per_sec as f64;
            if frame.is_none() || this.received as f64 >= due {
                this.progress.moved();
            }
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        this.progress.waiting();
        if !this.behind(cx) {
            return Poll::Pending;
        }
        this.too_slow.flag.store(true, Ordering::Relaxed);
        this.counter.increment(1);
        Poll::Ready(Some(Err(Box::new(BodyTooSlow))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for RateBody<B> {
    fn drop(&mut self) {
        // Whatever the client owes of it, the request no longer waits on it.
        self.progress.moved();
    }
}

/// A connection's socket whose writes must make progress: one that cannot
/// write anything for `timeout` (the client reads nothing) fails with
/// `TimedOut`, which ends the connection and frees its response.
/// `ws::socket` unwraps it after an upgrade (WebSockets have their own
/// slow-consumer rule).
pub struct WatchedIo<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    progress: Arc<Progress>,
    counter: metrics::Counter,
}

impl<T> WatchedIo<T> {
    pub(super) fn new(
        inner: T,
        timeout: Duration,
        progress: Arc<Progress>,
        listener: &'static str,
    ) -> WatchedIo<T> {
        WatchedIo {
            inner,
            timeout,
            stalled: None,
            progress,
            counter: slow_counter(listener, "write_stalled"),
        }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    /// Passes on a write's outcome; a write still blocked `timeout` after
    /// the first one that could not proceed becomes an error.
    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            if self.stalled.take().is_some() {
                self.progress.moved();
            }
            return r;
        }
        let timer = self.stalled.get_or_insert_with(|| {
            self.progress.waiting();
            Box::pin(tokio::time::sleep(self.timeout))
        });
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.counter.increment(1);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read none of the response for the write timeout",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
