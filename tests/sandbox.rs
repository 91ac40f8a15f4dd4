//! The parser sandbox, checked from inside: `ragctl __extract --self-test`
//! runs through the same spawn path as an extraction and tries everything
//! the sandbox forbids; every fixture type still extracts under it; and
//! `serve`'s worker children hold no JWT secret.

mod common;

use std::os::fd::IntoRawFd;
use std::path::Path;
use std::time::Instant;

use common::*;
use ragctl::rag::sandbox::{self, Limits, SandboxError};
use ragctl::rag::self_test::Probe;
use serde_json::{Value, json};
use uuid::Uuid;

fn exe() -> &'static Path {
    Path::new(bin())
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Leaves a descriptor open without close-on-exec in this process, as a
/// careless launcher would: the child must not keep it.
fn leak_inheritable_fd() -> i32 {
    let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on a descriptor we own (and leak).
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    fd
}

#[tokio::test]
async fn every_restriction_holds_inside_the_child() {
    let leaked = leak_inheritable_fd();
    let limits = Limits::default();
    let report = sandbox::self_test(exe(), Probe::Report, &limits)
        .await
        .unwrap_or_else(|e| panic!("the self-test did not report: {e}"));
    let report: Value = serde_json::from_str(&report).unwrap();

    let checks = report["checks"].as_array().unwrap();
    let failed: Vec<&Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    assert!(
        failed.is_empty(),
        "restrictions that do not hold: {failed:#?}"
    );
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for expected in [
        "open_file",
        "read_proc_self",
        "create_file",
        "memfd_create",
        "socket_inet",
        "socket_unix",
        "execve",
        "fork",
        "new_thread",
        "ptrace_attach",
        "kill_other",
        "tgkill_other",
        "exec_memory",
        "setuid_root",
        "setgid_root",
        "no_new_privs",
        "dumpable",
        "set_dumpable",
        "seccomp_mode",
        "parent_death_signal",
        "raise_nofile",
        "open_fds",
        "environment_empty",
        "thread_uid",
        "thread_seccomp_mode",
        "thread_no_new_privs",
        "thread_open_file",
    ] {
        assert!(names.contains(&expected), "no {expected} check: {names:?}");
    }

    assert_raw_values(&report, &limits, leaked);
}

/// The raw values of the report, not only the child's verdicts.
fn assert_raw_values(report: &Value, limits: &Limits, leaked: i32) {
    assert_eq!(report["fds"], json!([0, 1, 2]), "fd {leaked} leaked?");
    let rl = &report["rlimits"];
    let both = |v: u64| json!([v, v]);
    assert_eq!(rl["fsize"], both(0));
    assert_eq!(rl["nofile"], both(3));
    assert_eq!(rl["nproc"], both(0));
    assert_eq!(rl["core"], both(0));
    assert_eq!(rl["as"], both(limits.memory_bytes));
    assert_eq!(rl["cpu"], json!([limits.cpu_secs, limits.cpu_secs + 1]));
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if is_root() {
        assert_eq!(report["was_root"], true);
        for key in ["uid", "euid", "gid"] {
            assert_eq!(report[key], 65534, "{key}: {report}");
        }
        assert_eq!(report["groups"], 0);
    } else {
        assert_eq!(report["was_root"], false);
        assert_eq!((&report["uid"], &report["gid"]), (&json!(uid), &json!(gid)));
    }
}

#[tokio::test]
async fn a_call_outside_the_allow_list_kills_the_child_with_a_clear_message() {
    let ended = sandbox::self_test(exe(), Probe::ForbiddenSyscall, &Limits::default()).await;
    match ended {
        Err(e @ SandboxError::Forbidden) => {
            let msg = e.to_string();
            assert!(msg.contains("sandbox forbids (SIGSYS)"), "{msg}");
            assert_eq!(e.label(), "sandbox");
        }
        other => panic!("expected the sandbox to kill the child: {other:?}"),
    }
}

