//! The business runtime against a real PostgreSQL: uploads, the job queue,
//! the worker processes, chat, bad input, and event publishing.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn every_format_is_parsed_and_ingested() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    for (file, mime) in [
        ("handbook.txt", "text/plain"),
        ("handbook.md", "text/markdown"),
        ("handbook.html", "text/html"),
        ("handbook.pdf", "application/pdf"),
    ] {
        let doc = upload(&api, user, file).await;
        assert_eq!(doc["status"], "uploaded");
        assert_eq!(doc["mime_type"], mime);
        assert_eq!(doc["filename"], file);
        let id = doc["id"].as_str().unwrap();
        let done = wait_status(&api, user, id, "ingested").await;
        assert_eq!(done["error_message"], Value::Null);
        let (_, jobs) = get_json(&api, user, &format!("/documents/{id}/jobs")).await;
        let jobs = jobs["jobs"].as_array().unwrap();
        let kinds: Vec<_> = jobs
            .iter()
            .map(|j| (j["kind"].clone(), j["status"].clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (json!("parse"), json!("success")),
                (json!("ingest"), json!("success"))
            ]
        );
        let chunks = db
            .query(&format!(
                "SELECT count(*) FROM chunks WHERE document_id = '{id}'"
            ))
            .await[0]
            .get::<_, i64>(0);
        assert!(chunks >= 1, "{file}: no chunks");
    }
    let (_, list) = get_json(&api, user, "/documents").await;
    assert_eq!(list["documents"].as_array().unwrap().len(), 4);
}

/// A corrupt file cannot get better: one attempt, then `failed`.
#[tokio::test]
async fn corrupt_pdf_fails_at_once() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _p = worker(&db, "parse", &FAST_RETRIES);
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "corrupt.pdf").await;
    let id = doc["id"].as_str().unwrap();
    let failed = wait_status(&api, user, id, "error").await;
    let msg = failed["error_message"].as_str().unwrap();
    assert!(msg.starts_with("corrupt PDF"), "{msg}");
    let (_, jobs) = get_json(&api, user, &format!("/documents/{id}/jobs")).await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["kind"], "parse");
    assert_eq!(job["status"], "failed");
    assert_eq!(job["retry_count"], 0);
    assert_eq!(job["error_message"], msg);
    assert_eq!(
        jobs["jobs"].as_array().unwrap().len(),
        1,
        "no ingest job after a failed parse"
    );
}

#[tokio::test]
async fn poisoned_file_fails_alone_and_the_worker_keeps_serving() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    // broken-page.pdf makes the PDF library panic; the worker must survive.
    let bad = upload(&api, user, "broken-page.pdf").await;
    let good = upload(&api, user, "handbook.txt").await;
    let failed = wait_status(&api, user, bad["id"].as_str().unwrap(), "error").await;
    assert!(
        failed["error_message"]
            .as_str()
            .unwrap()
            .contains("corrupt PDF"),
        "{failed}"
    );
    wait_status(&api, user, good["id"].as_str().unwrap(), "ingested").await;
    let after = upload(&api, user, "handbook.md").await;
    wait_status(&api, user, after["id"].as_str().unwrap(), "ingested").await;
}

