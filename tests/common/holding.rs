//! What a WebSocket client holds (the latest state of each entity, from
//! the frames it read) against what REST shows, and the writes the resume
//! and heal tests make.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    Api, Client, Next, PATIENCE, TestDb, get_all, get_json, http, token, upload_bytes,
    upload_bytes_at,
};

/// The fields compared per entity kind.
const DOC_FIELDS: [&str; 2] = ["status", "error_message"];
const JOB_FIELDS: [&str; 3] = ["status", "retry_count", "error_message"];
const MSG_FIELDS: [&str; 2] = ["status", "content"];

/// The latest state of each entity, from frames.
#[derive(Default)]
pub struct Holding {
    pub docs: HashMap<String, Value>,
    pub jobs: HashMap<String, Value>,
    pub msgs: HashMap<String, Value>,
    pub newest: Option<DateTime<Utc>>,
}

impl Holding {
    pub fn apply(&mut self, f: &Value) {
        let p = &f["payload"];
        let (map, id) = match f["type"].as_str().unwrap() {
            "document.created" | "document.status_updated" => (&mut self.docs, "document_id"),
            "job.status_updated" => (&mut self.jobs, "job_id"),
            "message.created" | "message.status_updated" => (&mut self.msgs, "message_id"),
            other => panic!("not a state frame: {other} {f}"),
        };
        let entry = map
            .entry(p[id].as_str().unwrap().to_string())
            .or_insert_with(|| json!({}));
        for key in ["status", "error_message", "retry_count", "content"] {
            if let Some(v) = p.get(key) {
                entry[key] = v.clone();
            }
        }
        for key in ["created_at", "updated_at"] {
            if let Some(at) = p[key].as_str() {
                let at: DateTime<Utc> = at.parse().unwrap();
                self.newest = Some(self.newest.map_or(at, |n| n.max(at)));
            }
        }
    }

    /// Applies a frame unless it is a `realtime.*` one; returns its type.
    pub fn apply_any(&mut self, f: &Value) -> String {
        let kind = f["type"].as_str().unwrap_or_default().to_string();
        if !kind.starts_with("realtime.") {
            self.apply(f);
        }
        kind
    }

    /// The newest stamp held, as an RFC 3339 cursor.
    pub fn rfc3339(&self) -> String {
        self.newest
            .expect("something held")
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// What a frontend does after opening its socket: load the state
    /// through REST; frames then apply on top.
    pub async fn load(api: &Api, user: Uuid, conv: Option<&str>) -> Holding {
        let mut held = Holding::default();
        for (key, fields) in rest_view(api, user, conv).await {
            let (kind, id) = key.split_once(':').expect("kind:id");
            let map = match kind {
                "doc" => &mut held.docs,
                "job" => &mut held.jobs,
                _ => &mut held.msgs,
            };
            map.insert(id.to_string(), fields);
        }
        held
    }

    /// One comparable map: `doc:<id>`, `job:<id>`, `msg:<id>` to fields.
    pub fn view(&self) -> View {
        let mut out = View::new();
        for (prefix, map, fields) in [
            ("doc", &self.docs, &DOC_FIELDS[..]),
            ("job", &self.jobs, &JOB_FIELDS[..]),
            ("msg", &self.msgs, &MSG_FIELDS[..]),
        ] {
            for (id, v) in map {
                out.insert(format!("{prefix}:{id}"), pick(v, fields));
            }
        }
        out
    }
}

pub type View = BTreeMap<String, Value>;

fn pick(v: &Value, fields: &[&str]) -> Value {
    let mut out = json!({});
    for f in fields {
        out[*f] = v.get(*f).cloned().unwrap_or(Value::Null);
    }
    out
}

/// Every document and job of `user`, and the messages of `conv`, as REST
/// shows them, in the shape of [`Holding::view`].
pub async fn rest_view(api: &Api, user: Uuid, conv: Option<&str>) -> View {
    let mut out = View::new();
    for d in &get_all(api, user, "/documents", "documents").await {
        let id = d["id"].as_str().unwrap();
        out.insert(format!("doc:{id}"), pick(d, &DOC_FIELDS));
        let (_, jobs) = get_json(api, user, &format!("/documents/{id}/jobs")).await;
        for j in jobs["jobs"].as_array().expect("jobs") {
            let jid = j["id"].as_str().unwrap();
            out.insert(format!("job:{jid}"), pick(j, &JOB_FIELDS));
        }
    }
    if let Some(conv) = conv {
        let path = format!("/conversations/{conv}/messages");
        for m in &get_all(api, user, &path, "messages").await {
            let mid = m["id"].as_str().unwrap();
            out.insert(format!("msg:{mid}"), pick(m, &MSG_FIELDS));
        }
    }
    out
}

/// Every document, job and message REST shows, the client holds the same.
pub async fn assert_holds_rest(api: &Api, user: Uuid, held: &Holding, conv: &str) {
    assert_eq!(held.view(), rest_view(api, user, Some(conv)).await);
}

/// Reads `client`'s frames into `held` until it holds what REST shows (REST
/// read again whenever the client goes quiet), or fails at `PATIENCE`.
/// Returns the `realtime.*` frame types it read.
pub async fn read_until_rest(
    api: &Api,
    user: Uuid,
    client: &mut Client,
    held: &mut Holding,
    conv: Option<&str>,
) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut realtime = vec![];
    loop {
        let rest = rest_view(api, user, conv).await;
        if held.view() == rest {
            return realtime;
        }
        assert!(
            Instant::now() < deadline,
            "user {user}: the client never held what REST shows\nheld: {:#?}\nrest: {rest:#?}",
            held.view()
        );
        // Frames already sent are read at once; a quiet second means the
        // client has everything that was sent so far.
        while let Some(Next::Frame(f)) = client.next(Duration::from_secs(1)).await {
            let kind = held.apply_any(&f);
            if kind.starts_with("realtime.") {
                realtime.push(kind);
            }
        }
    }
}

