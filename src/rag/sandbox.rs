//! Text extraction in a child process, where a hostile file can be limited
//! and killed. The parse worker re-executes its own binary as
//! `ragctl __extract --mime M` (its side: [`super::child`]): the upload on
//! stdin, the text on stdout, an empty environment. The child runs under
//! `RLIMIT_AS` (memory), `RLIMIT_CPU` and no core dumps, set between fork
//! and exec, and confines itself before reading input
//! ([`super::confine`]); the worker kills it at the wall-clock limit (both
//! time limits scale with the file's size: [`super::budget`]), reads at
//! most the text cap, and maps how it ended to a message that names the
//! limit it hit. A stack overflow, an allocation failure, a runaway parser
//! thread or a forbidden system call dies with the child, never with the
//! worker.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::budget;
use super::child::EXIT_REFUSED;
use super::extract::APPLICATION_PDF;
use super::self_test::Probe;
/// What is kept of the child's stderr (the rest is drained).
const STDERR_CAP: usize = 16 << 10;

/// The bounds of one extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Address space of the child (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// CPU time of the child (`RLIMIT_CPU`), in seconds: the ceiling, for
    /// the largest files.
    pub cpu_secs: u64,
    /// Wall-clock time before the child is killed: the ceiling.
    pub wall: Duration,
    /// CPU time the smallest file gets (seconds).
    pub cpu_floor_secs: u64,
    /// KiB of input that earn one more CPU second above the floor.
    pub cpu_kib_per_sec: u64,
    /// What a PDF's drawing streams may inflate to, summed over every use.
    pub max_inflated_bytes: u64,
    /// Largest extracted text accepted.
    pub max_text_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 512 << 20,
            cpu_secs: 60,
            wall: Duration::from_secs(120),
            cpu_floor_secs: budget::DEFAULT_CPU_FLOOR_SECS,
            cpu_kib_per_sec: budget::KIB_PER_CPU_SEC,
            max_inflated_bytes: 256 << 20,
            max_text_bytes: 32 << 20,
        }
    }
}

/// How an extraction failed. [`crate::workers::JobError`] decides which of
/// these a retry could change.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The file itself was refused (unsupported, corrupt, empty, too big...).
    #[error("{0}")]
    Refused(String),
    #[error("parsing exceeded the memory limit of {} MiB; file rejected", .0 >> 20)]
    Memory(u64),
    /// The CPU budget (seconds) of this input ("2.4 KB PDF").
    #[error("parsing a {1} exceeded its {0} s CPU budget; file rejected")]
    Cpu(u64, String),
    #[error("parsing a {1} took longer than its {0} s wall-clock budget; file rejected")]
    Wall(u64, String),
    #[error(
        "the PDF's drawing instructions recurse too deeply (stack overflow in the parser); file rejected"
    )]
    PdfRecursion,
    #[error("the document nests too deeply (stack overflow in the parser); file rejected")]
    Recursion,
    #[error("the extracted text is larger than {} MiB (limit); file rejected", .0 >> 20)]
    TextTooLarge(u64),
    /// The parser died on this file (a signal such as SIGSEGV).
    #[error("the parser crashed on this file ({0}); file rejected")]
    Crashed(String),
    /// The seccomp filter killed the parser (SIGSYS).
    #[error(
        "the parser made a system call the sandbox forbids (SIGSYS) and was stopped; file rejected"
    )]
    Forbidden,
    #[error("cannot run the parser process: {0}")]
    Spawn(std::io::Error),
    /// Killed by someone else (an operator, the OOM killer).
    #[error("the parser process was killed from outside ({0})")]
    Killed(String),
    #[error("the parser process failed: {0}")]
    Unexpected(String),
}

impl SandboxError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SandboxError::Refused(_) => "refused",
            SandboxError::Memory(_) => "memory",
            SandboxError::Cpu(..) => "cpu",
            SandboxError::Wall(..) => "wall",
            SandboxError::PdfRecursion | SandboxError::Recursion => "stack",
            SandboxError::TextTooLarge(_) => "text_size",
            SandboxError::Crashed(_) => "crashed",
            SandboxError::Forbidden => "sandbox",
            SandboxError::Spawn(_) => "spawn",
            SandboxError::Killed(_) => "killed",
            SandboxError::Unexpected(_) => "unexpected",
        }
    }
}

/// Extracts `bytes` of type `mime` in a child process under `limits`, its
/// time limits scaled to the size. Dropping the future kills the child.
pub async fn extract(bytes: &[u8], mime: &str, limits: &Limits) -> Result<String, SandboxError> {
    let exe = crate::own_exe::path().map_err(SandboxError::Spawn)?;
    extract_with(&exe, bytes, mime, limits).await
}

