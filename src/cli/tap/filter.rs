//! The row filters: user id prefix, type, and text in the raw payload.

use super::decode::Event;
use super::report::{HEAL_LABEL, OpsReport};
use crate::events::EventType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterField {
    User,
    Kind,
    Text,
}

impl FilterField {
    pub fn label(self) -> &'static str {
        match self {
            FilterField::User => "user",
            FilterField::Kind => "type",
            FilterField::Text => "text",
        }
    }
}

/// Active filters; an empty string is no filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// Prefix of the user id.
    pub user: String,
    /// Substring of the type name (`heal` for heal runs), or `invalid` for
    /// invalid payloads only; a leading `!` inverts it.
    pub kind: String,
    /// Substring of the raw payload (case-insensitive unless it has capitals).
    pub text: String,
}

impl Filters {
    pub fn get(&self, field: FilterField) -> &str {
        match field {
            FilterField::User => &self.user,
            FilterField::Kind => &self.kind,
            FilterField::Text => &self.text,
        }
    }

    pub fn get_mut(&mut self, field: FilterField) -> &mut String {
        match field {
            FilterField::User => &mut self.user,
            FilterField::Kind => &mut self.kind,
            FilterField::Text => &mut self.text,
        }
    }

    pub fn is_active(&self) -> bool {
        !(self.user.is_empty() && self.kind.is_empty() && self.text.is_empty())
    }

    pub fn matches(&self, ev: &Event) -> bool {
        self.matches_row(
            ev.user_label().as_deref(),
            ev.kind_label(),
            !ev.is_valid(),
            &ev.raw,
        )
    }

    /// A report has no user (a heal run spans users): a user filter hides
    /// it. It is never `invalid`; its type is `heal` (or `ops?`).
    pub fn matches_report(&self, r: &OpsReport) -> bool {
        self.matches_row(None, r.kind_label(), false, &r.raw)
    }

    fn matches_row(&self, user: Option<&str>, kind: &str, invalid: bool, raw: &str) -> bool {
        if !self.user.is_empty() {
            let want = self.user.trim().to_ascii_lowercase();
            if !user.is_some_and(|u| u.to_ascii_lowercase().starts_with(&want)) {
                return false;
            }
        }
        if !self.kind.is_empty() && !kind_matches(self.kind.trim(), kind, invalid) {
            return false;
        }
        if !self.text.is_empty() {
            let ok = if self.text.chars().any(char::is_uppercase) {
                raw.contains(&self.text)
            } else {
                contains_ignore_case(raw, &self.text)
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// The type filter: a substring of the type, `invalid`, or either behind
/// `!` for everything else (`!heal` hides heal runs).
fn kind_matches(filter: &str, kind: &str, invalid: bool) -> bool {
    let (negate, filter) = match filter.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, filter),
    };
    // A lone `!` (half typed) filters nothing yet.
    if filter.is_empty() {
        return true;
    }
    let hit = if filter.eq_ignore_ascii_case("invalid") {
        invalid
    } else {
        contains_ignore_case(kind, filter)
    };
    hit != negate
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// What the type filter cycles through with Tab: every type, then invalid
/// payloads, heal runs, everything but heal runs, then no filter.
pub fn kind_cycle() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    all.push("invalid");
    all.push(HEAL_LABEL);
    all.push("!heal");
    all.push("");
    all
}
