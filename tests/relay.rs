//! The NATS relay (issue #21): real `ragctl relay` processes on a fresh
//! database, a real `nats-server` per test, and a NATS subscriber in the
//! test reading what the relay publishes.

mod common;

use std::time::{Duration, Instant};

use common::nats::NatsServer;
use common::{Api, PATIENCE, Proc, TestDb, assert_usage_error, doc_status, publish};
use futures_util::StreamExt;
use serde_json::Value;
use uuid::Uuid;

fn relay(db: &TestDb, nats: &NatsServer, name: &str) -> Proc {
    let args = [
        "relay",
        "--nats-url",
        &nats.url(),
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    Proc::spawn(name, &db.url, &args, &[])
}

/// The value of the metric line of `relay` starting with `prefix`, 0 if none.
async fn metric(relay: &Proc, prefix: &str) -> f64 {
    let line = relay.wait_line("metrics on http://").await;
    let url = &line[line.find("http://").unwrap()..];
    let text = common::http()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Terminates the backends of `db` named `app`.
async fn terminate(db: &TestDb, app: &str) {
    db.query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = '{app}' AND datname = '{}'",
        db.name
    ))
    .await;
}

/// A subscription on `subject`, registered with the server before it returns.
async fn subscribe(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let sub = client.subscribe(subject.to_string()).await.unwrap();
    client.flush().await.unwrap();
    sub
}

/// The next message on `sub` whose JSON matches `pred` (messages before it
/// are skipped).
async fn next_json(
    sub: &mut async_nats::Subscriber,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {PATIENCE:?}"))
            .expect("subscription open");
        let v: Value = serde_json::from_slice(&msg.payload).expect("JSON on the relay subject");
        if pred(&v) {
            return v;
        }
    }
}

/// The next message's payload text on `sub`.
async fn next_text(sub: &mut async_nats::Subscriber, what: &str) -> String {
    let msg = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {PATIENCE:?}"))
        .expect("subscription open");
    String::from_utf8(msg.payload.to_vec()).expect("UTF-8")
}

async fn relay_listeners(db: &TestDb) -> i64 {
    let rows = db
        .query(&format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'ragctl-relay' AND datname = '{}'",
            db.name
        ))
        .await;
    rows[0].get(0)
}

