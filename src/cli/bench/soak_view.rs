//! What one soak socket believes: the state of its user's documents and
//! jobs, built from the frames it received (catch-ups and live), and the
//! cursor it resumes from. Pure, so that it can be tested without sockets.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// One entity's state as last seen, and the time the frame says it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) status: String,
    pub(super) at: DateTime<Utc>,
}

/// A socket's view of its user.
#[derive(Debug, Default)]
pub(super) struct View {
    pub(super) docs: HashMap<Uuid, Seen>,
    pub(super) jobs: HashMap<Uuid, Seen>,
    /// The cursor of the last `realtime.caught_up`.
    pub(super) cursor: Option<String>,
    /// Caught up on its current connection.
    pub(super) live: bool,
    /// Got a `realtime.resync`: its frames no longer tell the whole state.
    pub(super) resynced: bool,
}

/// What a frame was, for the counters.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame {
    State,
    CaughtUp,
    /// With its reason.
    Resync(String),
    Refreshed,
    Other,
}

impl View {
    /// Applies one text frame; a state older than the one held is ignored
    /// (as a client keyed on `updated_at` does).
    pub(super) fn apply(&mut self, text: &str) -> Frame {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let p = &v["payload"];
        match v["type"].as_str().unwrap_or("") {
            "document.created" => keep(&mut self.docs, p, "document_id", "created_at"),
            "document.status_updated" => keep(&mut self.docs, p, "document_id", "updated_at"),
            "job.status_updated" => keep(&mut self.jobs, p, "job_id", "updated_at"),
            "realtime.caught_up" => {
                self.cursor = p["cursor"].as_str().map(str::to_string);
                self.live = true;
                Frame::CaughtUp
            }
            "realtime.resync" => {
                self.resynced = true;
                Frame::Resync(p["reason"].as_str().unwrap_or("").to_string())
            }
            "auth.refreshed" => Frame::Refreshed,
            _ => Frame::Other,
        }
    }
}

impl View {
    /// Merges a REST reload (after `realtime.resync`): the newer state of
    /// each entity wins; the view is whole again.
    pub(super) fn merge(&mut self, docs: &HashMap<Uuid, Seen>, jobs: &HashMap<Uuid, Seen>) {
        for (mine, theirs) in [(&mut self.docs, docs), (&mut self.jobs, jobs)] {
            for (id, seen) in theirs {
                if mine.get(id).is_none_or(|s| seen.at >= s.at) {
                    mine.insert(*id, seen.clone());
                }
            }
        }
        self.resynced = false;
    }
}

fn keep(map: &mut HashMap<Uuid, Seen>, p: &Value, id: &str, at: &str) -> Frame {
    let id = p[id].as_str().and_then(|s| s.parse::<Uuid>().ok());
    let at = p[at].as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok());
    let (Some(id), Some(at), Some(status)) = (id, at, p["status"].as_str()) else {
        return Frame::Other;
    };
    let newer = map.get(&id).is_none_or(|s| at >= s.at);
    if newer {
        map.insert(
            id,
            Seen {
                status: status.to_string(),
                at,
            },
        );
    }
    Frame::State
}

/// The differences between a view and the truth (id → status), at most
/// `limit` of them, described.
pub(super) fn diff(
    what: &str,
    seen: &HashMap<Uuid, Seen>,
    truth: &HashMap<Uuid, String>,
    limit: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, status) in truth {
        match seen.get(id) {
            Some(s) if &s.status == status => {}
            Some(s) => out.push(format!("{what} {id}: socket {} REST {status}", s.status)),
            None => out.push(format!("{what} {id}: missing (REST {status})")),
        }
    }
    for id in seen.keys().filter(|id| !truth.contains_key(id)) {
        out.push(format!("{what} {id}: not in REST"));
    }
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(kind: &str, id: Uuid, status: &str, at: &str) -> String {
        let field = if kind == "document.created" {
            "created_at"
        } else {
            "updated_at"
        };
        format!(
            r#"{{"type":"{kind}","payload":{{"document_id":"{id}","status":"{status}","{field}":"{at}"}}}}"#
        )
    }

    #[test]
    fn a_state_older_than_the_one_held_is_ignored() {
        let (mut v, id) = (View::default(), Uuid::new_v4());
        let t1 = "2026-12-06T10:00:00Z";
        let t2 = "2026-12-06T10:00:01Z";
        assert_eq!(
            v.apply(&doc("document.created", id, "uploaded", t1)),
            Frame::State
        );
        v.apply(&doc("document.status_updated", id, "ingested", t2));
        v.apply(&doc("document.status_updated", id, "parsing", t1));
        assert_eq!(v.docs[&id].status, "ingested");
    }

    #[test]
    fn caught_up_sets_the_cursor_and_resync_is_remembered() {
        let mut v = View::default();
        let f = v.apply(r#"{"type":"realtime.caught_up","payload":{"cursor":"AQAG","count":3}}"#);
        assert_eq!(f, Frame::CaughtUp);
        assert_eq!(v.cursor.as_deref(), Some("AQAG"));
        assert!(v.live);
        let resync = r#"{"type":"realtime.resync","payload":{"reason":"catchup_failed"}}"#;
        assert_eq!(v.apply(resync), Frame::Resync("catchup_failed".into()));
        assert!(v.resynced);
        assert_eq!(v.apply("not json"), Frame::Other);
        let (id, old, new) = (
            Uuid::new_v4(),
            Utc::now(),
            Utc::now() + chrono::Duration::seconds(1),
        );
        v.docs.insert(
            id,
            Seen {
                status: "ingested".into(),
                at: new,
            },
        );
        let reloaded = HashMap::from([(
            id,
            Seen {
                status: "parsing".into(),
                at: old,
            },
        )]);
        v.merge(&reloaded, &reloaded);
        assert_eq!(
            v.docs[&id].status, "ingested",
            "an older REST row does not win"
        );
        assert_eq!(v.jobs[&id].status, "parsing");
        assert!(!v.resynced);
    }

    #[test]
    fn diff_names_wrong_missing_and_extra_entities() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let at = Utc::now();
        let seen = HashMap::from([
            (
                a,
                Seen {
                    status: "ingested".into(),
                    at,
                },
            ),
            (
                c,
                Seen {
                    status: "error".into(),
                    at,
                },
            ),
        ]);
        let truth = HashMap::from([(a, "ingested".to_string()), (b, "error".to_string())]);
        let d = diff("document", &seen, &truth, 10);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().any(|l| l.contains("missing")));
        assert!(d.iter().any(|l| l.contains("not in REST")));
        let same = HashMap::from([(
            a,
            Seen {
                status: "ingested".into(),
                at,
            },
        )]);
        let truth = HashMap::from([(a, "ingested".to_string())]);
        assert!(diff("document", &same, &truth, 10).is_empty());
    }
}
