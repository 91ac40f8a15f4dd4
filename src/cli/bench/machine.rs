//! The machine the numbers were taken on.

use super::report::Machine;

pub(super) async fn machine(url: &str) -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
    });
    let mem_total_mib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib / 1024)
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    let postgres = async {
        let (client, conn) = crate::db::connect(url, "ragctl-bench-admin").await.ok()?;
        tokio::spawn(conn);
        let row = client.query_one("SHOW server_version", &[]).await.ok()?;
        Some(row.get::<_, String>(0))
    }
    .await;
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        mem_total_mib,
        kernel,
        postgres,
    }
}

impl Machine {
    /// The `machine:` line of the text reports.
    pub(super) fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {} MiB RAM, Linux {}, PostgreSQL {}",
            self.cpus,
            self.cpu_model.as_deref().unwrap_or("?"),
            self.mem_total_mib.map_or("?".into(), |v| v.to_string()),
            self.kernel.as_deref().unwrap_or("?"),
            self.postgres.as_deref().unwrap_or("?"),
        )
    }
}