/// Waits until the relay LISTEN backends on `db` are `n`.
async fn wait_listeners(db: &TestDb, n: i64) {
    let deadline = Instant::now() + PATIENCE;
    while relay_listeners(db).await != n {
        assert!(Instant::now() < deadline, "never {n} ragctl-relay backends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which of `procs` logs `needle` (waits for one to).
async fn which_logs<'a>(procs: &'a [&'a Proc], needle: &str) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(i) = procs.iter().position(|p| p.logs().contains(needle)) {
            return i;
        }
        assert!(Instant::now() < deadline, "no process logged {needle:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_error_text(user: Uuid, len: usize) -> ragctl::events::Envelope {
    let mut env = doc_status(user, Uuid::new_v4(), "error");
    env.payload["error_message"] = Value::String("x".repeat(len));
    env
}

#[tokio::test]
async fn one_relay_listens_republishes_and_a_standby_takes_over() {
    let db = TestDb::new();
    let nats = NatsServer::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut relay_sub = subscribe(&client, "ragctl.relay").await;
    let user = Uuid::new_v4();
    let mut user_sub = subscribe(&client, &format!("ragctl.u.{user}")).await;

    let mut a = relay(&db, &nats, "relay a");
    let mut b = relay(&db, &nats, "relay b");
    let first = next_json(&mut relay_sub, "a heartbeat", |v| v["kind"] == "heartbeat").await;
    let leader = which_logs(&[&a, &b], "relay leading").await;
    which_logs(&[&a, &b], "standing by").await;
    assert_eq!(
        relay_listeners(&db).await,
        1,
        "one LISTEN backend for two relays"
    );

    // The envelope's own text, on its user's subject.
    let env = doc_status(user, Uuid::new_v4(), "parsed");
    publish(&db, env.clone()).await;
    let got = next_text(&mut user_sub, "the envelope").await;
    assert_eq!(got, serde_json::to_string(&env).unwrap());
    // A fragmented envelope arrives whole.
    let big = with_error_text(user, 20_000);
    publish(&db, big.clone()).await;
    let got: Value =
        serde_json::from_str(&next_text(&mut user_sub, "the big envelope").await).unwrap();
    assert_eq!(got, serde_json::to_value(&big).unwrap());

    // SIGKILL the leader: the standby leads under a new epoch.
    let (dead, standby) = if leader == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    dead.signal(libc::SIGKILL);
    dead.wait_exit().await;
    let old = first["epoch"].clone();
    let second = next_json(&mut relay_sub, "a new epoch", |v| {
        v["kind"] == "heartbeat" && v["epoch"] != old
    })
    .await;
    wait_listeners(&db, 1).await;
    assert_eq!(metric(standby, "ragctl_relay_failovers_total").await, 1.0);
    assert_eq!(metric(standby, "ragctl_relay_leader").await, 1.0);
    let after = doc_status(user, Uuid::new_v4(), "ingested");
    publish(&db, after.clone()).await;
    // Whatever the old leader published before dying came first.
    let want = serde_json::to_string(&after).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while next_text(&mut user_sub, "the event after failover").await != want {
        assert!(Instant::now() < deadline);
    }

    // SIGTERM: the leader resigns its epoch and exits cleanly.
    standby.signal(libc::SIGTERM);
    let epoch = second["epoch"].clone();
    next_json(&mut relay_sub, "the resignation", |v| {
        v["kind"] == "resigned" && v["epoch"] == epoch
    })
    .await;
    assert!(standby.wait_exit().await.success(), "{}", standby.logs());
    wait_listeners(&db, 0).await;
}

#[tokio::test]
async fn an_envelope_over_max_payload_is_named_not_dropped_silently() {
    let db = TestDb::new();
    let nats = NatsServer::start_with_config("max_payload: 2048\n").expect("nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut relay_sub = subscribe(&client, "ragctl.relay").await;
    let user = Uuid::new_v4();
    let mut user_sub = subscribe(&client, &format!("ragctl.u.{user}")).await;
    let _relay = relay(&db, &nats, "relay");
    next_json(&mut relay_sub, "a heartbeat", |v| v["kind"] == "heartbeat").await;

    // Under the NOTIFY limit (one notification), over the NATS one.
    publish(&db, with_error_text(user, 3_000)).await;
    let msg = next_json(&mut relay_sub, "the oversize notice", |v| {
        v["kind"] == "oversize"
    })
    .await;
    assert_eq!(msg["user_id"], user.to_string());
    assert!(
        msg["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{msg}"
    );
    // The relay goes on.
    let small = doc_status(user, Uuid::new_v4(), "parsed");
    publish(&db, small.clone()).await;
    let got = next_text(&mut user_sub, "the next envelope").await;
    assert_eq!(got, serde_json::to_string(&small).unwrap());
}

#[test]
fn the_nats_bus_wants_its_url() {
    let env = [("RAG_NATS_URL", "")];
    assert_usage_error(
        &["serve", "--bus", "nats"],
        &env,
        &["--nats-url", "RAG_NATS_URL", "--bus nats"],
    );
    assert_usage_error(&["relay"], &env, &["--nats-url", "RAG_NATS_URL"]);
    assert_usage_error(
        &[
            "serve",
            "--bus",
            "nats",
            "--nats-url",
            "nats://h",
            "--nats-prefix",
            "a.*",
        ],
        &[],
        &["--nats-prefix", "RAG_NATS_PREFIX"],
    );
    assert_usage_error(
        &[
            "relay",
            "--nats-url",
            "nats://h",
            "--nats-creds",
            "/nonexistent/x.creds",
        ],
        &[],
        &["--nats-creds", "RAG_NATS_CREDS", "/nonexistent/x.creds"],
    );
}

async fn relay_role(api: &Api) -> Value {
    api.readyz().await.1["relay"]["role"].clone()
}

#[tokio::test]
async fn readyz_reports_the_bus_and_the_relay_role() {
    let db = TestDb::new();
    let plain = Api::start(&db, &[], &[]).await;
    let (_, body) = plain.readyz().await;
    assert_eq!(body["bus"], "postgres");
    assert!(body.get("relay").is_none(), "{body}");
    drop(plain);

    let nats = NatsServer::start().expect("nats-server");
    let url = nats.url();
    let off = Api::start(
        &db,
        &["--bus", "nats", "--nats-url", &url, "--relay", "off"],
        &[],
    )
    .await;
    assert_eq!(off.readyz().await.1["bus"], "nats");
    assert_eq!(relay_role(&off).await, "off");
    let on = Api::start(&db, &["--bus", "nats", "--nats-url", &url], &[]).await;
    let deadline = Instant::now() + PATIENCE;
    while relay_role(&on).await != "leader" {
        assert!(Instant::now() < deadline, "{}", on.proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(relay_listeners(&db).await, 1);

    // A second candidate stands by; when the leader stops, it leads.
    let second = Api::start(&db, &["--bus", "nats", "--nats-url", &url], &[]).await;
    second
        .proc
        .wait_line("another relay leads; standing by")
        .await;
    assert_eq!(relay_role(&second).await, "standby");
    assert_eq!(relay_listeners(&db).await, 1);
    drop(on);
    let deadline = Instant::now() + PATIENCE;
    while relay_role(&second).await != "leader" {
        assert!(Instant::now() < deadline, "{}", second.proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_listeners(&db, 1).await;
}

#[tokio::test]
async fn every_way_the_relay_can_miss_events_is_a_gap_or_a_new_epoch() {
    let db = TestDb::new();
    let mut nats = NatsServer::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut relay_sub = subscribe(&client, "ragctl.relay").await;
    let user = Uuid::new_v4();
    let mut user_sub = subscribe(&client, &format!("ragctl.u.{user}")).await;
    let relay = relay(&db, &nats, "relay");
    let first = next_json(&mut relay_sub, "a heartbeat", |v| v["kind"] == "heartbeat").await;
    let flows = async |user_sub: &mut async_nats::Subscriber, status: &str| {
        let env = doc_status(user, Uuid::new_v4(), status);
        publish(&db, env.clone()).await;
        let want = serde_json::to_string(&env).unwrap();
        while next_text(user_sub, "the event").await != want {}
    };

    // Its LISTEN connection is cut: a gap, in the same epoch.
    terminate(&db, "ragctl-relay").await;
    let gap = next_json(&mut relay_sub, "a gap", |v| v["kind"] == "gap").await;
    assert_eq!(gap["reason"], "relay_listen_reconnected");
    assert_eq!(gap["epoch"], first["epoch"]);
    assert!(
        gap["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{gap}"
    );
    flows(&mut user_sub, "parsing").await;
    let gaps = "ragctl_relay_gaps_total{reason=\"relay_listen_reconnected\"}";
    assert_eq!(metric(&relay, gaps).await, 1.0);
    assert!(metric(&relay, "ragctl_relay_published_total").await >= 1.0);

    // Its lock session is cut: it stops, and leads again under a new epoch.
    terminate(&db, "ragctl-relay-lock").await;
    let old = first["epoch"].clone();
    next_json(&mut relay_sub, "a new epoch", |v| {
        v["kind"] == "heartbeat" && v["epoch"] != old
    })
    .await;
    wait_listeners(&db, 1).await;
    flows(&mut user_sub, "parsed").await;

    // NATS restarts: the relay owes a gap from before the drop. The test's
    // own client may come back after it was sent: the relay's log says it.
    nats.restart().expect("nats-server restart");
    relay.wait_line("relay_nats_reconnected").await;
    // Resubscribed (both subscriptions come back together) once a
    // heartbeat arrives again.
    next_json(&mut relay_sub, "a heartbeat after the restart", |v| {
        v["kind"] == "heartbeat"
    })
    .await;
    flows(&mut user_sub, "ingesting").await;
}

/// A relay whose NATS URL carries `auth@`, and a heartbeat read with `client`.
async fn relays_with(
    db: &TestDb,
    nats: &NatsServer,
    auth: &str,
    client: async_nats::Client,
) -> Proc {
    let url = format!("nats://{auth}@127.0.0.1:{}", nats.port);
    let relay = Proc::spawn("relay", &db.url, &["relay", "--nats-url", &url], &[]);
    let mut sub = subscribe(&client, "ragctl.relay").await;
    next_json(&mut sub, "a heartbeat", |v| v["kind"] == "heartbeat").await;
    relay
}

#[tokio::test]
async fn credentials_in_the_url_are_used_and_never_logged() {
    let db = TestDb::new();
    let addr = |n: &NatsServer| format!("127.0.0.1:{}", n.port);

    let nats = NatsServer::start_with_config("authorization { token: \"t0ken-s3cret\" }\n")
        .expect("nats-server");
    let client = async_nats::ConnectOptions::with_token("t0ken-s3cret".into())
        .connect(addr(&nats))
        .await
        .unwrap();
    let relay = relays_with(&db, &nats, "t0ken-s3cret", client).await;
    drop(relay);

    let nats = NatsServer::start_with_config(
        "authorization { user: \"ragctl\", password: \"pa55-s3cret\" }\n",
    )
    .expect("nats-server");
    let client =
        async_nats::ConnectOptions::with_user_and_password("ragctl".into(), "pa55-s3cret".into())
            .connect(addr(&nats))
            .await
            .unwrap();
    let relay = relays_with(&db, &nats, "ragctl:pa55-s3cret", client).await;
    drop(relay);

    // A wrong password: refused, retried, and the log never shows it.
    let url = format!("nats://ragctl:wr0ng-s3cret@127.0.0.1:{}", nats.port);
    let relay = Proc::spawn("relay", &db.url, &["relay", "--nats-url", &url], &[]);
    relay.wait_line("cannot connect to NATS").await;
    assert!(!relay.logs().contains("s3cret"), "{}", relay.logs());
}

#[tokio::test]
async fn tap_shows_the_envelopes_and_the_relay_as_they_cross_nats() {
    use std::io::BufRead;
    let db = TestDb::new();
    let nats = NatsServer::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut relay_sub = subscribe(&client, "ragctl.relay").await;
    let _relay = relay(&db, &nats, "relay");
    let first = next_json(&mut relay_sub, "a heartbeat", |v| v["kind"] == "heartbeat").await;

    let url = nats.url();
    let args = [
        "tap",
        "--bus",
        "nats",
        "--nats-url",
        &url,
        "--no-tui",
        "--count",
        "2",
    ];
    let mut tap = Proc::spawn_with("tap", &db.url, &args, &[], |cmd| {
        cmd.stdout(std::process::Stdio::piped());
    });
    let stdout = tap.child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
            .collect::<Vec<_>>()
    });
    tap.wait_line("ragctl tap: connected").await;
    let user = Uuid::new_v4();
    let env = doc_status(user, Uuid::new_v4(), "parsed");
    publish(&db, env.clone()).await;
    assert!(tap.wait_exit().await.success(), "{}", tap.logs());
    let lines = lines.join().unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    // The relay line: the epoch the tap found leading.
    let relay = lines
        .iter()
        .find(|l| l.get("relay").is_some())
        .expect("a relay line");
    assert_eq!(relay["relay"]["epoch"], first["epoch"], "{relay}");
    assert_eq!(relay["relay"]["kind"], "heartbeat");
    // The envelope, on its user's subject.
    let event = lines
        .iter()
        .find(|l| l.get("envelope").is_some())
        .expect("an event line");
    assert_eq!(event["channel"], format!("ragctl.u.{user}"));
    assert_eq!(event["valid"], true);
    assert_eq!(event["envelope"]["id"], env.id.to_string());
}

/// A CA and a server certificate for 127.0.0.1 (openssl), in `dir`;
/// returns the CA's path.
fn make_certs(dir: &std::path::Path) -> std::path::PathBuf {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=ragctl-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    dir.join("ca.pem")
}

#[tokio::test]
async fn a_tls_url_is_tls_verified_against_the_system_roots() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new();
    let certs = tempfile::tempdir().unwrap();
    let ca = make_certs(certs.path());
    let dir = certs.path().display();
    let nats = NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: \"{dir}/server.pem\"\n  key_file: \"{dir}/server.key\"\n}}\n"
    ))
    .expect("nats-server");
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.clone())
        .require_tls(true)
        .connect(format!("tls://127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let mut sub = subscribe(&client, "ragctl.relay").await;
    let url = format!("tls://127.0.0.1:{}", nats.port);

    // The system's roots do not know the test's CA: refused (and retried).
    let args = ["relay", "--nats-url", &url];
    let stranger = Proc::spawn_with("relay", &db.url, &args, &[], |cmd| {
        cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    });
    let line = stranger.wait_line("cannot connect to NATS").await;
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    drop(stranger);

    // The CA in the roots (SSL_CERT_FILE is what the system roots read).
    let ca = ca.to_str().unwrap();
    let _relay = Proc::spawn(
        "relay",
        &db.url,
        &["relay", "--nats-url", &url],
        &[("SSL_CERT_FILE", ca)],
    );
    next_json(&mut sub, "a heartbeat over TLS", |v| {
        v["kind"] == "heartbeat"
    })
    .await;
}
