//! Tests of `outlet.rs`: direct writes, the bounded queue, the close frame's
//! slot, a dead peer.

use super::*;
use crate::bridge::close_code::{CloseCode, close_frame};
use tokio::io::AsyncReadExt;

fn chunk(s: &str) -> Chunk {
    Chunk {
        bytes: Bytes::copy_from_slice(s.as_bytes()),
        frames: 1,
        stamps: Arc::from([Utc::now()]),
    }
}

#[tokio::test]
async fn writes_at_once_when_nothing_is_queued() {
    let (w, mut r) = tokio::io::duplex(64);
    let out = Outlet::new(Sink::stream(w), 4);
    assert_eq!(out.push(&chunk("hello")), Pushed::Written);
    assert_eq!(out.queued(), 0);
    let mut buf = [0u8; 5];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
}

#[tokio::test]
async fn queues_what_the_peer_cannot_take_and_flushes_in_order() {
    let (w, mut r) = tokio::io::duplex(4);
    let out = Arc::new(Outlet::new(Sink::stream(w), 8));
    assert_eq!(out.push(&chunk("abcdef")), Pushed::Queued); // 4 written, 2 left
    assert_eq!(out.push(&chunk("gh")), Pushed::Queued);
    assert_eq!(out.push_control(Bytes::from_static(b"ij")), Pushed::Queued);
    assert_eq!(out.queued(), 3);
    let flusher = {
        let out = out.clone();
        tokio::spawn(async move { out.flush().await })
    };
    let mut got = vec![0u8; 10];
    r.read_exact(&mut got).await.unwrap();
    flusher.await.unwrap().unwrap();
    assert_eq!(got, b"abcdefghij");
    assert_eq!(out.queued(), 0);
}

#[tokio::test]
async fn overflow_marks_slow_and_close_keeps_the_partial_frame() {
    let (w, mut r) = tokio::io::duplex(2);
    let out = Outlet::new(Sink::stream(w), 2);
    assert_eq!(out.push(&chunk("abcd")), Pushed::Queued); // "ab" written
    assert_eq!(out.push(&chunk("ef")), Pushed::Queued);
    assert_eq!(out.push(&chunk("gh")), Pushed::Slow);
    assert!(out.slow.is_cancelled());
    out.close(true);
    assert_eq!(
        out.push(&chunk("ij")),
        Pushed::Closed,
        "events refused while closing"
    );
    assert_eq!(out.push_control(Bytes::from_static(b"XY")), Pushed::Queued);
    let mut got = vec![0u8; 6];
    let read = async {
        r.read_exact(&mut got).await.unwrap();
    };
    let (_, flushed) = tokio::join!(read, out.flush());
    flushed.unwrap();
    // The rest of the partial frame, then the control frame; "ef" dropped.
    assert_eq!(got, b"abcdXY");
}

#[tokio::test]
async fn a_close_frame_fits_behind_a_queue_full_of_pongs() {
    let (w, mut r) = tokio::io::duplex(2);
    let out = Outlet::new(Sink::stream(w), 2);
    assert_eq!(out.push(&chunk("abcd")), Pushed::Queued); // "ab" written
    let mut pongs = 0;
    while out.push_control(Bytes::from_static(b"\x8a\x00")) == Pushed::Queued {
        pongs += 1;
    }
    assert_eq!(pongs, 2 + CONTROL_HEADROOM - 1);
    assert!(out.slow.is_cancelled());
    out.close(false);
    let close = Bytes::copy_from_slice(&close_frame(CloseCode::SlowConsumer));
    assert_eq!(out.push_control(close), Pushed::Queued);
    let mut got = vec![0u8; 4 + 2 * pongs + 4];
    let read = async {
        r.read_exact(&mut got).await.unwrap();
    };
    let (_, flushed) = tokio::join!(read, out.flush());
    flushed.unwrap();
    // The partial frame, the pongs, then the close (4008).
    assert_eq!(&got[..4], b"abcd");
    assert_eq!(&got[4 + 2 * pongs..], b"\x88\x02\x0f\xa8");
}

#[tokio::test]
async fn a_dead_peer_breaks_the_outlet() {
    let (w, r) = tokio::io::duplex(8);
    drop(r);
    let out = Outlet::new(Sink::stream(w), 2);
    assert_eq!(out.push(&chunk("abc")), Pushed::Closed);
    assert!(out.flush().await.is_err());
    assert_eq!(out.push(&chunk("abc")), Pushed::Closed);
}
