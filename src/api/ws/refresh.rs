//! What a client may send on `/ws`: `auth.refresh` (in-band token refresh)
//! moves the socket's expiry; every other data message is ignored.
//!
//! Both are bounded: a message is at most `max_client_frame` bytes
//! (tungstenite closes with 1009 past it), and a socket's messages are
//! looked at through a token bucket (`BURST`, refilled at `PER_SEC`); the
//! rest are dropped unread and counted, so a chatty client costs no JSON
//! parsing or signature checks.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::close::Ending;
use crate::auth::{AuthUser, Verifier};
use crate::bridge::CloseCode;

/// Messages a socket may send at once before the rate applies.
pub const BURST: f64 = 10.0;
/// Messages per second a socket may send in the long run.
pub const PER_SEC: f64 = 1.0;

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
}

/// A socket's inbound side: the rate bucket.
pub struct Inbox {
    tokens: f64,
    last: Instant,
}

/// What a client's message calls for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Ignore,
    /// The token was refreshed: the new user (same id, new `exp`) and the
    /// `auth.refreshed` frame to send.
    Refreshed(AuthUser, String),
    Close(Ending),
}

impl Inbox {
    pub fn new(now: Instant) -> Inbox {
        Inbox {
            tokens: BURST,
            last: now,
        }
    }

    /// Takes one message's worth from the bucket; false if it is empty.
    fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PER_SEC).min(BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Handles a data message (control frames are tungstenite's).
    pub fn on_message(
        &mut self,
        msg: &Message,
        now: Instant,
        verifier: &Verifier,
        user: &AuthUser,
    ) -> Action {
        let text = match msg {
            Message::Text(t) => t.as_str(),
            Message::Binary(_) => "",
            _ => return Action::Ignore,
        };
        if !self.admit(now) {
            metrics::counter!("ragctl_ws_client_messages_dropped_total", "reason" => "rate")
                .increment(1);
            return Action::Ignore;
        }
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(m) if m.kind == "auth.refresh" => refresh(&m.payload, verifier, user),
            _ => {
                metrics::counter!("ragctl_ws_client_messages_total", "kind" => "ignored")
                    .increment(1);
                Action::Ignore
            }
        }
    }
}

/// Checks the token like a new connection's and requires the same user.
fn refresh(payload: &Value, verifier: &Verifier, user: &AuthUser) -> Action {
    let token = payload.get("token").and_then(Value::as_str).unwrap_or("");
    let (result, action) = match verifier.verify(token) {
        Err(e) => {
            tracing::debug!(error = %e, "auth.refresh with an invalid token");
            // Missing, malformed, forged, expired, or no user.
            (
                "invalid",
                Action::Close(Ending::server(CloseCode::RefreshInvalid)),
            )
        }
        Ok(new) if new.user_id != user.user_id => {
            let end = Ending::server(CloseCode::RefreshOtherUser);
            ("other_user", Action::Close(end))
        }
        Ok(new) => ("ok", Action::Refreshed(new, refreshed_frame(new.exp))),
    };
    metrics::counter!("ragctl_ws_refreshes_total", "result" => result).increment(1);
    action
}

/// `{"type":"auth.refreshed","payload":{"expires_at":"<RFC 3339>"}}`: the
/// expiry the socket enforces (a far-future `exp` is capped, see
/// `deadlines::MAX_TOKEN_LIFE`), so the client refreshes before it.
fn refreshed_frame(exp: u64) -> String {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let exp = super::deadlines::capped_exp(exp, now);
    let at = chrono::DateTime::from_timestamp(exp.min(i64::MAX as u64) as i64, 0)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    json!({"type": "auth.refreshed", "payload": {"expires_at": at}}).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;

    const SECRET: &str = "refresh-secret";

    fn setup() -> (Verifier, AuthUser, Inbox, Instant) {
        let verifier = Verifier::new(SECRET).unwrap();
        let token = crate::auth::mint(SECRET, Uuid::new_v4(), Duration::from_secs(10)).unwrap();
        let user = verifier.verify(&token).unwrap();
        let now = Instant::now();
        (verifier, user, Inbox::new(now), now)
    }

    fn refresh_msg(token: &str) -> Message {
        let text = json!({"type": "auth.refresh", "payload": {"token": token}}).to_string();
        Message::Text(text.into())
    }

    fn close_code(action: Action) -> Option<u16> {
        match action {
            Action::Close(Ending::Server { code, .. }) => Some(code.code()),
            _ => None,
        }
    }

    #[test]
    fn a_token_of_the_same_user_moves_the_expiry() {
        let (v, user, mut inbox, now) = setup();
        let later = crate::auth::mint(SECRET, user.user_id, Duration::from_secs(3600)).unwrap();
        match inbox.on_message(&refresh_msg(&later), now, &v, &user) {
            Action::Refreshed(new, frame) => {
                assert_eq!(new.user_id, user.user_id);
                assert!(new.exp > user.exp);
                let f: Value = serde_json::from_str(&frame).unwrap();
                assert_eq!(f["type"], "auth.refreshed");
                let at: chrono::DateTime<chrono::Utc> =
                    serde_json::from_value(f["payload"]["expires_at"].clone()).unwrap();
                assert_eq!(at.timestamp() as u64, new.exp);
            }
            other => panic!("not refreshed: {other:?}"),
        }
    }

    #[test]
    fn invalid_or_foreign_tokens_close_with_their_codes() {
        let (v, user, mut inbox, now) = setup();
        let forged = crate::auth::mint("other-secret", user.user_id, Duration::from_secs(60));
        let cases = [
            (refresh_msg(&forged.unwrap()), 4003),
            (refresh_msg("not.a.jwt"), 4003),
            (
                Message::Text(r#"{"type":"auth.refresh","payload":{}}"#.into()),
                4003,
            ),
            (
                refresh_msg(
                    &crate::auth::mint(SECRET, Uuid::new_v4(), Duration::from_secs(60)).unwrap(),
                ),
                4004,
            ),
        ];
        for (msg, code) in cases {
            assert_eq!(
                close_code(inbox.on_message(&msg, now, &v, &user)),
                Some(code),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn other_messages_are_ignored() {
        let (v, user, mut inbox, now) = setup();
        for text in [
            "hello",
            "{}",
            r#"{"type":"auth.refreshx","payload":{}}"#,
            "[1]",
        ] {
            let msg = Message::Text(text.into());
            assert_eq!(inbox.on_message(&msg, now, &v, &user), Action::Ignore);
        }
        let bin = Message::Binary(vec![1, 2, 3].into());
        assert_eq!(inbox.on_message(&bin, now, &v, &user), Action::Ignore);
    }

    #[test]
    fn past_the_burst_messages_are_dropped_until_the_bucket_refills() {
        let (v, user, mut inbox, now) = setup();
        let noise = Message::Text("noise".into());
        for _ in 0..BURST as usize {
            inbox.on_message(&noise, now, &v, &user);
        }
        // The bucket is empty: even a valid refresh is not looked at.
        let later = crate::auth::mint(SECRET, user.user_id, Duration::from_secs(60)).unwrap();
        assert_eq!(
            inbox.on_message(&refresh_msg(&later), now, &v, &user),
            Action::Ignore
        );
        let refilled = now + Duration::from_secs_f64(1.0 / PER_SEC);
        assert!(matches!(
            inbox.on_message(&refresh_msg(&later), refilled, &v, &user),
            Action::Refreshed(..)
        ));
    }
}
