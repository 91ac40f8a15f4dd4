//! The test's side of the NATS bus: a peer playing the relay (envelopes
//! on `ragctl.u.<user>`, messages on `ragctl.relay`), and waits on what an
//! instance on the NATS bus reports.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ragctl::events::{Envelope, encode_notifications};
use serde_json::{Value, json};
use uuid::Uuid;

use super::nats::NatsServer;
use super::{Api, PATIENCE, TestDb};

/// What the relay would send, sent by the test.
pub struct Relay {
    pub client: async_nats::Client,
    epoch: Uuid,
    seq: u64,
}

impl Relay {
    pub async fn connect(nats: &NatsServer) -> Relay {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(nats.url())
            .await
            .expect("connect to nats");
        Relay {
            client,
            epoch: Uuid::new_v4(),
            seq: 0,
        }
    }

    /// An envelope on its user's subject, as the NOTIFY payload.
    pub async fn publish(&self, env: &Envelope) {
        let [payload] = &encode_notifications(env).unwrap()[..] else {
            panic!("a small envelope is one notification");
        };
        let subject = format!("ragctl.u.{}", env.user_id);
        self.client
            .publish(subject, payload.clone().into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
    }

    pub async fn send(&mut self, mut msg: Value) {
        self.seq += 1;
        msg["epoch"] = json!(self.epoch);
        msg["seq"] = json!(self.seq);
        let body = msg.to_string().into_bytes();
        // Best effort while the server is down: the subscriber then heals.
        let _ = self.client.publish("ragctl.relay", body.into()).await;
        let _ = self.client.flush().await;
    }

    pub async fn heartbeat(&mut self, horizon: DateTime<Utc>) {
        self.send(json!({"kind": "heartbeat", "horizon": horizon}))
            .await;
    }

    /// A new leadership term: the next heartbeat carries a new epoch.
    pub fn failover(&mut self) {
        self.epoch = Uuid::new_v4();
    }
}

/// The database's clock: a horizon no later than any commit after it.
pub async fn db_now(db: &TestDb) -> DateTime<Utc> {
    db.query("SELECT clock_timestamp()").await[0].get(0)
}

/// Waits until the metric line starting with `prefix` satisfies `ok`.
pub async fn wait_metric(api: &Api, prefix: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = api.metric(prefix).await;
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix} stuck at {v}; log:\n{}",
            api.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `beats` heartbeats were received and any heal the first
/// one caused (no relay heard since the start) is over, so that a later
/// change is healed only by what the test does next.
pub async fn settle(api: &Api, beats: f64) {
    wait_metric(api, "ragctl_bus_relay_heartbeats_total ", |v| v >= beats).await;
    let gaps = api
        .metric("ragctl_bus_gaps_total{cause=\"relay_silent\"} ")
        .await;
    let heals = "ragctl_bridge_heals_by_cause_total{cause=\"relay_silent\"} ";
    wait_metric(api, heals, |v| v >= gaps).await;
}

/// Waits until `api`'s relay leads (its `/readyz` says so).
pub async fn wait_leader(api: &Api) {
    let deadline = Instant::now() + PATIENCE;
    while api.readyz().await.1["relay"]["role"] != "leader" {
        assert!(Instant::now() < deadline, "{}", api.proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/readyz` answers 200 with the bus connected or not.
pub async fn wait_bus_connected(api: &Api, connected: bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (code, body) = api.readyz().await;
        if code == 200 && body["realtime"]["bus_connected"] == connected {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never said bus_connected={connected}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
