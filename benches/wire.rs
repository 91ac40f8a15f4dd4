//! Micro-benchmarks of the bridge's per-event CPU work, std-only timing:
//! `events::decode` of one NOTIFY payload, `events::scan` (all an instance
//! with no socket for the user does with it), and `Hub::deliver` fanning
//! events out to their users' sockets (into writers that discard the bytes,
//! so the socket write itself is not counted), one event per call and in
//! router-sized batches.
//!
//! `cargo bench --bench wire` (release profile). Prints ns per operation,
//! the best of several rounds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::Utc;
use ragctl::bridge::{Hub, ROUTE_BATCH, Sink};
use ragctl::events::{self, Envelope, EventType, WireMessage};
use serde_json::json;
use uuid::Uuid;

fn envelope(user: Uuid, seq: usize) -> Envelope {
    Envelope::new(
        user,
        EventType::DocumentStatusUpdated,
        json!({
            "document_id": Uuid::new_v4(),
            "status": "parsed",
            "error_message": format!("bench:0:{seq}"),
            "updated_at": Utc::now(),
        }),
        "ragctl-bench",
    )
}

/// `events::decode` as it was before the one-pass scan, for an envelope
/// (fragments left out): the baseline of the decode rows.
fn tree_decode(payload: &str) -> Option<Envelope> {
    use serde_json::Value;
    let value: Value = serde_json::from_str(payload).ok()?;
    let obj = value.as_object()?;
    (obj.get("v").and_then(Value::as_u64) == Some(1)).then_some(())?;
    if obj.contains_key("frag") {
        return None;
    }
    obj.get("user_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .and_then(EventType::parse)?;
    events::validate_payload(kind, obj.get("payload")?).ok()?;
    serde_json::from_value(value).ok()
}

/// Runs `f` (which does `ops` operations) for several rounds of at least
/// `min` each and returns the best ns per operation.
fn time(rounds: usize, min: Duration, mut f: impl FnMut() -> usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut ops = 0;
        while start.elapsed() < min {
            ops += f();
        }
        best = best.min(start.elapsed().as_nanos() as f64 / ops as f64);
    }
    best
}

fn main() {
    // Ignore the `--bench` flag cargo passes.
    let rounds = 5;
    let min = Duration::from_millis(300);
    println!("{:<58} {:>10}", "operation", "ns/op");

    let payload = events::encode_notifications(&envelope(Uuid::new_v4(), 1))
        .unwrap()
        .remove(0);
    let ns = time(rounds, min, || {
        for _ in 0..1000 {
            match events::decode(black_box(&payload)) {
                Ok(WireMessage::Envelope(env)) => {
                    black_box(env);
                }
                _ => unreachable!(),
            }
        }
        1000
    });
    println!(
        "{:<58} {:>10.0}",
        format!("events::decode ({} B payload)", payload.len()),
        ns
    );

    // The decode before `events::scan` (a whole `Value` tree, then the
    // envelope from it), kept here as the reference for the row below.
    let ns = time(rounds, min, || {
        for _ in 0..1000 {
            black_box(tree_decode(black_box(&payload)).unwrap());
        }
        1000
    });
    println!(
        "{:<58} {:>10.0}",
        "  before: Value tree decode (the previous events::decode)", ns
    );

    // What an instance with no socket for the user spends: the check only.
    let ns = time(rounds, min, || {
        for _ in 0..1000 {
            match events::scan(black_box(&payload)) {
                Ok(s @ events::Scanned::Envelope { .. }) => {
                    black_box(s);
                }
                _ => unreachable!(),
            }
        }
        1000
    });
    println!(
        "{:<58} {:>10.0}",
        "events::scan (the drop path: no socket for the user)", ns
    );

    let env = envelope(Uuid::new_v4(), 1);
    let ns = time(rounds, min, || {
        for _ in 0..1000 {
            black_box(black_box(&env).frame_text());
        }
        1000
    });
    println!("{:<58} {:>10.0}", "Envelope::frame_text", ns);

    for (sockets, users) in [(1usize, 1usize), (1000, 100), (1000, 10), (10_000, 100)] {
        let per_user = sockets / users;
        let hub = Hub::new(256);
        let ids: Vec<Uuid> = (0..users).map(|_| Uuid::new_v4()).collect();
        let _guards: Vec<_> = ids
            .iter()
            .flat_map(|&u| (0..per_user).map(move |_| u))
            .map(|u| hub.register(u, false, Sink::stream(tokio::io::sink())))
            .collect();
        let mut events: Vec<Envelope> = (0..ROUTE_BATCH)
            .map(|i| envelope(ids[i % users], i))
            .collect();
        // Fresh envelope ids each time: the hub drops ids it has seen recently.
        let mut counter = 0u64;
        let mut fresh = |events: &mut Vec<Envelope>| {
            for env in events.iter_mut() {
                counter += 1;
                env.id = Uuid::from_u64_pair(counter, 0);
            }
        };
        let one = time(rounds, min, || {
            fresh(&mut events);
            for env in &events {
                hub.deliver(std::slice::from_ref(env));
            }
            events.len()
        });
        let batched = time(rounds, min, || {
            fresh(&mut events);
            for batch in events.chunks(ROUTE_BATCH) {
                hub.deliver(batch);
            }
            events.len()
        });
        let whole = format!("batches of {ROUTE_BATCH}");
        for (how, ns) in [("1 per call", one), (whole.as_str(), batched)] {
            println!(
                "{:<58} {:>10.0}",
                format!("Hub::deliver, {sockets} sockets / {users} users, {how}"),
                ns
            );
        }
    }
}
