//! `ragctl bench --soak` end to end, short and small: its own PostgreSQL
//! cluster (restarted once), two API instances (one restarted), workers,
//! uploads and resuming sockets; the run must pass its own checks, and
//! the report must show that the faults happened and every socket agreed
//! with REST. Needs PostgreSQL's server binaries (initdb, pg_ctl).

use std::process::Command;

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
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["met"] == true), "{report:#}");
}
