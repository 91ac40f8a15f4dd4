//! The hub's direct writes over real TCP sockets, through io_uring and
//! without it: every frame arrives whole and in order, and what a socket
//! cannot take at once is queued and flushed after the part it took.

use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use uuid::Uuid;

use super::{ConnGuard, Hub, Sender, Sink};
use crate::events::{Envelope, EventType};

const EVENTS: usize = 200;

/// A client end, and the server end registered with `hub` (its read half
/// kept open). `rcvbuf` shrinks the client's receive buffer.
async fn connect(
    hub: &Hub,
    l: &TcpListener,
    user: Uuid,
    rcvbuf: Option<u32>,
) -> (TcpStream, ConnGuard, OwnedReadHalf) {
    let sock = TcpSocket::new_v4().unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    let (client, server) = tokio::join!(sock.connect(l.local_addr().unwrap()), l.accept());
    let server = server.unwrap().0;
    if rcvbuf.is_some() {
        // Else the kernel sizes the send buffer by the loopback MTU (a
        // megabyte or more) and takes every frame at once.
        small_send_buffer(&server);
    }
    let (read, write) = server.into_split();
    (
        client.unwrap(),
        hub.register(user, false, Sink::tcp(write)),
        read,
    )
}

fn small_send_buffer(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let n: libc::c_int = 4096;
    // SAFETY: a valid socket and a pointer to an int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&n as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// `EVENTS` events for `user`, each with a 1 KiB message so that a
/// reader that does not read soon fills its socket.
fn events(user: Uuid) -> Vec<Envelope> {
    (0..EVENTS)
        .map(|i| {
            let payload = json!({"document_id": Uuid::new_v4(), "status": "error",
                "error_message": format!("{i}:{}", "x".repeat(1024)), "updated_at": Utc::now()});
            Envelope::new(user, EventType::DocumentStatusUpdated, payload, "test")
        })
        .collect()
}

/// Reads `n` text frames from `client`.
async fn read_frames(client: TcpStream, n: usize) -> Vec<String> {
    let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let msg = ws
            .next()
            .await
            .expect("the stream ended")
            .expect("a valid frame");
        got.push(msg.into_text().expect("a text frame").to_string());
    }
    got
}

async fn check(mut sender: Sender) {
    let hub = Hub::new(EVENTS + 8);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let user = Uuid::new_v4();
    let (reader, _g1, _r1) = connect(&hub, &l, user, None).await;
    let (stuck, g2, _r2) = connect(&hub, &l, user, Some(2048)).await;
    let evs = events(user);
    let want: Vec<String> = evs.iter().map(|e| e.frame_text()).collect();
    let reading = tokio::spawn(read_frames(reader, EVENTS));
    for e in &evs {
        hub.deliver_with(std::slice::from_ref(e), &mut sender);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(reading.await.unwrap(), want, "the reading socket");
    // The socket that was not read took part of it and queued the rest.
    assert!(g2.outlet.queued() > 0, "a full socket queues");
    assert!(!g2.outlet.slow.is_cancelled());
    let (got, flushed) = tokio::join!(read_frames(stuck, EVENTS), g2.outlet.flush());
    flushed.unwrap();
    assert_eq!(got, want, "the socket that was not read, once flushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_whole_and_in_order_through_the_ring() {
    let sender = Sender::new(true);
    if !sender.batched() {
        eprintln!("io_uring is unavailable here: the plain sends were tested");
    }
    check(sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_whole_and_in_order_with_plain_sends() {
    check(Sender::plain()).await;
}