/// [`extract`], running the `ragctl` binary at `exe` (tests, whose own
/// executable is not `ragctl`).
#[doc(hidden)]
pub async fn extract_with(
    exe: &Path,
    bytes: &[u8],
    mime: &str,
    limits: &Limits,
) -> Result<String, SandboxError> {
    let limits = &limits.for_input(bytes.len() as u64);
    let args = [
        format!("--mime={mime}"),
        format!("--max-inflated-bytes={}", limits.max_inflated_bytes),
    ];
    let input = budget::describe(bytes.len() as u64, mime);
    run(exe, &args, bytes, limits, mime == APPLICATION_PDF, input).await
}

/// Runs `ragctl __extract --self-test` (at `exe`) through the same spawn
/// path as an extraction: the JSON report of [`super::self_test`], or how
/// the child ended.
#[doc(hidden)]
pub async fn self_test(exe: &Path, probe: Probe, limits: &Limits) -> Result<String, SandboxError> {
    let args = [format!("--self-test={}", probe.as_str())];
    run(exe, &args, &[], limits, false, "self-test".into()).await
}

async fn run(
    exe: &Path,
    args: &[String],
    bytes: &[u8],
    limits: &Limits,
    pdf: bool,
    input: String,
) -> Result<String, SandboxError> {
    let mut child = spawn(exe, args, limits)?;
    let ran = tokio::time::timeout(limits.wall, collect(&mut child, bytes, limits)).await;
    let (status, stdout, stderr) = match ran {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            let _ = child.kill().await;
            return Err(e);
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(SandboxError::Wall(limits.wall.as_secs(), input));
        }
    };
    let ended = Ended {
        code: status.code(),
        signal: status.signal(),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    outcome(ended, limits, pdf, input)
}

fn spawn(exe: &Path, args: &[String], limits: &Limits) -> Result<Child, SandboxError> {
    let mut cmd = Command::new(exe);
    cmd.arg("__extract")
        .args(args)
        // The parser needs nothing from the worker's environment (secrets).
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (memory, cpu) = (limits.memory_bytes, limits.cpu_secs);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: setrlimit, prctl and getppid are async-signal-safe; nothing
    // else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            super::confine::die_with_parent(parent)?;
            apply_rlimits(memory, cpu)
        });
    }
    cmd.spawn().map_err(SandboxError::Spawn)
}

