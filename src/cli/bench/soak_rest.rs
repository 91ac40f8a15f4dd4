//! A user's documents and jobs as REST tells them (`GET /documents`, every
//! page, then `GET /documents/{id}/jobs` of each), with their `updated_at`:
//! what a socket reloads after `realtime.resync`, and the truth the end
//! check compares every view with.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::soak_view::Seen;

/// A user's documents and jobs, by id.
#[derive(Debug, Default)]
pub(super) struct Truth {
    pub(super) docs: HashMap<Uuid, Seen>,
    pub(super) jobs: HashMap<Uuid, Seen>,
}

fn rows(list: &Value, key: &str, out: &mut HashMap<Uuid, Seen>) {
    for row in list[key].as_array().into_iter().flatten() {
        let id = row["id"].as_str().and_then(|s| s.parse().ok());
        let at = row["updated_at"]
            .as_str()
            .and_then(|s| s.parse::<DateTime<Utc>>().ok());
        if let (Some(id), Some(at), Some(s)) = (id, at, row["status"].as_str()) {
            let status = s.to_string();
            out.insert(id, Seen { status, at });
        }
    }
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    let r = http.get(url).bearer_auth(token).send().await?;
    Ok(r.error_for_status()?.json().await?)
}

/// Everything of `user` through the API at `api`.
pub(super) async fn fetch(
    http: &reqwest::Client,
    api: &str,
    secret: &str,
    user: Uuid,
) -> anyhow::Result<Truth> {
    let token = crate::auth::mint(secret, user, Duration::from_secs(3600))?;
    let mut t = Truth::default();
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(c) => format!("{api}/documents?limit=200&cursor={c}"),
            None => format!("{api}/documents?limit=200"),
        };
        let page = get(http, &page, &token).await?;
        rows(&page, "documents", &mut t.docs);
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    for id in t.docs.keys() {
        let jobs = get(http, &format!("{api}/documents/{id}/jobs"), &token).await?;
        rows(&jobs, "jobs", &mut t.jobs);
    }
    Ok(t)
}

/// Statuses only, for the comparison.
pub(super) fn statuses(m: &HashMap<Uuid, Seen>) -> HashMap<Uuid, String> {
    m.iter().map(|(id, s)| (*id, s.status.clone())).collect()
}
