//! The parser child confines itself before it reads a byte of the upload,
//! so that code execution in a parser gets nothing: no descriptor but
//! stdin, stdout and stderr, no file, socket, program or process, no
//! privilege, no way to raise a limit, not even its own memory for another
//! process to read. `RLIMIT_AS`, `RLIMIT_CPU` and `RLIMIT_CORE` are set by
//! the parent between fork and exec (`sandbox.rs`); the rest is here,
//! after exec, because a seccomp filter that forbids `execve` can only be
//! installed once the exec is done.
//!
//! Order matters: the extraction thread already runs (its start-up makes
//! calls the filter forbids, and with `RLIMIT_NPROC` 0 no thread can start
//! later); the uid changes before `PR_SET_DUMPABLE`, since a change of uid
//! resets it to `fs.suid_dumpable`; the filter comes last.

use std::io;

use super::seccomp;

/// The uid and gid the child drops to when started as root (`nobody`).
pub const NOBODY: u32 = 65534;
/// `RLIMIT_NOFILE`: stdin, stdout and stderr, nothing more.
pub const MAX_FDS: u64 = 3;
/// `RLIMIT_FSIZE`: no byte written to any file.
pub const MAX_FILE_BYTES: u64 = 0;
/// `RLIMIT_NPROC`: no new process or thread. Per uid, it would also count
/// the service user's other processes, so a nonzero "low" value would fail
/// at random; 0 is exact here because the one extraction thread is started
/// before, and seccomp forbids `clone` besides.
pub const MAX_PROCESSES: u64 = 0;

/// A layer of the confinement that could not be set up: the child refuses
/// to parse rather than parse unconfined.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct ConfineError {
    pub step: &'static str,
    pub detail: String,
}

impl ConfineError {
    fn os(step: &'static str) -> ConfineError {
        ConfineError {
            step,
            detail: io::Error::last_os_error().to_string(),
        }
    }
}

/// What [`enter`] did that the process can no longer see for itself.
#[derive(Debug, Clone, Copy)]
pub struct Confined {
    /// Started as root, so now `nobody`.
    pub was_root: bool,
}

/// Applies every layer to the whole process (all its threads).
pub fn enter() -> Result<Confined, ConfineError> {
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    close_inherited()?;
    // SAFETY: geteuid cannot fail.
    let was_root = unsafe { libc::geteuid() } == 0;
    if was_root {
        drop_root()?;
    }
    // After the uid change, which clears it.
    die_with_parent(parent).map_err(|_| ConfineError::os("PR_SET_PDEATHSIG"))?;
    limit(libc::RLIMIT_FSIZE, MAX_FILE_BYTES, "RLIMIT_FSIZE")?;
    limit(libc::RLIMIT_NOFILE, MAX_FDS, "RLIMIT_NOFILE")?;
    limit(libc::RLIMIT_NPROC, MAX_PROCESSES, "RLIMIT_NPROC")?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(ConfineError::os("PR_SET_DUMPABLE"));
    }
    // SAFETY: as above. Per thread; the filter's TSYNC extends it to all.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::os("PR_SET_NO_NEW_PRIVS"));
    }
    seccomp::install(std::process::id()).map_err(|e| ConfineError {
        step: "seccomp",
        detail: e.to_string(),
    })?;
    Ok(Confined { was_root })
}

/// SIGKILL when the parent (the worker) dies, so that a parse outlives no
/// SIGKILLed worker: it would spin to its CPU budget on a core nobody
/// counts. Set in `pre_exec` and again here, since a change of credentials
/// clears it. Fails if `parent` is already gone (we were re-parented).
pub fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl with integer arguments; getppid cannot fail.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::other("the parent process is gone"));
        }
    }
    Ok(())
}

/// Closes every descriptor above stderr: whatever `serve`'s launcher (or
/// any ancestor) left open without close-on-exec.
fn close_inherited() -> Result<(), ConfineError> {
    // SAFETY: close_range(2) on our own descriptor table; no Rust object
    // owns a descriptor above 2 in this process at this point.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    match rc {
        0 => Ok(()),
        _ => Err(ConfineError::os("close_range")),
    }
}

/// From root: no supplementary groups, then gid and uid `nobody` (real,
/// effective and saved, so there is no way back; the capabilities go with
/// uid 0). glibc applies each change to every thread.
fn drop_root() -> Result<(), ConfineError> {
    // SAFETY: plain identity syscalls through glibc's wrappers.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(ConfineError::os("setgroups"));
        }
        if libc::setresgid(NOBODY, NOBODY, NOBODY) != 0 {
            return Err(ConfineError::os("setresgid"));
        }
        if libc::setresuid(NOBODY, NOBODY, NOBODY) != 0 {
            return Err(ConfineError::os("setresuid"));
        }
    }
    Ok(())
}

/// Sets both the soft and the hard limit (so it cannot be raised again).
fn limit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    step: &'static str,
) -> Result<(), ConfineError> {
    let lim = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: a plain syscall on a local struct.
    match unsafe { libc::setrlimit(resource, &lim) } {
        0 => Ok(()),
        _ => Err(ConfineError::os(step)),
    }
}