fn read(dir: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every type extracts under the sandbox, and its failure paths (a refusal,
/// a stack overflow that aborts) still name their cause.
#[tokio::test]
async fn every_fixture_type_still_extracts_under_the_sandbox() {
    let limits = Limits::default();
    for (name, mime, needle) in [
        ("handbook.pdf", "application/pdf", "Refund Policy"),
        ("handbook.html", "text/html", "Office Access"),
        ("handbook.md", "text/markdown", "Time Off"),
        ("handbook.txt", "text/plain", "Onboarding"),
    ] {
        let text = sandbox::extract_with(exe(), &read("documents", name), mime, &limits)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(needle), "{name}: {text}");
    }
    let corrupt = sandbox::extract_with(
        exe(),
        &read("documents", "corrupt.pdf"),
        "application/pdf",
        &limits,
    )
    .await;
    assert!(
        matches!(corrupt, Err(SandboxError::Refused(ref m)) if m.contains("corrupt PDF")),
        "{corrupt:?}"
    );
    let deep = sandbox::extract_with(
        exe(),
        &read("hostile", "self-xobject.pdf"),
        "application/pdf",
        &limits,
    )
    .await;
    assert!(matches!(deep, Err(SandboxError::PdfRecursion)), "{deep:?}");
}

/// The children of a process, from /proc (field 4 of `stat` is the ppid).
fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if after_name.split_whitespace().nth(1) == Some(&pid.to_string()) {
            kids.push(child);
        }
    }
    kids
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn environ(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Waits until `serve` has both worker children; their pids.
async fn worker_children(serve: &Proc) -> Vec<i32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let workers: Vec<i32> = children_of(serve.pid())
            .into_iter()
            .filter(|c| cmdline(*c).contains(" worker "))
            .collect();
        if workers.len() == 2 {
            return workers;
        }
        assert!(
            Instant::now() < deadline,
            "no two worker children; log:\n{}",
            serve.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_worker_children_hold_no_jwt_secret() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let ready_file = dir.path().join("ready.json");
    let args = [
        "serve",
        "--port",
        "0",
        "--ready-file",
        ready_file.to_str().unwrap(),
    ];
    let env = [
        ("SUPABASE_JWT_SECRET", "another-secret"),
        ("RAG_WORKER_POLL_MS", "200"),
    ];
    let mut serve = Proc::spawn("serve", &db.url, &args, &env);
    let child = &mut serve.child;
    let ready = ragctl::harness::Ready::wait(&ready_file, PATIENCE, || {
        matches!(child.try_wait(), Ok(None))
    })
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("serve exited; log:\n{}", serve.logs()));
    // serve itself was given both (the check reads the right thing).
    let own = environ(serve.pid());
    assert!(own.iter().any(|v| v.starts_with("RAG_JWT_SECRET=")));
    assert!(own.iter().any(|v| v.starts_with("SUPABASE_JWT_SECRET=")));
    for pid in worker_children(&serve).await {
        let env = environ(pid);
        assert!(
            env.iter().any(|v| v.starts_with("DATABASE_URL=")),
            "{pid}: {env:?}"
        );
        for secret in ["RAG_JWT_SECRET=", "SUPABASE_JWT_SECRET="] {
            assert!(
                !env.iter().any(|v| v.starts_with(secret)),
                "worker {pid} holds {secret}"
            );
        }
    }

    // And the chain serve → worker → sandboxed parser still ingests.
    ingest_through(&ready.url, &serve).await;
}

/// Uploads a PDF to the API at `base` and waits until it is ingested.
async fn ingest_through(base: &str, serve: &Proc) {
    let user = Uuid::new_v4();
    let pdf = reqwest::multipart::Part::bytes(read("documents", "handbook.pdf"));
    let form = reqwest::multipart::Form::new().part("file", pdf.file_name("handbook.pdf"));
    let r = http()
        .post(format!("{base}/documents"))
        .bearer_auth(token(user))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, doc) = get_json_at(base, user, &format!("/documents/{id}")).await;
        if doc["status"] == "ingested" {
            return;
        }
        assert!(doc["status"] != "error", "{doc}");
        assert!(
            Instant::now() < deadline,
            "stuck: {doc}; log:\n{}",
            serve.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether `pid` still runs: gone, or a zombie nobody reaped yet, is not.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            after_name.split_whitespace().next() != Some("Z")
        }
        Err(_) => false,
    }
}

/// A SIGKILLed worker takes its parser children with it (parent-death
/// signal): a CPU bomb must not spin on, on a core nobody counts.
#[tokio::test]
async fn a_killed_worker_leaves_no_parser_running() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let env = [
        ("RAG_PARSE_CPU_FLOOR_SECS", "600"),
        ("RAG_PARSE_CPU_SECS", "600"),
        ("RAG_PARSE_WALL_SECS", "1200"),
        ("RAG_WORKER_CONCURRENCY", "1"),
    ];
    let mut worker = common::worker(&db, "parse", &env);
    let bomb = read("hostile", "xobject-fanout.pdf");
    let (status, body) = upload_bytes(&api, Uuid::new_v4(), "bomb.pdf", bomb).await;
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + PATIENCE;
    let parser = loop {
        let parsers: Vec<i32> = children_of(worker.pid())
            .into_iter()
            .filter(|c| cmdline(*c).contains("__extract"))
            .collect();
        if let Some(p) = parsers.first() {
            break *p;
        }
        assert!(
            Instant::now() < deadline,
            "no parser child; log:\n{}",
            worker.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    worker.signal(libc::SIGKILL);
    worker.wait_exit().await;
    let deadline = Instant::now() + PATIENCE;
    while alive(parser) {
        assert!(
            Instant::now() < deadline,
            "parser {parser} outlived its worker"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
