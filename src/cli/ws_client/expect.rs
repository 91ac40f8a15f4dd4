//! `--expect`: what a frame must carry, and the matching that gives each
//! expectation a frame of its own.

use serde_json::Value;

use super::error::WsClientError;
use crate::cli::text::loose_json;
use crate::events::EventType;

/// The server-side frame type for gap notices (`?resync=1`).
pub const RESYNC_TYPE: &str = "realtime.resync";
/// The end of a resume's catch-up (`--since`).
pub const CAUGHT_UP_TYPE: &str = "realtime.caught_up";

/// One `--expect`: a frame type and payload values to find.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub text: String,
    pub kind: String,
    pub fields: Vec<(String, Value)>,
}

impl Expectation {
    pub fn parse(text: &str) -> Result<Expectation, WsClientError> {
        let bad = |problem: String| WsClientError::BadExpect {
            text: text.to_string(),
            problem,
        };
        let mut words = split_words(text).map_err(&bad)?.into_iter();
        let (kind, _) = words
            .next()
            .ok_or_else(|| bad("empty; write 'TYPE key=value ...'".into()))?;
        if EventType::parse(&kind).is_none() && kind != RESYNC_TYPE && kind != CAUGHT_UP_TYPE {
            let mut valid: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            valid.extend([RESYNC_TYPE, CAUGHT_UP_TYPE]);
            return Err(bad(format!(
                "unknown type {kind:?}; valid types: {}",
                valid.join(", ")
            )));
        }
        let fields = words
            .map(|(word, quoted)| {
                let (key, value) = word
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| bad(format!("{word:?} is not key=value")))?;
                let value = if quoted {
                    Value::String(value.to_string())
                } else {
                    loose_json(value)
                };
                Ok((key.to_string(), value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Expectation {
            text: text.trim().to_string(),
            kind,
            fields,
        })
    }

    /// Payload value at `key`; `a.b` reaches into nested objects.
    pub fn lookup<'a>(payload: &'a Value, key: &str) -> Option<&'a Value> {
        key.split('.').try_fold(payload, |v, k| v.get(k))
    }

    pub fn matches(&self, kind: &str, payload: &Value) -> bool {
        kind == self.kind
            && self
                .fields
                .iter()
                .all(|(k, want)| Self::lookup(payload, k) == Some(want))
    }
}

/// Splits on whitespace; single or double quotes keep spaces together (and
/// make the value a string). Returns each word and whether it was quoted.
fn split_words(text: &str) -> Result<Vec<(String, bool)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                let close = c;
                quoted = true;
                in_word = true;
                loop {
                    match chars.next() {
                        Some(ch) if ch == close => break,
                        Some(ch) => word.push(ch),
                        None => return Err(format!("unclosed {close} quote")),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push((std::mem::take(&mut word), quoted));
                    quoted = false;
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push((word, quoted));
    }
    Ok(words)
}

/// Assigns frames to expectations so that each expectation has its own
/// frame, finding the largest such assignment (Kuhn's augmenting paths): a
/// frame matching two expectations never starves a later one.
#[derive(Debug, Default)]
pub struct Matcher {
    pub expectations: Vec<Expectation>,
    /// For each frame that matched something: the expectations it matches.
    frames: Vec<Vec<usize>>,
    /// For each expectation: the frame it is assigned, if any.
    owner: Vec<Option<usize>>,
    met: usize,
}

impl Matcher {
    pub fn new(expectations: Vec<Expectation>) -> Matcher {
        let n = expectations.len();
        Matcher {
            expectations,
            frames: Vec::new(),
            owner: vec![None; n],
            met: 0,
        }
    }

    pub fn met(&self) -> usize {
        self.met
    }

    pub fn all_met(&self) -> bool {
        self.met == self.expectations.len()
    }

    /// Offers a frame; returns the expectation newly met thanks to it.
    pub fn offer(&mut self, kind: &str, payload: &Value) -> Option<usize> {
        let adj: Vec<usize> = (0..self.expectations.len())
            .filter(|&e| self.expectations[e].matches(kind, payload))
            .collect();
        if adj.is_empty() || self.all_met() {
            return None;
        }
        self.frames.push(adj);
        let frame = self.frames.len() - 1;
        let mut visited = vec![false; self.expectations.len()];
        let newly = self.augment(frame, &mut visited)?;
        self.met += 1;
        Some(newly)
    }

    /// Tries to give `frame` an expectation, moving earlier frames to
    /// others if needed; returns the expectation that was free before.
    fn augment(&mut self, frame: usize, visited: &mut [bool]) -> Option<usize> {
        for i in 0..self.frames[frame].len() {
            let e = self.frames[frame][i];
            if visited[e] {
                continue;
            }
            visited[e] = true;
            let freed = match self.owner[e] {
                None => Some(e),
                Some(other) => self.augment(other, visited),
            };
            if freed.is_some() {
                self.owner[e] = Some(frame);
                return freed;
            }
        }
        None
    }

    pub fn missing(&self) -> impl Iterator<Item = &Expectation> {
        self.owner
            .iter()
            .zip(&self.expectations)
            .filter(|(o, _)| o.is_none())
            .map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exp(s: &str) -> Expectation {
        Expectation::parse(s).unwrap()
    }

    #[test]
    fn typed_comparison() {
        let e = exp("job.status_updated status=failed retry_count=3");
        let p = json!({"status": "failed", "retry_count": 3});
        assert!(e.matches("job.status_updated", &p));
        assert!(!e.matches(
            "job.status_updated",
            &json!({"status": "failed", "retry_count": "3"})
        ));
        assert!(!e.matches("document.status_updated", &p));
        let q = exp(r#"document.status_updated error_message="no text" status='3'"#);
        assert_eq!(q.fields[0].1, json!("no text"));
        assert_eq!(q.fields[1].1, json!("3"));
        assert!(
            exp("document.status_updated error_message=null")
                .matches("document.status_updated", &json!({"error_message": null}))
        );
    }

    #[test]
    fn bad_expectations_are_usage_errors() {
        let e = Expectation::parse("document.deleted status=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("valid types: document.created"), "{e}");
        assert!(Expectation::parse("job.status_updated status").is_err());
        assert!(Expectation::parse("job.status_updated a=\"x").is_err());
        assert!(Expectation::parse("realtime.resync reason=listener_reconnected").is_ok());
    }

    #[test]
    fn each_expectation_gets_its_own_frame() {
        // The first frame matches both; greedy assignment would give it to
        // the broad one and then starve the narrow one.
        let mut m = Matcher::new(vec![
            exp("document.status_updated"),
            exp("document.status_updated status=parsed"),
        ]);
        let t = "document.status_updated";
        assert!(m.offer(t, &json!({"status": "parsed"})).is_some());
        assert!(!m.all_met());
        assert!(m.offer(t, &json!({"status": "ingested"})).is_some());
        assert!(m.all_met());

        let mut twice = Matcher::new(vec![exp("job.status_updated"), exp("job.status_updated")]);
        assert!(twice.offer("job.status_updated", &json!({})).is_some());
        assert_eq!(twice.missing().count(), 1);
        assert!(twice.offer("job.status_updated", &json!({})).is_some());
        assert!(twice.all_met());
    }
}
