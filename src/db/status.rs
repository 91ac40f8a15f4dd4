//! The lifecycles stored in TEXT columns: document, job and message
//! statuses, the job kind and the message role. One enum each, the only
//! list of their values: the queries bind and read them (`ToSql`/`FromSql`),
//! and the event contract takes its allowed values from their `ALL`.

use std::error::Error;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// Declares a TEXT-backed enum: `as_str`, `ALL`, `parse`, `Display`,
/// `Serialize` (as the text) and the postgres conversions.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The values as stored and sent, in lifecycle order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
                self.as_str().to_sql(ty, out)
            }
            fn accepts(ty: &Type) -> bool {
                <&str as ToSql>::accepts(ty)
            }
            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $name {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<$name, Box<dyn Error + Sync + Send>> {
                let s = <&str as FromSql>::from_sql(ty, raw)?;
                $name::parse(s).ok_or_else(|| format!("unknown {} {s:?} in the database", $what).into())
            }
            fn accepts(ty: &Type) -> bool {
                <&str as FromSql>::accepts(ty)
            }
        }
    };
}

text_enum!(
    /// Where a document is: uploaded → parsing → parsed → ingesting →
    /// ingested, or error.
    DocumentStatus, "document status" {
        Uploaded => "uploaded",
        Parsing => "parsing",
        Parsed => "parsed",
        Ingesting => "ingesting",
        Ingested => "ingested",
        Error => "error",
    }
);

text_enum!(
    /// A job's state in the queue.
    JobStatus, "job status" {
        Queued => "queued",
        Running => "running",
        Success => "success",
        Failed => "failed",
    }
);

text_enum!(
    /// Which worker runs a job.
    JobKind, "job kind" {
        Parse => "parse",
        Ingest => "ingest",
        Embed => "embed",
    }
);

text_enum!(
    /// A chat message's state: an answer is `pending` until it is written.
    MessageStatus, "message status" {
        Pending => "pending",
        Completed => "completed",
        Error => "error",
    }
);

text_enum!(
    /// Who wrote a message.
    MessageRole, "message role" {
        User => "user",
        Assistant => "assistant",
    }
);

impl JobKind {
    /// The document status while a job of this kind runs; an `embed` job
    /// (backfill) leaves the document `ingested`, searchable.
    pub fn working_status(self) -> Option<DocumentStatus> {
        match self {
            JobKind::Parse => Some(DocumentStatus::Parsing),
            JobKind::Ingest => Some(DocumentStatus::Ingesting),
            JobKind::Embed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_all() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            names: &[&str],
            as_str: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            assert_eq!(all.len(), names.len());
            for (v, n) in all.iter().zip(names) {
                assert_eq!(as_str(*v), *n);
                assert_eq!(parse(n), Some(*v));
            }
            assert_eq!(parse("nope"), None);
        }
        check(
            DocumentStatus::ALL,
            DocumentStatus::NAMES,
            DocumentStatus::as_str,
            DocumentStatus::parse,
        );
        check(
            JobStatus::ALL,
            JobStatus::NAMES,
            JobStatus::as_str,
            JobStatus::parse,
        );
        check(
            JobKind::ALL,
            JobKind::NAMES,
            JobKind::as_str,
            JobKind::parse,
        );
        check(
            MessageStatus::ALL,
            MessageStatus::NAMES,
            MessageStatus::as_str,
            MessageStatus::parse,
        );
        check(
            MessageRole::ALL,
            MessageRole::NAMES,
            MessageRole::as_str,
            MessageRole::parse,
        );
        assert_eq!(
            serde_json::to_string(&JobStatus::Failed).unwrap(),
            "\"failed\""
        );
    }
}
