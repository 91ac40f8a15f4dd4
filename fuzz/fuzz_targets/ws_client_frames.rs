//! What a client sends on `/ws`: text and binary frames through the inbox
//! (rate bucket, JSON, `auth.refresh`). `$SAME` / `$OTHER` in the input
//! become valid tokens of the socket's user / another user, so the fuzzer
//! reaches the refresh paths, not just the signature check.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ragctl::api::ws::{Action, Ending, Inbox};
use ragctl::bridge::CloseCode;
use ragctl::auth::{AuthUser, Verifier, mint};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const SECRET: &str = "fuzz-secret";

struct Setup {
    verifier: Verifier,
    user: AuthUser,
    same: String,
    other: String,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let verifier = Verifier::new(SECRET).expect("secret");
        let day = Duration::from_secs(86_400);
        let first = mint(SECRET, Uuid::from_u128(1), day).expect("mint");
        let user = verifier.verify(&first).expect("valid");
        Setup {
            same: mint(SECRET, user.user_id, 2 * day).expect("mint"),
            other: mint(SECRET, Uuid::from_u128(2), day).expect("mint"),
            verifier,
            user,
        }
    })
}

fn check(action: Action, text: &str, s: &Setup) {
    match action {
        Action::Ignore => {}
        Action::Refreshed(new, frame) => {
            assert_eq!(new.user_id, s.user.user_id);
            assert!(text.contains(&s.same), "refreshed without the user's token");
            let f: Value = serde_json::from_str(&frame).expect("frame is JSON");
            assert_eq!(f["type"], "auth.refreshed");
            assert!(f["payload"]["expires_at"].is_string());
        }
        Action::Close(Ending::Server { code, .. }) => {
            assert!(code == CloseCode::RefreshInvalid || code == CloseCode::RefreshOtherUser);
            if code == CloseCode::RefreshOtherUser {
                assert!(text.contains(&s.other), "another user's token from nowhere");
            }
        }
        Action::Close(other) => panic!("unexpected ending {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let mut inbox = Inbox::new(Instant::now());
    let now = Instant::now();
    // Several frames per input, split on 0xFF (never in UTF-8 text).
    for (i, raw) in data.split(|b| *b == 0xFF).enumerate() {
        // A second between frames keeps the bucket from running dry.
        let at = now + Duration::from_secs(i as u64);
        let msg = match std::str::from_utf8(raw) {
            Ok(t) => Message::Text(
                t.replace("$SAME", &s.same)
                    .replace("$OTHER", &s.other)
                    .into(),
            ),
            Err(_) => Message::Binary(raw.to_vec().into()),
        };
        let text = msg.to_text().unwrap_or("").to_string();
        check(inbox.on_message(&msg, at, &s.verifier, &s.user), &text, s);
    }
});