/// Waits until the document's job is claimed; returns its lease owner.
async fn running_job_owner(db: &TestDb, doc: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let rows = db
            .query(&format!(
                "SELECT lease_owner FROM jobs WHERE document_id = '{doc}' AND status = 'running'"
            ))
            .await;
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(std::time::Instant::now() < deadline, "job never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_worker_s_job_is_finished_by_another() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let lease = [("RAG_JOB_LEASE_SECS", "2"), ("RAG_WORKER_POLL_MS", "200")];
    // This worker sleeps inside every job, so it is surely mid-job when killed.
    let mut stuck = worker(
        &db,
        "parse",
        &[lease[0], lease[1], ("RAG_WORKER_JOB_DELAY_MS", "600000")],
    );
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    let owner = running_job_owner(&db, id).await;
    assert!(owner.contains(&format!(":{}:", stuck.pid())), "{owner}");
    stuck.signal(libc::SIGKILL);
    stuck.wait_exit().await;

    let rescuer = worker(&db, "parse", &lease);
    let _i = worker(&db, "ingest", &lease);
    wait_status(&api, user, id, "ingested").await;
    let row = &db
        .query(&format!(
            "SELECT status, retry_count FROM jobs WHERE document_id = '{id}' AND kind = 'parse'"
        ))
        .await[0];
    assert_eq!(row.get::<_, String>(0), "success");
    assert_eq!(row.get::<_, i32>(1), 1, "the lapsed attempt counts");
    assert!(
        rescuer.logs().contains(ragctl::workers::LEASE_LAPSED),
        "{}",
        rescuer.logs()
    );
    assert!(
        rescuer
            .logs()
            .contains("took over a job whose lease ran out"),
        "{}",
        rescuer.logs()
    );
}

/// A file that kills every worker that parses it must not loop forever:
/// each lapsed lease is a failed attempt, and the last one fails the job.
#[tokio::test]
async fn a_job_whose_workers_keep_dying_ends_failed() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let lease = [("RAG_JOB_LEASE_SECS", "2"), ("RAG_WORKER_POLL_MS", "200")];
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    let mut stuck = worker(
        &db,
        "parse",
        &[lease[0], lease[1], ("RAG_WORKER_JOB_DELAY_MS", "600000")],
    );
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    running_job_owner(&db, id).await;
    // As if the earlier attempts had died the same way.
    db.query(&format!(
        "UPDATE jobs SET retry_count = max_retries WHERE document_id = '{id}' AND kind = 'parse'"
    ))
    .await;
    stuck.signal(libc::SIGKILL);
    stuck.wait_exit().await;

    let _rescuer = worker(&db, "parse", &lease);
    let body = wait_status(&api, user, id, "error").await;
    assert_eq!(body["error_message"], ragctl::workers::LEASE_LAPSED);
    let (_, jobs) = get_json(&api, user, &format!("/documents/{id}/jobs")).await;
    let parse = &jobs["jobs"][0];
    assert_eq!(parse["status"], "failed", "{jobs}");
    assert_eq!(parse["retry_count"], 3, "{jobs}");
    // The client hears it like any other final failure.
    let failed = client
        .expect("the failed job", |f| {
            f["type"] == "job.status_updated" && f["payload"]["status"] == "failed"
        })
        .await;
    assert_eq!(
        failed["payload"]["error_message"],
        ragctl::workers::LEASE_LAPSED
    );
    client
        .expect("the document in error", |f| {
            f["type"] == "document.status_updated" && f["payload"]["status"] == "error"
        })
        .await;
}

