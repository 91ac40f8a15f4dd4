//! The row filters: user id prefix, type, and text in the raw payload.

use super::decode::Event;
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
    /// Substring of the type name, or `invalid` for invalid payloads only.
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
        if !self.user.is_empty() {
            let user = self.user.trim().to_ascii_lowercase();
            if !ev
                .user_label()
                .is_some_and(|u| u.to_ascii_lowercase().starts_with(&user))
            {
                return false;
            }
        }
        if !self.kind.is_empty() {
            let kind = self.kind.trim();
            let ok = if kind.eq_ignore_ascii_case("invalid") {
                !ev.is_valid()
            } else {
                contains_ignore_case(ev.kind_label(), kind)
            };
            if !ok {
                return false;
            }
        }
        if !self.text.is_empty() {
            let ok = if self.text.chars().any(char::is_uppercase) {
                ev.raw.contains(&self.text)
            } else {
                contains_ignore_case(&ev.raw, &self.text)
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// What the type filter cycles through with Tab: every type, then invalid
/// payloads, then no filter.
pub fn kind_cycle() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    all.push("invalid");
    all.push("");
    all
}
