//! A NATS connection from the bus options: credentials from the URL
//! (`nats://TOKEN@host`, `nats://USER:PASSWORD@host`) or a creds file, TLS
//! when the URL is `tls://` (async-nats' default roots: the system's),
//! retried with backoff until the first connection, then reconnected
//! without end by async-nats. Its events (disconnected, connected, slow
//! consumer) are kept on a watch, so callers find the gaps they open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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

/// A caller's own view of the connection's events (after they are counted
/// on the watch): the future is awaited by the client's event task, so a
/// hook that waits on a bounded queue loses none.
pub type EventHook =
    Arc<dyn Fn(Event) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> + Send + Sync>;

/// What a caller adds to the common options.
#[derive(Clone, Default)]
pub struct Extra {
    /// Messages buffered per subscription before the client drops them as
    /// a slow consumer (async-nats' default if unset).
    pub subscription_capacity: Option<usize>,
    pub on_event: Option<EventHook>,
    /// Return a client at once and connect in the background (async-nats'
    /// `retry_on_initial_connect`): what is subscribed before the first
    /// connection is sent with it. Otherwise the call waits until connected.
    pub background: bool,
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
    connect_link_with(opts, name, Extra::default()).await
}

/// [`connect_link`] with a caller's [`Extra`].
pub async fn connect_link_with(
    opts: &NatsOpts,
    name: &str,
    extra: Extra,
) -> Result<Link, BusError> {
    let addr: ServerAddr = opts.url.parse().map_err(|e| BusError::Connect {
        target: "(the --nats-url)".into(),
        detail: format!("{e}"),
    })?;
    let target = format!("{}:{}", addr.host(), addr.port());
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let (tx, rx) = watch::channel(LinkState::default());
        let options = options(opts, &addr, name, tx, &extra).await?;
        match options.connect(addr.clone()).await {
            Ok(client) => {
                let what = match extra.background {
                    true => "connecting to NATS (in the background)",
                    false => "connected to NATS",
                };
                tracing::info!(%target, name, "{what}");
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
    extra: &Extra,
) -> Result<ConnectOptions, BusError> {
    let hook = extra.on_event.clone();
    let mut o = ConnectOptions::new()
        .name(name)
        // Reconnect forever: every outage is a gap the subscribers heal.
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        // A dead connection is found after two unanswered pings.
        .ping_interval(PING)
        .event_callback(move |event| {
            record(&state, &event);
            let then = hook.as_ref().map(|h| h(event));
            async move {
                if let Some(f) = then {
                    f.await;
                }
            }
        });
    if let Some(capacity) = extra.subscription_capacity {
        o = o.subscription_capacity(capacity);
    }
    if extra.background {
        o = o.retry_on_initial_connect();
    }
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