#[tokio::test]
async fn sigterm_leaves_no_job_running() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let mut w = worker(
        &db,
        "parse",
        &[
            ("RAG_WORKER_JOB_DELAY_MS", "600000"),
            ("RAG_WORKER_SHUTDOWN_GRACE_SECS", "1"),
        ],
    );
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    running_job_owner(&db, id).await;
    w.signal(libc::SIGTERM);
    assert!(w.wait_exit().await.success(), "{}", w.logs());
    let row = &db
        .query(&format!(
            "SELECT status, lease_owner, retry_count FROM jobs WHERE document_id = '{id}'"
        ))
        .await[0];
    assert_eq!(row.get::<_, String>(0), "queued", "{}", w.logs());
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, i32>(2), 0);
    // And another worker picks it up.
    let _p = worker(&db, "parse", &[]);
    wait_status(&api, user, id, "parsed").await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[("RAG_MAX_UPLOAD_BYTES", "2048")]).await;
    let user = Uuid::new_v4();
    let c = http();
    let url = |p: &str| format!("{}{p}", api.url);
    let code = |body: &Value| body["error"]["code"].as_str().unwrap_or("").to_string();

    // No token, a garbage token, a token signed with another secret.
    let r = c.get(url("/documents")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing")
    );
    let r = c
        .get(url("/documents"))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let forged = ragctl::auth::mint("another-secret", user, Duration::from_secs(60)).unwrap();
    let r = c
        .get(url("/documents"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Malformed multipart, no file field, empty file, too large, unsupported.
    let r = c
        .post(url("/documents"))
        .bearer_auth(token(user))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nunterminated")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(url("/documents"))
        .bearer_auth(token(user))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let form = reqwest::multipart::Form::new().text("other", "x");
    let r = c
        .post(url("/documents"))
        .bearer_auth(token(user))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("no `file` field"));
    let (s, body) = upload_bytes(&api, user, "empty.txt", vec![]).await;
    assert_eq!((s, code(&body)), (400, "bad_request".into()), "{body}");
    let (s, body) = upload_bytes(&api, user, "big.txt", vec![b'a'; 4096]).await;
    assert_eq!(
        (s, code(&body)),
        (413, "payload_too_large".into()),
        "{body}"
    );
    let png = std::fs::read(fixture("image.png")).unwrap();
    let (s, body) = upload_bytes(&api, user, "image.png", png).await;
    assert_eq!(
        (s, code(&body)),
        (415, "unsupported_media_type".into()),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("PNG"),
        "{body}"
    );

    // Malformed JSON and empty chat content.
    let conv = new_conversation(&api, user, None).await;
    let conv = conv.as_str();
    for body in [
        "{not json",
        r#"{"text":"no content field"}"#,
        r#"{"content":"   "}"#,
    ] {
        let r = c
            .post(url(&format!("/conversations/{conv}/messages")))
            .bearer_auth(token(user))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(code(&v), "bad_request");
    }

    // Unknown ids, ids that are not UUIDs, unknown routes.
    for path in [
        format!("/documents/{}", Uuid::new_v4()),
        "/documents/not-a-uuid".to_string(),
        format!("/documents/{}/jobs", Uuid::new_v4()),
        format!("/conversations/{}/messages", Uuid::new_v4()),
        "/nope".to_string(),
    ] {
        let (s, body) = get_json(&api, user, &path).await;
        assert_eq!(
            (s, code(&body)),
            (404, "not_found".into()),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn another_users_documents_and_conversations_answer_404() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let doc = upload(&api, alice, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    assert_eq!(
        get_json(&api, alice, &format!("/documents/{id}")).await.0,
        200
    );
    assert_eq!(
        get_json(&api, bob, &format!("/documents/{id}")).await.0,
        404
    );
    assert_eq!(
        get_json(&api, bob, &format!("/documents/{id}/jobs"))
            .await
            .0,
        404
    );
    let (_, bobs) = get_json(&api, bob, "/documents").await;
    assert_eq!(bobs["documents"], json!([]));

    let cid = new_conversation(&api, alice, Some("alice's")).await;
    let cid = cid.as_str();
    assert_eq!(
        get_json(&api, bob, &format!("/conversations/{cid}/messages"))
            .await
            .0,
        404
    );
    let r = http()
        .post(format!("{}/conversations/{cid}/messages", api.url))
        .bearer_auth(token(bob))
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn chat_answers_cite_the_uploaded_document() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    for f in ["handbook.pdf", "handbook.md"] {
        let d = upload(&api, user, f).await;
        wait_status(&api, user, d["id"].as_str().unwrap(), "ingested").await;
    }
    let other = Uuid::new_v4();
    let d = upload(&api, other, "handbook.txt").await;
    wait_status(&api, other, d["id"].as_str().unwrap(), "ingested").await;

    let cid = new_conversation(&api, user, None).await;
    let cid = cid.as_str();
    let r = http()
        .post(format!("{}/conversations/{cid}/messages", api.url))
        .bearer_auth(token(user))
        .json(&json!({"content": "How does reimbursement work?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let answer = &body["assistant_message"];
    assert_eq!(answer["status"], "completed", "{body}");
    let text = answer["content"].as_str().unwrap();
    assert!(text.to_lowercase().contains("reimbursement"), "{text}");
    assert!(text.contains("[1] handbook.pdf, chunk"), "{text}");
    assert_eq!(answer["sources"][0]["filename"], "handbook.pdf");

    // Another user's documents are never retrieved.
    let r = http()
        .post(format!("{}/conversations/{cid}/messages", api.url))
        .bearer_auth(token(user))
        .json(&json!({"content": "Tell me about onboarding"}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(
        !body["assistant_message"]["content"]
            .as_str()
            .unwrap()
            .contains("handbook.txt"),
        "{body}"
    );

    let (_, msgs) = get_json(&api, user, &format!("/conversations/{cid}/messages")).await;
    let roles: Vec<_> = msgs["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].clone())
        .collect();
    assert_eq!(
        roles,
        vec![
            json!("user"),
            json!("assistant"),
            json!("user"),
            json!("assistant")
        ]
    );
}

/// Listens on the event channel like any consumer would, and checks every
/// envelope of one upload: contract-valid, in order, and published only
/// after its change was committed.
#[tokio::test]
async fn envelopes_are_published_in_order_after_commit() {
    let db = TestDb::new();
    let (client, mut conn) = ragctl::db::connect(&db.url, "ragctl-test-listen")
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut stream).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client.batch_execute("LISTEN rag_events").await.unwrap();

    let api = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "handbook.md").await;
    let id = doc["id"].as_str().unwrap().to_string();

    let mut seen = Vec::new();
    loop {
        let payload = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("events stopped")
            .unwrap();
        let ragctl::events::WireMessage::Envelope(env) =
            ragctl::events::decode(&payload).expect("valid envelope")
        else {
            panic!("unexpected fragment")
        };
        assert_eq!(env.user_id, user);
        let p = &env.payload;
        // The change is visible to another session when its event arrives.
        let status: String = client
            .query_one(
                "SELECT status FROM documents WHERE id = $1",
                &[&Uuid::parse_str(&id).unwrap()],
            )
            .await
            .unwrap()
            .get(0);
        if env.kind == ragctl::events::EventType::JobStatusUpdated {
            let job: String = client
                .query_one(
                    "SELECT status FROM jobs WHERE id = $1",
                    &[&Uuid::parse_str(p["job_id"].as_str().unwrap()).unwrap()],
                )
                .await
                .unwrap()
                .get(0);
            let order = ["queued", "running", "success", "failed"];
            let pos = |s: &str| order.iter().position(|o| *o == s).unwrap();
            assert!(
                pos(&job) >= pos(p["status"].as_str().unwrap()),
                "job event {} before commit ({job})",
                p["status"]
            );
        } else {
            let order = ["uploaded", "parsing", "parsed", "ingesting", "ingested"];
            let pos = |s: &str| order.iter().position(|o| *o == s).unwrap();
            assert!(
                pos(&status) >= pos(p["status"].as_str().unwrap()),
                "document event {} before commit ({status})",
                p["status"]
            );
        }
        let short = match env.kind {
            ragctl::events::EventType::JobStatusUpdated => format!(
                "job {} {} {}",
                p["kind"].as_str().unwrap(),
                p["status"].as_str().unwrap(),
                env.origin
            ),
            k => format!(
                "{} {} {}",
                k.as_str(),
                p["status"].as_str().unwrap(),
                env.origin
            ),
        };
        let done = short.starts_with("document.status_updated ingested");
        seen.push(short);
        if done {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![
            "document.created uploaded api",
            "job parse queued api",
            "job parse running worker:parse",
            "document.status_updated parsing worker:parse",
            "job parse success worker:parse",
            "document.status_updated parsed worker:parse",
            "job ingest queued worker:parse",
            "job ingest running worker:ingest",
            "document.status_updated ingesting worker:ingest",
            "job ingest success worker:ingest",
            "document.status_updated ingested worker:ingest",
        ]
    );
}

/// A login role, dropped at the end (declare it before the databases it owns).
struct Role(String);

impl Role {
    fn create(prefix: &str) -> Role {
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        admin(&format!("CREATE ROLE {name} LOGIN"));
        Role(name)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        admin(&format!("DROP ROLE IF EXISTS {}", self.0));
    }
}

/// A role that may not call pg_notify: every publish fails, and the
/// business flow must not notice.
#[tokio::test]
async fn publish_failures_leave_the_business_flow_intact() {
    let role = Role::create("ragctl_nopub");
    let db = TestDb::owned_by(Some(&role.0));
    db.query("REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC")
        .await;
    let url = db.url_as(&role.0);
    let api = Api::start_url(&url, &[], &[]).await;
    let p = Proc::spawn("worker parse", &url, &["worker", "parse"], &FAST_RETRIES);
    let _i = Proc::spawn("worker ingest", &url, &["worker", "ingest"], &FAST_RETRIES);
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "handbook.html").await;
    wait_status(&api, user, doc["id"].as_str().unwrap(), "ingested").await;
    assert!(
        api.proc.logs().contains("event publish failed"),
        "{}",
        api.proc.logs()
    );
    assert!(
        p.logs()
            .contains("permission denied for function pg_notify"),
        "{}",
        p.logs()
    );
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("ragctl_publish_failures_total{reason=\"notify\"}"),
        "{metrics}"
    );
    // `ragctl emit` reports the failed publish once, as its own error, and
    // exits 2 (an authorization error); no library WARN line above it.
    let out = std::process::Command::new(bin())
        .args(["emit", "document.status_updated", "--user"])
        .arg(user.to_string())
        .args(["--set", "status=parsed", "--set"])
        .arg(format!("document_id={}", doc["id"].as_str().unwrap()))
        .env("DATABASE_URL", &url)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("permission denied for function pg_notify"),
        "{stderr}"
    );
    assert!(!stderr.contains("WARN"), "{stderr}");
    // The database goes before its owner role, even when an assertion fails.
    drop((api, p, _i, db));
}

/// sslmode as libpq means it: `require` encrypts without checking the
/// certificate, `verify-full` checks it (and `sslrootcert` supplies the CA).
#[tokio::test]
async fn tls_modes_are_honoured() {
    let db = TestDb::new();
    let ssl_on = db.query("SHOW ssl").await[0].get::<_, String>(0) == "on";
    let base = db.url.split('?').next().unwrap().to_string();
    let require = format!("{base}?sslmode=require");
    let connected = ragctl::db::connect(&require, "ragctl-test-tls").await;
    if !ssl_on {
        let err = connected
            .err()
            .expect("require must fail without server TLS")
            .to_string();
        assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
        return;
    }
    let (client, conn) = connected.expect("sslmode=require connects");
    tokio::spawn(conn);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "sslmode=require did not encrypt");

    // The server's certificate is self-signed: verify-full refuses it.
    let err = ragctl::db::connect(&format!("{base}?sslmode=verify-full"), "ragctl-test-tls")
        .await
        .err()
        .expect("an untrusted certificate must be refused")
        .to_string();
    assert!(err.contains("certificate"), "{err}");

    // With the server's own certificate as root, verify-ca accepts it.
    let cert_file: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    if std::fs::metadata(&cert_file).is_ok() {
        let url = format!("{base}?sslmode=verify-ca&sslrootcert={cert_file}");
        assert!(ragctl::db::connect(&url, "ragctl-test-tls").await.is_ok());
    }
    assert!(
        ragctl::db::connect(&format!("{base}?sslmode=sometimes"), "x")
            .await
            .err()
            .unwrap()
            .to_string()
            .contains("sslmode=sometimes")
    );
}

/// With no API process at all, workers keep working: their publishes go
/// nowhere, the database gets the truth.
#[tokio::test]
async fn workers_keep_working_with_no_api_running() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap().to_string();
    drop(api);
    let _workers = workers(&db);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let status: String = db
            .query(&format!("SELECT status FROM documents WHERE id = '{id}'"))
            .await[0]
            .get(0);
        if status == "ingested" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "stuck at {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listeners = db
        .query(&format!("SELECT 1 FROM pg_stat_activity WHERE application_name = 'ragctl-listener' AND datname = '{}'", db.name))
        .await;
    assert!(listeners.is_empty(), "an API listener was still connected");
}

/// A stand-in for an OpenAI-compatible endpoint: records the requests and
/// answers with `reply` (or HTTP 500 when it is None).
async fn fake_llm(
    reply: Option<&'static str>,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, Value)>>>,
) {
    use axum::Json;
    use axum::http::{HeaderMap, StatusCode};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let log = log.clone();
            async move {
                let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                log.lock().unwrap().push((auth, body));
                match reply {
                    Some(text) => (StatusCode::OK, Json(json!({"choices": [{"message": {"role": "assistant", "content": text}}]}))),
                    None => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "model overloaded"}))),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn ask(api: &Api, user: Uuid, question: &str) -> Value {
    let conv = new_conversation(api, user, None).await;
    let r = http()
        .post(format!("{}/conversations/{conv}/messages", api.url))
        .bearer_auth(token(user))
        .json(&json!({"content": question}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["assistant_message"].clone()
}

#[tokio::test]
async fn chat_uses_the_llm_endpoint_when_configured() {
    let (url, seen) = fake_llm(Some("Reimbursement needs an itemised receipt [1].")).await;
    let db = TestDb::new();
    let api = Api::start(
        &db,
        &[],
        &[
            ("RAG_LLM_URL", &url),
            ("RAG_LLM_API_KEY", "sk-test"),
            ("RAG_LLM_MODEL", "tiny"),
        ],
    )
    .await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    let d = upload(&api, user, "handbook.pdf").await;
    wait_status(&api, user, d["id"].as_str().unwrap(), "ingested").await;

    let answer = ask(&api, user, "How does reimbursement work?").await;
    assert_eq!(answer["status"], "completed", "{answer}");
    let text = answer["content"].as_str().unwrap();
    assert!(
        text.starts_with("Reimbursement needs an itemised receipt [1]."),
        "{text}"
    );
    assert!(text.contains("Sources:\n[1] handbook.pdf, chunk"), "{text}");
    let (auth, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(body["model"], "tiny");
    let prompt = body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        prompt.contains("[1] (handbook.pdf, chunk") && prompt.contains("reimbursement"),
        "{prompt}"
    );

    // A failing endpoint marks the message `error`, with the reason.
    let (bad_url, _) = fake_llm(None).await;
    let api2 = Api::start(&db, &[], &[("RAG_LLM_URL", &bad_url)]).await;
    let answer = ask(&api2, user, "How does reimbursement work?").await;
    assert_eq!(answer["status"], "error", "{answer}");
    assert!(
        answer["error_message"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"),
        "{answer}"
    );
}
