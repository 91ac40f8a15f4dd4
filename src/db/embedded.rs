//! The embedded local cluster `ragctl serve` starts when no database is
//! configured: the machine's own `initdb` and `pg_ctl`, a data folder under
//! `.ragctl/`, loopback only, on a free port. As root it runs the cluster as
//! the `postgres` user (PostgreSQL refuses to run as root).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql) or set DATABASE_URL / --database-url"
    )]
    NotInstalled,
    #[error(
        "running as root, but there is no `postgres` user to run the embedded cluster as: create one or set DATABASE_URL / --database-url"
    )]
    NoPostgresUser,
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
}

fn step(step: &'static str) -> impl Fn(std::io::Error) -> EmbeddedError {
    move |e| EmbeddedError::Step {
        step,
        detail: e.to_string(),
    }
}

pub struct Embedded {
    pub url: String,
    pub port: u16,
    data_dir: PathBuf,
    pg_ctl: PathBuf,
    run_as: Option<(u32, u32)>,
}

/// Finds `initdb` and `pg_ctl`: on PATH first, then the newest
/// /usr/lib/postgresql/*/bin.
pub fn find_binaries() -> Result<(PathBuf, PathBuf), EmbeddedError> {
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
    };
    if let (Some(i), Some(c)) = (on_path("initdb"), on_path("pg_ctl")) {
        return Ok((i, c));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| EmbeddedError::NotInstalled)?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    let (_, bin) = versions.pop().ok_or(EmbeddedError::NotInstalled)?;
    Ok((bin.join("initdb"), bin.join("pg_ctl")))
}

fn postgres_ids() -> Result<Option<(u32, u32)>, EmbeddedError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to static storage that we
    // read immediately, before any other getpw* call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(EmbeddedError::NoPostgresUser);
    }
    // SAFETY: non-null pointer returned by getpwnam.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn command(bin: &Path, run_as: Option<(u32, u32)>, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(false);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

async fn output(mut cmd: Command, what: &'static str) -> Result<String, EmbeddedError> {
    let out = cmd.output().await.map_err(step(what))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(EmbeddedError::Step {
            step: what,
            detail: text
                .trim()
                .lines()
                .last()
                .unwrap_or("no output")
                .to_string(),
        })
    }
}

fn free_port() -> Result<u16, EmbeddedError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(step("finding a free port"))?;
    Ok(l.local_addr().map_err(step("finding a free port"))?.port())
}

/// The port of a cluster already running in `data_dir`, read from
/// postmaster.pid (line 4), if its postmaster is alive.
fn running_port(data_dir: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return None;
    }
    lines.nth(2)?.trim().parse().ok()
}

impl Embedded {
    /// Initialises (first time) and starts the cluster, or reuses one that is
    /// already running from this folder.
    pub async fn start(state_dir: &Path) -> Result<Embedded, EmbeddedError> {
        let (initdb, pg_ctl) = find_binaries()?;
        let run_as = postgres_ids()?;
        std::fs::create_dir_all(state_dir).map_err(step("creating the state folder"))?;
        let state_dir = state_dir
            .canonicalize()
            .map_err(step("resolving the state folder"))?;
        let data_dir = state_dir.join("pgdata");
        let sock_dir = state_dir.join("run");
        let log = state_dir.join("postgres.log");
        for dir in [&data_dir, &sock_dir] {
            std::fs::create_dir_all(dir).map_err(step("creating the data folder"))?;
        }
        if !log.exists() {
            std::fs::write(&log, b"").map_err(step("creating the log file"))?;
        }
        if let Some((uid, gid)) = run_as {
            for p in [&data_dir, &sock_dir, &log] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(step("chown to postgres"))?;
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(step("chmod of the data folder"))?;
        }
        let pg_ctl_cmd = |args: &[&str]| {
            let mut c = command(&pg_ctl, run_as, &state_dir);
            c.args(args);
            c
        };
        if let Some(port) = running_port(&data_dir) {
            tracing::info!(port, "reusing the embedded PostgreSQL already running");
            return Ok(Embedded::new(data_dir, pg_ctl, run_as, port));
        }
        if !data_dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %data_dir.display(), "initialising the embedded PostgreSQL cluster");
            let mut cmd = command(&initdb, run_as, &state_dir);
            cmd.arg("-D").arg(&data_dir).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]);
            output(cmd, "initdb").await?;
        }
        let port = free_port()?;
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=300 -c fsync=off",
            sock_dir.display()
        );
        let data = data_dir.display().to_string();
        let log_s = log.display().to_string();
        let start = pg_ctl_cmd(&[
            "-D", &data, "-l", &log_s, "-w", "-t", "60", "-o", &opts, "start",
        ]);
        output(start, "pg_ctl start").await.map_err(|e| match e {
            EmbeddedError::Step { step, detail } => EmbeddedError::Step {
                step,
                detail: format!("{detail} (see {log_s})"),
            },
            other => other,
        })?;
        tracing::info!(port, "embedded PostgreSQL started");
        Ok(Embedded::new(data_dir, pg_ctl, run_as, port))
    }

    fn new(data_dir: PathBuf, pg_ctl: PathBuf, run_as: Option<(u32, u32)>, port: u16) -> Embedded {
        Embedded {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"),
            port,
            data_dir,
            pg_ctl,
            run_as,
        }
    }

    /// Restarts the cluster on the same port (fast shutdown: open sessions
    /// are disconnected; pg_ctl reuses the options it was started with).
    pub async fn restart(&self) -> Result<(), EmbeddedError> {
        let cwd = self.data_dir.parent().unwrap_or(Path::new("/"));
        let mut cmd = command(&self.pg_ctl, self.run_as, cwd);
        // A log file, or the new postmaster would hold our stdout pipe open.
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(cwd.join("postgres.log"))
            .args(["-m", "fast", "-w", "-t", "60", "restart"]);
        output(cmd, "pg_ctl restart").await.map(|_| ())
    }

    /// Stops the cluster (fast shutdown: open sessions are disconnected).
    pub async fn stop(&self) -> Result<(), EmbeddedError> {
        let cwd = self.data_dir.parent().unwrap_or(Path::new("/"));
        let mut cmd = command(&self.pg_ctl, self.run_as, cwd);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"]);
        output(cmd, "pg_ctl stop").await.map(|_| ())
    }
}
