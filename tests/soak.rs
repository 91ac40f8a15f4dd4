//! `ragctl bench --soak` end to end, short and small: its own PostgreSQL
//! cluster (restarted once), two API instances (one restarted), workers,
//! uploads and resuming sockets; the run must pass its own checks, and
//! the report must show that the faults happened and every socket agreed
//! with REST. Needs PostgreSQL's server binaries (initdb, pg_ctl).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The soak's logs folder, from its "logs in PATH (…)" line.
fn logs_dir(line: &str) -> PathBuf {
    let rest = line.split("logs in ").nth(1).expect("a logs line");
    PathBuf::from(rest.split(" (").next().unwrap())
}

#[test]
fn a_short_soak_with_its_faults_passes_its_checks() {
    let out = Command::new(env!("CARGO_BIN_EXE_ragctl"))
        .args(["bench", "--soak", "20s", "--soak-users", "4"])
        .args(["--soak-sockets", "40", "--json"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run ragctl bench --soak");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{stderr}"));
    assert!(out.status.success(), "{report:#}\n{stderr}");
    assert_eq!(report["faults"]["pg_restarts"], 1, "{report:#}");
    assert_eq!(report["faults"]["api_restarts"], 1, "{report:#}");
    assert_eq!(report["agreement"]["sockets"], 40, "{report:#}");
    assert_eq!(report["agreement"]["matching"], 40, "{report:#}");
    assert!(
        report["uploads"]["honest"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert!(
        report["ws"]["caught_up"].as_u64().unwrap() >= 40,
        "{report:#}"
    );
    // Met, or not measured: a 20 s run leaves no instance the warm-up and
    // the minute its growth is judged over, and that is never a pass.
    // Every check passed: its folder (logs, cluster) is gone.
    let line = stderr.lines().find(|l| l.contains("logs in ")).unwrap();
    let logs = logs_dir(line);
    assert!(!logs.parent().unwrap().exists(), "{} left", logs.display());
    let checks = report["checks"].as_array().unwrap();
    for c in checks {
        let ok = c["verdict"] == "ok" && c["met"] == true;
        let unmeasured = c["verdict"] == "not_measured" && c["met"] == false;
        assert!(ok || unmeasured, "{c}\n{report:#}");
    }
    let usage = report["usage"].as_array().unwrap();
    assert_eq!(usage.len(), 2, "{report:#}");
    for u in usage {
        let why = u["not_measured"].as_str().unwrap_or_default();
        assert!(why.starts_with("not measured (too short)"), "{u}");
    }
    // A reading at each start, with the allocator's view from /metrics
    // (api-0 was up, its first trim done, while api-1 started).
    let first = &usage[0]["trail"][0];
    assert!(first["rss_kib"].as_u64().unwrap() > 0, "{report:#}");
    assert!(
        first["heap_in_use_bytes"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    let api0_starts: Vec<u64> = usage[0]["trail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["start"].as_u64().unwrap())
        .collect();
    assert!(
        api0_starts.contains(&2),
        "read after its restart: {report:#}"
    );
}

/// An interrupted soak is no pass: it exits 130 and keeps its logs,
/// naming the folder on stderr.
#[test]
fn an_interrupted_soak_keeps_its_logs() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ragctl"))
        .args(["bench", "--soak", "10m", "--soak-users", "2"])
        .args(["--soak-sockets", "4"])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ragctl bench --soak");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let logs = loop {
        let line = lines.next().expect("stderr closed").unwrap();
        seen.push(line.clone());
        if line.contains("logs in ") {
            break logs_dir(&line);
        }
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    let stderr = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{stderr}");
    let kept = format!("logs kept in {}", logs.display());
    assert!(stderr.contains(&kept), "{stderr}");
    assert!(logs.is_dir(), "{stderr}");
    assert!(!logs.parent().unwrap().join("pg").exists(), "{stderr}");
    std::fs::remove_dir_all(logs.parent().unwrap()).unwrap();
}
