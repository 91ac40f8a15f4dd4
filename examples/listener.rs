//! LISTENs on the event channel with the same reconnecting listener the API
//! uses (`ragctl::db::listener::spawn`) and prints every envelope it decodes,
//! or why a payload would be dropped.
//!
//! ```text
//! cargo run --example listener -- postgres://postgres@127.0.0.1/ragctl [CHANNEL]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use ragctl::db::listener::{self, ListenItem, ListenerConfig};
use ragctl::events::{DEFAULT_CHANNEL, Reassembler, WireMessage, decode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: listener DATABASE_URL [CHANNEL]");
        return ExitCode::from(2);
    };
    let channel = args.next().unwrap_or_else(|| DEFAULT_CHANNEL.to_string());

    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(1024);
    // A name of its own: `ragctl-listener` is what operators count as API
    // listeners in pg_stat_activity.
    let cfg = ListenerConfig::new(&url, "example-listener", &[channel.as_str()]);
    let (handle, task) = listener::spawn(cfg, tx, shutdown.clone());
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        });
    }
    eprintln!("listening on {channel}; Ctrl-C to stop");

    // Envelopes over the NOTIFY limit arrive as fragments; join them back.
    let mut fragments = Reassembler::default();
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = rx.recv() => match item { Some(i) => i, None => break },
        };
        let note = match item {
            ListenItem::Gap(gap) => {
                eprintln!(
                    "gap: {} (events committed since {} may have been missed)",
                    gap.reason.as_str(),
                    gap.since
                );
                continue;
            }
            ListenItem::Notification(n) => n,
        };
        let decoded = match decode(&note.payload) {
            Ok(WireMessage::Envelope(env)) => Ok(Some(*env)),
            Ok(WireMessage::Fragment(frag)) => fragments.push(frag, Instant::now()).0,
            Err(reason) => Err(reason),
        };
        match decoded {
            Ok(Some(env)) => println!(
                "{}",
                serde_json::to_string(&env).expect("an envelope serialises")
            ),
            Ok(None) => {} // a fragment of an envelope still incomplete
            Err(reason) => {
                let snippet: String = note.payload.chars().take(100).collect();
                println!("drop {reason}: {snippet}");
            }
        }
    }
    let status = handle.status.borrow().clone();
    eprintln!("stopped after {} reconnects", status.reconnects);
    let _ = task.await;
    ExitCode::SUCCESS
}
