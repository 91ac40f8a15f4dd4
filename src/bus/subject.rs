//! Subject names on NATS (BUS.md). A leaf.

use uuid::Uuid;

/// The subject a user's envelopes are published on.
pub fn user_subject(prefix: &str, user: Uuid) -> String {
    format!("{prefix}.u.{}", user.hyphenated())
}

/// The relay's heartbeats, gaps, oversize notices and resignations.
pub fn relay_subject(prefix: &str) -> String {
    format!("{prefix}.relay")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_contract() {
        let u = Uuid::parse_str("6f1c2a3e-0000-4000-8000-00000000abcd").unwrap();
        assert_eq!(
            user_subject("ragctl", u),
            "ragctl.u.6f1c2a3e-0000-4000-8000-00000000abcd"
        );
        assert_eq!(relay_subject("x"), "x.relay");
    }
}