pub async fn upload_text(api: &Api, user: Uuid, i: usize) -> String {
    let (code, body) = upload_bytes(api, user, &format!("n{i}.txt"), b"some text".to_vec()).await;
    assert_eq!(code, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// 10 small text uploads for each of `users`, in rounds, through the API
/// at `api_url` (a spawned task's load while the test breaks something).
pub async fn upload_all(api_url: &str, users: &[Uuid]) {
    for i in 0..10 {
        for u in users {
            let text = format!("text {i} of {u}").into_bytes();
            let (code, body) = upload_bytes_at(api_url, *u, &format!("n{i}.txt"), text).await;
            assert_eq!(code, 201, "{body}");
        }
    }
}

/// Whether each of `users` has `n` documents, each ingested or in error.
pub async fn all_done(api: &Api, users: &[Uuid], n: usize) -> bool {
    for u in users {
        let (_, docs) = get_json(api, *u, "/documents").await;
        let docs = docs["documents"].as_array().unwrap();
        let done = |d: &Value| d["status"] == "ingested" || d["status"] == "error";
        if docs.len() < n || !docs.iter().all(done) {
            return false;
        }
    }
    true
}

pub async fn wait_all_done(api: &Api, users: &[Uuid], n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while !all_done(api, users, n).await {
        assert!(Instant::now() < deadline, "documents never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn ask(api: &Api, user: Uuid, conv: &str, content: &str) -> Value {
    let (status, body) = post_message(api, user, conv, content).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// `POST /conversations/{conv}/messages`: the status and the JSON body.
pub async fn post_message(api: &Api, user: Uuid, conv: &str, content: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{}/conversations/{conv}/messages", api.url))
        .bearer_auth(token(user))
        .json(&json!({ "content": content }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Sets documents' and their jobs' states as workers would (each write
/// sets `updated_at`), with plain SQL: no event is published.
pub async fn set_states(
    db: &TestDb,
    ids: &[String],
    doc: &str,
    err: Option<&str>,
    job: &str,
    retries: i32,
) {
    let list = format!("'{{{}}}'::uuid[]", ids.join(","));
    let err = err.map_or("NULL".to_string(), |e| format!("'{e}'"));
    db.query(&format!(
        "UPDATE documents SET status = '{doc}', error_message = {err}, updated_at = clock_timestamp()
         WHERE id = ANY({list})"
    ))
    .await;
    db.query(&format!(
        "UPDATE jobs SET status = '{job}', retry_count = {retries}, error_message = {err},
            updated_at = clock_timestamp() WHERE document_id = ANY({list})"
    ))
    .await;
}
