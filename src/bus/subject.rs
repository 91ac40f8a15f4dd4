//! NATS subject names (BUS.md). A leaf.

use uuid::Uuid;

/// Where the relay publishes `user`'s envelopes: `<prefix>.u.<uuid>`
/// (hyphenated, lowercase).
pub fn user_subject(prefix: &str, user: Uuid) -> String {
    format!("{prefix}.u.{user}")
}

/// Where the relay publishes heartbeats, gaps, oversize notices and its
/// resignation.
pub fn relay_subject(prefix: &str) -> String {
    format!("{prefix}.relay")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let u = Uuid::parse_str("6F9619FF-8B86-D011-B42D-00C04FC964FF").unwrap();
        assert_eq!(
            user_subject("ragctl", u),
            "ragctl.u.6f9619ff-8b86-d011-b42d-00c04fc964ff"
        );
        assert_eq!(relay_subject("prod.ragctl"), "prod.ragctl.relay");
    }
}
