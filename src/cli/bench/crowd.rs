//! Who a bench's clients are: the users of its sockets and their tokens.
//! A leaf every run mode uses.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

/// The bridge's receiving clients of a bench: `clients` sockets, client
/// `c` for `users[c % users.len()]`.
pub(super) struct Crowd {
    pub(super) users: Vec<Uuid>,
    pub(super) clients: usize,
}

/// A token for `user`, good for longer than any run.
pub(super) fn token(secret: &str, user: Uuid) -> anyhow::Result<Arc<str>> {
    let jwt = crate::auth::mint(secret, user, Duration::from_secs(6 * 3600))?;
    Ok(Arc::from(jwt))
}
