//! The terminal toolkit as a user runs it: the real binary, a real
//! database, and (for the TUI) a real pseudo-terminal.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ragctl::events::ops::{HEAL_OP, HealOutcome, HealReport, OPS_VERSION};
use ragctl::harness::Ready;
use serde_json::Value;
use uuid::Uuid;

async fn wait_for_backend(db: &TestDb, app: &str) {
    let deadline = Instant::now() + PATIENCE;
    while db
        .query(&format!(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = '{app}' AND datname = '{}'",
            db.name
        ))
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "{app} never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // LISTEN follows the connection by a round trip.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// `ragctl tap --count 1` in a 120×30 pseudo-terminal (util-linux
/// `script`). stdin stays open like an idle keyboard (EOF would be typed
/// into the pty).
fn tap_in_pty(db: &TestDb, stderr: Stdio) -> std::process::Child {
    let cmd = format!("stty cols 120 rows 30; exec {} tap --count 1", bin());
    Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("DATABASE_URL", &db.url)
        .env("TERM", "xterm-256color")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("util-linux script is installed")
}

/// The TUI in a pseudo-terminal (util-linux `script`): it draws, shows the
/// event, exits after `--count`, and restores the terminal.
#[tokio::test]
async fn tap_runs_in_a_pseudo_terminal() {
    let db = TestDb::new();
    let mut child = tap_in_pty(&db, Stdio::piped());
    wait_for_backend(&db, "ragctl-tap").await;
    let user = Uuid::new_v4();
    publish(&db, doc_status(user, Uuid::new_v4(), "parsed")).await;
    let keyboard = child.stdin.take();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    drop(keyboard);
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tap failed: {screen}");
    assert!(
        screen.contains("\x1b[?1049h"),
        "never entered the alternate screen"
    );
    assert!(
        screen.contains("ragctl") && screen.contains("FOLLOW"),
        "{screen}"
    );
    assert!(screen.contains("document.status_updated"), "{screen}");
    assert!(screen.contains(&user.to_string()[..8]), "{screen}");
    assert!(
        !screen.contains("INFO"),
        "log lines leaked into the TUI: {screen}"
    );
    let restore = screen.rfind("\x1b[?1049l").expect("terminal not restored");
    assert!(restore > screen.rfind("document.status_updated").unwrap());
}

/// Without a TTY, tap prints JSON Lines, flags invalid payloads with their
/// reason, and stops after `--count`.
#[tokio::test]
async fn tap_prints_json_lines_and_flags_bad_payloads() {
    let db = TestDb::new();
    let child = Command::new(bin())
        .args(["tap", "--count", "2"])
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_backend(&db, "ragctl-tap").await;
    db.query("SELECT pg_notify('rag_events', 'definitely not json')")
        .await;
    let user = Uuid::new_v4();
    publish(&db, doc_status(user, Uuid::new_v4(), "parsed")).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON Lines"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["valid"], false);
    assert_eq!(lines[0]["reason"], "not_json");
    assert_eq!(lines[0]["raw"], "definitely not json");
    assert_eq!(lines[1]["valid"], true);
    assert_eq!(lines[1]["envelope"]["user_id"], user.to_string());
}

/// A heal run as an API process of `channel` reports it.
fn heal_report(channel: &str, instance: &str) -> HealReport {
    let now = chrono::Utc::now();
    HealReport {
        v: OPS_VERSION,
        op: HEAL_OP.into(),
        channel: channel.into(),
        instance: instance.into(),
        reason: "listener_reconnected".into(),
        from: now - chrono::Duration::seconds(3),
        to: Some(now),
        users: 2,
        sockets: 3,
        rows: 4,
        frames: 5,
        duration_ms: 1.5,
        outcome: HealOutcome::Healed,
        error: None,
        at: now,
    }
}

/// Tap listens on the ops channel too: a heal run of its own event channel
/// comes out as a heal record, another deployment's (published before it)
/// does not come out at all, and neither is an event.
#[tokio::test]
async fn tap_prints_heal_runs_of_its_own_channel_only() {
    let db = TestDb::new();
    let mut tap = Proc::spawn_with(
        "tap",
        &db.url,
        &["tap", "--no-tui", "--count", "2"],
        &[],
        |cmd| {
            cmd.stdout(Stdio::piped());
        },
    );
    // Printed once both LISTENs have been acknowledged.
    tap.wait_line("ragctl tap: connected").await;
    let theirs = heal_report("other_events", "theirs:1");
    let mine = heal_report("rag_events", "mine:1");
    let (client, conn) = ragctl::db::connect(&db.url, "ragctl-test").await.unwrap();
    let task = tokio::spawn(conn);
    // One connection, one after the other: delivered in this order.
    for report in [&theirs, &mine] {
        client
            .execute("SELECT pg_notify('ragctl_ops', $1)", &[&report.to_json()])
            .await
            .unwrap();
    }
    drop(client);
    let _ = task.await;
    let user = Uuid::new_v4();
    publish(&db, doc_status(user, Uuid::new_v4(), "parsed")).await;
    let status = tap.wait_exit().await;
    assert!(status.success(), "{}", tap.logs());
    let mut stdout = String::new();
    use std::io::Read;
    tap.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON Lines"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["op"], "bridge.heal", "{stdout}");
    assert_eq!(lines[0]["channel"], "ragctl_ops");
    assert_eq!(
        serde_json::from_value::<HealReport>(lines[0]["heal"].clone()).unwrap(),
        mine
    );
    assert_eq!(lines[0]["raw"], mine.to_json());
    assert!(lines[0].get("valid").is_none(), "a report is not an event");
    assert_eq!(lines[1]["valid"], true);
    assert_eq!(lines[1]["envelope"]["user_id"], user.to_string());
    assert!(!stdout.contains("theirs:1"), "{stdout}");
}

/// The TUI in a pseudo-terminal shows a heal run as a `heal` row with its
/// outcome, and sums it up under the counts.
#[tokio::test]
async fn tap_shows_heal_runs_in_a_pseudo_terminal() {
    let db = TestDb::new();
    let mut child = tap_in_pty(&db, Stdio::null());
    // The screen is read as it is drawn, so the pipe never fills.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut screen = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut screen).unwrap();
        String::from_utf8_lossy(&screen).into_owned()
    });
    wait_for_backend(&db, "ragctl-tap").await;
    let report = heal_report("rag_events", "mine:1").to_json();
    // Until tap takes it (`--count 1`): the LISTEN may trail the connection.
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "tap never took the report");
        db.query(&format!(
            "SELECT pg_notify('ragctl_ops', '{}')",
            report.replace('\'', "''")
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let screen = reader.join().unwrap();
    assert!(status.success(), "tap failed: {screen}");
    // Cells are drawn word by word (the cursor skips blanks).
    for word in ["heal", "users", "rows", "frames", "sock", "healed"] {
        assert!(screen.contains(word), "{word}: {screen}");
    }
    assert!(screen.contains(" heals 1 · last 1.5ms healed "), "{screen}");
    assert!(
        screen.rfind("\x1b[?1049l").expect("terminal not restored")
            > screen.rfind("healed").unwrap()
    );
}

/// Configuration errors name both the flag and the variable, exit 2.
#[test]
fn missing_configuration_names_flag_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["tap", "--no-tui"][..],
        &["token", "--user", "00000000-0000-0000-0000-000000000001"],
    ] {
        let out = Command::new(bin())
            .args(args)
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("RAG_JWT_SECRET")
            .env_remove("SUPABASE_JWT_SECRET")
            .env_remove("RAG_STATE_DIR")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("ragctl: error: "), "{err}");
        let (flag, var) = if args[0] == "tap" {
            ("--database-url", "DATABASE_URL")
        } else {
            ("--jwt-secret", "RAG_JWT_SECRET")
        };
        assert!(err.contains(flag) && err.contains(var), "{err}");
    }
    let out = Command::new(bin())
        .args(["tap", "--channel", "Bad-Name"])
        .env("DATABASE_URL", "postgres://localhost/x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--channel / RAG_EVENTS_CHANNEL"));
}

