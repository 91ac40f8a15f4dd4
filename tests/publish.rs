//! Event publishing seen from the database: envelopes published in order
//! and only after commit, publish failures that leave the business flow
//! intact, and sslmode honoured as libpq means it.

mod common;

use common::*;
use uuid::Uuid;

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
