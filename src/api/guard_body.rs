//! A response body that holds a guard (a request's place in a count) until
//! the body has been written or dropped. Unlike `BodyExt::map_frame`, it
//! passes on the size hint, so that the answer keeps its `Content-Length`.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

pub struct GuardBody<G> {
    inner: Body,
    _guard: G,
}

/// `response`, its body holding `guard`.
pub fn hold<G: Send + Unpin + 'static>(
    response: axum::response::Response,
    guard: G,
) -> axum::response::Response {
    response.map(|inner| {
        Body::new(GuardBody {
            inner,
            _guard: guard,
        })
    })
}

impl<G: Unpin> hyper::body::Body for GuardBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