/// `ragctl serve` with nothing configured starts the embedded cluster,
/// records it in the state file that the other subcommands read, serves
/// the console with a link that signs in, and stops it on SIGTERM.
#[tokio::test]
async fn serve_without_a_database_uses_the_embedded_cluster() {
    let dir = tempfile::Builder::new()
        .prefix("ragctl-embedded")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    // The cluster may run as the `postgres` user, which must reach the folder.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state_dir = dir.path().join(".ragctl");
    let ready_path = dir.path().join("ready.json");
    let args = ["serve", "--port", "0", "--no-workers", "--ready-file"];
    let args = [&args[..], &[ready_path.to_str().unwrap()]].concat();
    let mut serve = Proc::spawn_with("serve", "", &args, &[], |cmd| {
        cmd.current_dir(dir.path());
        for var in [
            "DATABASE_URL",
            "RAG_JWT_SECRET",
            "SUPABASE_JWT_SECRET",
            "RAG_STATE_DIR",
        ] {
            cmd.env_remove(var);
        }
    });
    let child = &mut serve.child;
    let ready = Ready::wait(&ready_path, Duration::from_secs(120), || {
        matches!(child.try_wait(), Ok(None))
    })
    .await;
    let Ok(Some(Ready { url: api_url, .. })) = ready else {
        panic!("serve never came up: {}", serve.logs())
    };
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(state_dir.join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["api_url"], api_url);
    assert!(
        state["database_url"]
            .as_str()
            .unwrap()
            .starts_with("postgres://postgres@127.0.0.1:")
    );

    // The console is on, and its link carries a token of the recorded user.
    let line = serve.wait_line("ragctl: console on ").await;
    let link = line.split("console on ").nth(1).unwrap().trim();
    let link_token = link
        .strip_prefix(&format!("{api_url}/#token="))
        .unwrap_or_else(|| panic!("not a console link: {line}"));
    let verifier = ragctl::auth::Verifier::new(state["jwt_secret"].as_str().unwrap()).unwrap();
    let console_user = verifier.verify(link_token).unwrap().user_id;
    assert_eq!(state["console_user"], console_user.to_string());
    let page = http().get(format!("{api_url}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let r = http()
        .get(format!("{api_url}/documents"))
        .bearer_auth(link_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Another subcommand, run from the same folder, finds it all.
    let user = Uuid::new_v4();
    let out = Command::new(bin())
        .args(["token", "--user", &user.to_string()])
        .current_dir(dir.path())
        .env_remove("RAG_JWT_SECRET")
        .env_remove("SUPABASE_JWT_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = http()
        .get(format!("{api_url}/documents"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    serve.signal(libc::SIGTERM);
    let status = serve.wait_exit().await;
    assert!(status.success());
    assert!(
        !state_dir.join("pgdata/postmaster.pid").exists(),
        "embedded cluster still running"
    );
}
