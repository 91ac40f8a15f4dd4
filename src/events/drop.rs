//! Why a payload read off the channel was not delivered: the reasons
//! `scan` and `wire` share, with their stable metric labels. A leaf.

/// Why a payload read off the channel was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    NotJson,
    UnknownVersion,
    BadUserId,
    UnknownType,
    BadPayload,
    BadEnvelope,
    BadFragment,
    FragmentExpired,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::NotJson,
        DropReason::UnknownVersion,
        DropReason::BadUserId,
        DropReason::UnknownType,
        DropReason::BadPayload,
        DropReason::BadEnvelope,
        DropReason::BadFragment,
        DropReason::FragmentExpired,
    ];

    /// Stable label, used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotJson => "not_json",
            DropReason::UnknownVersion => "unknown_version",
            DropReason::BadUserId => "bad_user_id",
            DropReason::UnknownType => "unknown_type",
            DropReason::BadPayload => "bad_payload",
            DropReason::BadEnvelope => "bad_envelope",
            DropReason::BadFragment => "bad_fragment",
            DropReason::FragmentExpired => "fragment_expired",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