fn apply_rlimits(memory: u64, cpu: u64) -> std::io::Result<()> {
    let set = |resource, soft: u64, hard: u64| {
        let lim = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: a plain syscall on a local struct.
        match unsafe { libc::setrlimit(resource, &lim) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    set(libc::RLIMIT_AS, memory, memory)?;
    // SIGXCPU at the soft limit; SIGKILL a second later if it is ignored.
    set(libc::RLIMIT_CPU, cpu, cpu + 1)?;
    set(libc::RLIMIT_CORE, 0, 0)
}

/// Feeds stdin, reads stdout (bounded) and stderr (kept bounded, drained),
/// and waits for the exit.
async fn collect(
    child: &mut Child,
    bytes: &[u8],
    limits: &Limits,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), SandboxError> {
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(SandboxError::Unexpected(
            "the child's pipes are missing".into(),
        ));
    };
    let feed = async move {
        // A child that dies early closes the pipe: its exit says why.
        let _ = stdin.write_all(bytes).await;
        Ok(())
    };
    let max = limits.max_text_bytes;
    let out = async move {
        let mut buf = Vec::new();
        let io = |e: std::io::Error| SandboxError::Unexpected(format!("reading the text: {e}"));
        stdout
            .take(max + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        if buf.len() as u64 > max {
            return Err(SandboxError::TextTooLarge(max));
        }
        Ok(buf)
    };
    let err = async move { Ok(read_capped(stderr, STDERR_CAP).await) };
    let ((), stdout, stderr) = tokio::try_join!(feed, out, err)?;
    let status = child
        .wait()
        .await
        .map_err(|e| SandboxError::Unexpected(format!("waiting for the child: {e}")))?;
    Ok((status, stdout, stderr))
}

async fn read_capped(mut from: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = from.read(&mut chunk).await {
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    kept
}

/// How the child ended.
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Maps the child's end to the text or to the limit it hit.
fn outcome(
    ended: Ended,
    limits: &Limits,
    pdf: bool,
    input: String,
) -> Result<String, SandboxError> {
    match ended.code {
        Some(0) => {
            return String::from_utf8(ended.stdout)
                .map_err(|_| SandboxError::Unexpected("the parser wrote invalid UTF-8".into()));
        }
        Some(c) if c == i32::from(EXIT_REFUSED) => {
            let why = String::from_utf8_lossy(&ended.stdout).trim().to_owned();
            return Err(SandboxError::Refused(why));
        }
        _ => {}
    }
    // Rust's runtime says why it aborted, before the SIGABRT.
    if ended.stderr.contains("has overflowed its stack") {
        return Err(if pdf {
            SandboxError::PdfRecursion
        } else {
            SandboxError::Recursion
        });
    }
    if ended.stderr.contains("memory allocation of") {
        return Err(SandboxError::Memory(limits.memory_bytes));
    }
    let last_line = || {
        let line = ended.stderr.lines().rev().find(|l| !l.trim().is_empty());
        line.unwrap_or("no message")
            .chars()
            .take(200)
            .collect::<String>()
    };
    match ended.signal {
        Some(libc::SIGXCPU) => Err(SandboxError::Cpu(limits.cpu_secs, input)),
        Some(libc::SIGSYS) => Err(SandboxError::Forbidden),
        Some(s @ (libc::SIGSEGV | libc::SIGBUS | libc::SIGABRT | libc::SIGILL | libc::SIGFPE)) => {
            Err(SandboxError::Crashed(signal_name(s)))
        }
        Some(s) => Err(SandboxError::Killed(signal_name(s))),
        None => Err(SandboxError::Unexpected(format!(
            "exit code {}: {}",
            ended.code.unwrap_or(-1),
            last_line()
        ))),
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return format!("signal {sig}"),
    };
    name.to_owned()
}

impl Limits {
    /// These limits with the time limits of a file of `size` bytes: the
    /// configured ones are the ceilings.
    pub fn for_input(&self, size: u64) -> Limits {
        let ceiling = budget::Budget {
            cpu_secs: self.cpu_secs,
            wall: self.wall,
        };
        let b = budget::for_size(size, self.cpu_floor_secs, self.cpu_kib_per_sec, ceiling);
        Limits {
            cpu_secs: b.cpu_secs,
            wall: b.wall,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_keep_all_but_the_time_limits() {
        let base = Limits::default();
        let small = base.for_input(1_100);
        assert_eq!((small.cpu_secs, small.wall), (1, Duration::from_secs(10)));
        assert_eq!(small.memory_bytes, base.memory_bytes);
        assert_eq!(base.for_input(25 << 20), base);
    }

    fn ended(code: Option<i32>, signal: Option<i32>, stdout: &str, stderr: &str) -> Ended {
        Ended {
            code,
            signal,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.to_owned(),
        }
    }

    fn message(e: Ended, pdf: bool) -> String {
        outcome(e, &Limits::default(), pdf, "1.1 KB PDF".into())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_clean_exit_is_the_text_and_65_is_the_refusal() {
        let ok = outcome(
            ended(Some(0), None, "hello", ""),
            &Limits::default(),
            false,
            String::new(),
        );
        assert_eq!(ok.unwrap(), "hello");
        let refused = message(ended(Some(65), None, "corrupt PDF: bad xref\n", ""), true);
        assert_eq!(refused, "corrupt PDF: bad xref");
    }

    #[test]
    fn each_way_of_dying_names_its_limit() {
        let overflow =
            "\nthread 'extract' has overflowed its stack\nfatal runtime error: stack overflow";
        let abrt = Some(libc::SIGABRT);
        assert_eq!(
            message(ended(None, abrt, "", overflow), true),
            "the PDF's drawing instructions recurse too deeply (stack overflow in the parser); file rejected"
        );
        assert!(message(ended(None, abrt, "", overflow), false).contains("nests too deeply"));
        let oom = "memory allocation of 16777216 bytes failed\n";
        assert_eq!(
            message(ended(None, abrt, "", oom), true),
            "parsing exceeded the memory limit of 512 MiB; file rejected"
        );
        assert_eq!(
            message(ended(None, Some(libc::SIGXCPU), "", ""), true),
            "parsing a 1.1 KB PDF exceeded its 60 s CPU budget; file rejected"
        );
        assert!(message(ended(None, Some(libc::SIGSEGV), "", ""), true).contains("SIGSEGV"));
        assert!(message(ended(None, Some(libc::SIGKILL), "", ""), true).contains("from outside"));
        let sigsys = message(ended(None, Some(libc::SIGSYS), "", ""), true);
        assert!(sigsys.contains("sandbox forbids (SIGSYS)"), "{sigsys}");
        let odd = message(
            ended(Some(2), None, "", "error: unexpected argument\n"),
            true,
        );
        assert!(
            odd.contains("exit code 2: error: unexpected argument"),
            "{odd}"
        );
    }

    #[test]
    fn labels_are_stable_for_metrics() {
        assert_eq!(SandboxError::Memory(1).label(), "memory");
        assert_eq!(SandboxError::PdfRecursion.label(), "stack");
        assert_eq!(SandboxError::Wall(1, String::new()).label(), "wall");
    }
}
