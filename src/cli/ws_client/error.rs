//! Why `ragctl ws-client` could not connect or was misused (exit 2). A
//! leaf.

#[derive(Debug, thiserror::Error)]
pub enum WsClientError {
    #[error(
        "{0}: this build speaks plain ws:// only; use an http:// or ws:// URL (--url / RAG_API_URL), or put a TLS-terminating proxy in front"
    )]
    Tls(String),
    #[error("invalid API URL {url:?} (--url / RAG_API_URL): {problem}")]
    BadUrl { url: String, problem: String },
    #[error("-H {0:?} is not 'Name: value'")]
    BadHeader(String),
    #[error("--expect {text:?}: {problem}")]
    BadExpect { text: String, problem: String },
    #[error("WebSocket handshake refused: {status} {detail}")]
    Refused { status: u16, detail: String },
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
}

impl WsClientError {
    /// Worth another attempt with --reconnect: the server may come back;
    /// a refused token or a bad request will not get better.
    pub(super) fn retryable(&self) -> bool {
        match self {
            WsClientError::Connect { .. } => true,
            WsClientError::Refused { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}
