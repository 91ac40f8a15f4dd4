//! Reaching `/ws`: the URL, the request (token, extra headers) and one
//! attempt at the handshake, with a refusal told apart from an outage.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};
use uuid::Uuid;

use super::args::WsClientArgs;
use super::error::WsClientError;
use crate::cli::text::error_detail;
use crate::config::ConnectOpts;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The `/ws` URL: an API base URL (`http://host:port`) gets `/ws` added; a
/// WebSocket URL may name the endpoint already (`ws://host:port/ws`).
fn ws_url(api_url: &str, resync: bool) -> Result<String, WsClientError> {
    let bad = |problem: String| WsClientError::BadUrl {
        url: api_url.to_string(),
        problem,
    };
    let (scheme, rest) = api_url
        .split_once("://")
        .ok_or_else(|| bad("expected http://host:port or ws://host:port/ws".into()))?;
    let websocket = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "ws" => true,
        "https" | "wss" => return Err(WsClientError::Tls(api_url.to_string())),
        other => return Err(bad(format!("unsupported scheme {other:?}"))),
    };
    let base = rest.trim_end_matches('/');
    if base.contains(['?', '#']) {
        return Err(bad("a query or fragment has no place here".into()));
    }
    let endpoint = if websocket && base.ends_with("/ws") {
        base.to_string()
    } else {
        format!("{base}/ws")
    };
    let query = if resync { "?resync=1" } else { "" };
    Ok(format!("ws://{endpoint}{query}"))
}

fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), WsClientError> {
    let bad = || WsClientError::BadHeader(raw.to_string());
    let (name, value) = raw.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

/// Whether the user's headers already carry a credential.
fn carries_token(headers: &[(HeaderName, HeaderValue)]) -> bool {
    headers.iter().any(|(name, value)| {
        *name == header::AUTHORIZATION
            || (*name == header::SEC_WEBSOCKET_PROTOCOL
                && value.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("bearer"))
                }))
    })
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How each attempt builds its request; the token is minted afresh every
/// time so that a reconnect after expiry (4001) gets a valid one.
pub struct Dialer {
    pub url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    token: Option<String>,
    mint: Option<(String, Uuid, Duration)>,
}

impl Dialer {
    /// The URL, the extra headers, and where the token comes from: given,
    /// carried by the headers, or minted for `--user`.
    pub fn new(connect: &ConnectOpts, args: &WsClientArgs) -> anyhow::Result<Dialer> {
        let headers = args
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let url = ws_url(&connect.api_url()?, args.resync)?;
        let mint = match (&args.token, carries_token(&headers), args.user) {
            (None, false, Some(user)) => Some((connect.jwt_secret()?, user, args.ttl)),
            (None, false, None) => {
                anyhow::bail!(
                    "pass --user to mint a token, or --token / -H 'Authorization: Bearer …'"
                )
            }
            _ => None,
        };
        Ok(Dialer {
            url,
            headers,
            token: args.token.clone(),
            mint,
        })
    }

    /// Whom the connection speaks for, for the log.
    pub fn who(&self) -> String {
        match &self.mint {
            Some((_, user, _)) => format!("user {user}"),
            None => "the given token".to_string(),
        }
    }

    fn request(&self, since: Option<&str>) -> anyhow::Result<Request> {
        let url = match since {
            Some(c) => {
                let sep = if self.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}since={}", self.url, query_escape(c))
            }
            None => self.url.clone(),
        };
        let mut req = url.into_client_request()?;
        let token = match (&self.token, &self.mint) {
            (Some(t), _) => Some(t.clone()),
            (None, Some((secret, user, ttl))) => Some(crate::auth::mint(secret, *user, *ttl)?),
            (None, None) => None,
        };
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                anyhow::anyhow!("the token contains characters not allowed in a header")
            })?;
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        for (name, value) in &self.headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        Ok(req)
    }

    /// Connects, resuming from `since` if given.
    pub async fn dial(&self, since: Option<&str>) -> anyhow::Result<Result<Socket, WsClientError>> {
        let req = self.request(since)?;
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await;
        let err = match attempt {
            Ok(Ok((socket, _))) => return Ok(Ok(socket)),
            Ok(Err(e)) => e,
            Err(_) => {
                return Ok(Err(WsClientError::Connect {
                    url: self.url.clone(),
                    detail: "timed out after 10s".into(),
                }));
            }
        };
        Ok(Err(match err {
            tungstenite::Error::Http(resp) => {
                let status = resp.status();
                let body = resp.body().as_deref().unwrap_or_default();
                WsClientError::Refused {
                    status: status.as_u16(),
                    detail: error_detail(status.canonical_reason().unwrap_or(""), body),
                }
            }
            other => WsClientError::Connect {
                url: self.url.clone(),
                detail: io_detail(&other),
            },
        }))
    }
}

pub fn io_detail(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

pub async fn close_politely(socket: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "client done".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:8080", false).unwrap(),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(
            ws_url("http://h/api/", true).unwrap(),
            "ws://h/api/ws?resync=1"
        );
        assert!(matches!(
            ws_url("https://h", false),
            Err(WsClientError::Tls(_))
        ));
    }

    #[test]
    fn a_websocket_url_may_name_the_endpoint() {
        let cases = [
            ("ws://127.0.0.1:8080/ws", false, "ws://127.0.0.1:8080/ws"),
            ("WS://h:1/ws/", true, "ws://h:1/ws?resync=1"),
            ("ws://h:1", false, "ws://h:1/ws"),
            ("ws://h/api", false, "ws://h/api/ws"),
            // An http base URL is the API's, whatever its path.
            ("http://h/ws", false, "ws://h/ws/ws"),
        ];
        for (url, resync, want) in cases {
            assert_eq!(ws_url(url, resync).unwrap(), want, "{url}");
        }
        let tls = ws_url("wss://h/ws", false);
        assert!(matches!(tls, Err(WsClientError::Tls(_))), "{tls:?}");
        for bad in ["ws://h/ws?token=x", "ftp://h", "h:8080"] {
            let r = ws_url(bad, false);
            assert!(
                matches!(r, Err(WsClientError::BadUrl { .. })),
                "{bad}: {r:?}"
            );
        }
    }
}
