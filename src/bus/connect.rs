//! A NATS connection from the bus options: credentials from the URL
//! (`nats://TOKEN@host`, `nats://USER:PASSWORD@host`) or a creds file, TLS
//! when the URL is `tls://` (async-nats' default roots: the system's),
//! retried with backoff until the first connection, then reconnected
//! without end by async-nats. Its events (disconnected, connected, slow
//! consumer) are kept on a watch, so callers find the gaps they open.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use tokio::sync::watch;

use super::error::BusError;
use crate::backoff::Backoff;
use crate::config::{BusOpts, NatsOpts};

/// How often the client pings the server (async-nats' default is 60 s).
pub const PING: Duration = Duration::from_secs(10);

/// The connection's history, as counters: a reader that looks late still
/// sees that a disconnect happened, even if it was followed by a connect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    pub connects: u64,
    pub disconnects: u64,
    pub slow_consumers: u64,
}

/// A connected client and its event history.
#[derive(Clone)]
pub struct Link {
    pub client: Client,
    pub state: watch::Receiver<LinkState>,
}

/// Connects with the options of `--bus nats` (or the NATS flags alone);
/// retries until connected.
pub async fn connect(opts: &BusOpts, name: &str) -> Result<Client, BusError> {
    let nats = opts.nats_required("required to connect to NATS")?;
    Ok(connect_link(&nats, name).await?.client)
}

/// Connects, retrying with backoff until the first connection (each
/// failure logged); errors only on settings that cannot work.
pub async fn connect_link(opts: &NatsOpts, name: &str) -> Result<Link, BusError> {
    let addr: ServerAddr = opts.url.parse().map_err(|e| BusError::Connect {
        target: "(the --nats-url)".into(),
        detail: format!("{e}"),
    })?;
    let target = format!("{}:{}", addr.host(), addr.port());
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let (tx, rx) = watch::channel(LinkState::default());
        let options = options(opts, &addr, name, tx).await?;
        match options.connect(addr.clone()).await {
            Ok(client) => {
                tracing::info!(%target, name, "connected to NATS");
                return Ok(Link { client, state: rx });
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(%target, error = %e, retry_in = ?delay, "cannot connect to NATS; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn options(
    opts: &NatsOpts,
    addr: &ServerAddr,
    name: &str,
    state: watch::Sender<LinkState>,
) -> Result<ConnectOptions, BusError> {
    let mut o = ConnectOptions::new()
        .name(name)
        // Reconnect forever: every outage is a gap the subscribers heal.
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        // A dead connection is found after two unanswered pings.
        .ping_interval(PING)
        .event_callback(move |event| {
            record(&state, &event);
            std::future::ready(())
        });
    if let Some(user) = addr.username().filter(|u| !u.is_empty()) {
        o = match addr.password() {
            Some(pass) => o.user_and_password(user.to_string(), pass.to_string()),
            None => o.token(user.to_string()),
        };
    }
    if let Some(path) = &opts.creds {
        o = o
            .credentials_file(path)
            .await
            .map_err(|e| BusError::Creds {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
    }
    if addr.tls_required() {
        o = o.require_tls(true);
    }
    Ok(o)
}

/// Counts one connection event (and logs the ones that open a gap).
fn record(state: &watch::Sender<LinkState>, event: &Event) {
    let name = match event {
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::SlowConsumer(_) => "slow_consumer",
        Event::LameDuckMode => "lame_duck",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    };
    metrics::counter!("ragctl_nats_events_total", "event" => name).increment(1);
    state.send_modify(|s| match event {
        Event::Connected => {
            s.connected = true;
            s.connects += 1;
        }
        Event::Disconnected | Event::Closed => {
            if s.connected {
                s.disconnects += 1;
            }
            s.connected = false;
        }
        Event::SlowConsumer(_) => s.slow_consumers += 1,
        _ => {}
    });
    if !matches!(event, Event::Connected) {
        tracing::warn!(event = %event, "NATS connection event");
    }
}
