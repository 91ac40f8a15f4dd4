//! `ragctl __extract --self-test`: the confined child tries each thing the
//! sandbox forbids, from inside, and prints a JSON report. Tests run it
//! through the same spawn path as an extraction
//! ([`super::sandbox::self_test`]) and check every entry; the report also
//! carries the raw values (uid, limits, open descriptors) so that a test
//! need not trust the child's own verdicts.

use serde::Serialize;
use serde_json::json;

use super::confine;

/// What the self-test does.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Try every forbidden thing that fails with an error; print the report.
    Report,
    /// Make one system call outside the allow list: the kernel kills the
    /// child with SIGSYS.
    ForbiddenSyscall,
}

impl Probe {
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Report => "report",
            Probe::ForbiddenSyscall => "forbidden-syscall",
        }
    }
}

/// One restriction, checked.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Checks that `ret` is a failure with `EPERM`, the filter's answer.
fn denied(name: &'static str, ret: i64) -> Check {
    let errno = std::io::Error::last_os_error();
    let ok = ret == -1 && errno.raw_os_error() == Some(libc::EPERM);
    let detail = match ret {
        -1 => errno.to_string(),
        n => format!("succeeded (returned {n})"),
    };
    Check { name, ok, detail }
}

fn equals(name: &'static str, got: i64, want: i64) -> Check {
    Check {
        name,
        ok: got == want,
        detail: format!("{got} (want {want})"),
    }
}

fn prctl_get(option: libc::c_int) -> i64 {
    // SAFETY: prctl's read-only options with integer arguments.
    i64::from(unsafe { libc::prctl(option, 0, 0, 0, 0) })
}

/// The signal the child gets when its parent dies (`PR_GET_PDEATHSIG`
/// writes it through a pointer).
fn parent_death_signal() -> i64 {
    let mut sig: libc::c_int = -1;
    // SAFETY: PR_GET_PDEATHSIG writes one int to a valid pointer.
    match unsafe {
        libc::prctl(
            libc::PR_GET_PDEATHSIG,
            &mut sig as *mut libc::c_int,
            0,
            0,
            0,
        )
    } {
        0 => i64::from(sig),
        rc => i64::from(rc),
    }
}

/// Tries to open and create files, including the process's own /proc
/// entries (environment, memory).
fn file_checks() -> Vec<Check> {
    let open = |path: &std::ffi::CStr, flags: libc::c_int| -> i64 {
        // SAFETY: a C string path; a descriptor that is returned is leaked
        // on purpose (the report says the check failed).
        i64::from(unsafe { libc::open(path.as_ptr(), flags, 0o600) })
    };
    let create = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;
    // SAFETY: memfd_create with a C string name and no flags.
    let memfd = unsafe { libc::memfd_create(c"probe".as_ptr(), 0) };
    vec![
        denied("open_file", open(c"/etc/passwd", libc::O_RDONLY)),
        denied(
            "read_proc_self",
            open(c"/proc/self/environ", libc::O_RDONLY),
        ),
        denied("create_file", open(c"/tmp/ragctl-sandbox-probe", create)),
        denied("memfd_create", i64::from(memfd)),
    ]
}

/// Network, programs, processes, other processes.
fn escape_checks() -> Vec<Check> {
    let argv = [c"/bin/sh".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: each probe is a syscall with valid pointers or plain integers;
    // a clone that succeeded would return 0 in a child, which exits at once.
    unsafe {
        let fork = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
        if fork == 0 {
            libc::_exit(0);
        }
        let thread = std::thread::Builder::new().spawn(|| ()).map(|_| 0i64);
        vec![
            denied(
                "socket_inet",
                i64::from(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)),
            ),
            denied(
                "socket_unix",
                i64::from(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)),
            ),
            denied(
                "execve",
                i64::from(libc::execve(argv[0], argv.as_ptr(), envp.as_ptr())),
            ),
            denied("fork", fork),
            Check {
                name: "new_thread",
                ok: thread.is_err(),
                detail: format!("{thread:?}"),
            },
            denied("ptrace_attach", libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0)),
            denied("kill_other", i64::from(libc::kill(1, 0))),
            denied("tgkill_other", libc::syscall(libc::SYS_tgkill, 1, 1, 0)),
            denied("exec_memory", mmap_exec()),
        ]
    }
}

/// Maps one anonymous page executable; -1 (with errno) when refused.
fn mmap_exec() -> i64 {
    let prot = libc::PROT_READ | libc::PROT_EXEC;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: an anonymous mapping of one page, never used.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED { -1 } else { p as i64 }
}

/// Privileges and the limits' own locks.
fn privilege_checks() -> Vec<Check> {
    let raise = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: raw identity syscalls and prctl/prlimit with valid pointers.
    unsafe {
        vec![
            denied("setuid_root", libc::syscall(libc::SYS_setuid, 0)),
            denied("setgid_root", libc::syscall(libc::SYS_setgid, 0)),
            equals("no_new_privs", prctl_get(libc::PR_GET_NO_NEW_PRIVS), 1),
            equals("dumpable", prctl_get(libc::PR_GET_DUMPABLE), 0),
            denied(
                "set_dumpable",
                i64::from(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0)),
            ),
            equals("seccomp_mode", prctl_get(libc::PR_GET_SECCOMP), 2),
            equals(
                "parent_death_signal",
                parent_death_signal(),
                i64::from(libc::SIGKILL),
            ),
            denied(
                "raise_nofile",
                i64::from(libc::prlimit(
                    0,
                    libc::RLIMIT_NOFILE,
                    &raise,
                    std::ptr::null_mut(),
                )),
            ),
        ]
    }
}

/// The same properties seen from the extraction thread, which was started
/// before the confinement and must have been brought under it: the same
/// uid as the main thread (`uid`), the filter, no_new_privs.
pub fn thread_checks(uid: u32) -> Vec<Check> {
    // SAFETY: getuid cannot fail; open with a C string path.
    let (own, open) = unsafe {
        (
            libc::getuid(),
            libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY),
        )
    };
    vec![
        equals("thread_uid", i64::from(own), i64::from(uid)),
        equals("thread_seccomp_mode", prctl_get(libc::PR_GET_SECCOMP), 2),
        equals(
            "thread_no_new_privs",
            prctl_get(libc::PR_GET_NO_NEW_PRIVS),
            1,
        ),
        denied("thread_open_file", i64::from(open)),
    ]
}

fn rlimit(resource: libc::__rlimit_resource_t) -> [u64; 2] {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a local struct.
    unsafe { libc::getrlimit(resource, &mut lim) };
    [lim.rlim_cur, lim.rlim_max]
}

/// The descriptors open in this process (probed with `F_GETFD`).
fn open_fds() -> Vec<i32> {
    // SAFETY: F_GETFD on a number that may not be a descriptor (EBADF).
    (0..1024)
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1)
        .collect()
}

/// Who the process is now; checks that it is `nobody` if it was root.
fn identity(confined: &confine::Confined) -> (Vec<Check>, serde_json::Value) {
    // SAFETY: identity getters cannot fail.
    let (uid, euid, gid, groups) = unsafe {
        let groups = libc::getgroups(0, std::ptr::null_mut());
        (libc::getuid(), libc::geteuid(), libc::getgid(), groups)
    };
    let mut checks = Vec::new();
    if confined.was_root {
        let nobody = i64::from(confine::NOBODY);
        checks.push(equals("uid_dropped", i64::from(uid.max(euid)), nobody));
        checks.push(equals("gid_dropped", i64::from(gid), nobody));
        checks.push(equals("no_groups", i64::from(groups), 0));
    }
    let values = json!({
        "was_root": confined.was_root, "uid": uid, "euid": euid, "gid": gid, "groups": groups,
    });
    (checks, values)
}

/// Runs the main thread's checks and builds the report with the thread's.
pub fn report(confined: &confine::Confined, thread: Option<Vec<Check>>) -> String {
    let mut checks = file_checks();
    checks.extend(escape_checks());
    checks.extend(privilege_checks());
    let fds = open_fds();
    checks.push(Check {
        name: "open_fds",
        ok: fds == [0, 1, 2],
        detail: format!("{fds:?}"),
    });
    let env = std::env::vars_os().count();
    checks.push(equals("environment_empty", env as i64, 0));
    checks.extend(thread.unwrap_or_else(|| {
        let detail = "the extraction thread did not report".into();
        vec![Check {
            name: "thread",
            ok: false,
            detail,
        }]
    }));
    let (who, mut values) = identity(confined);
    checks.extend(who);
    values["fds"] = json!(fds);
    values["rlimits"] = json!({
        "as": rlimit(libc::RLIMIT_AS), "cpu": rlimit(libc::RLIMIT_CPU),
        "core": rlimit(libc::RLIMIT_CORE), "fsize": rlimit(libc::RLIMIT_FSIZE),
        "nofile": rlimit(libc::RLIMIT_NOFILE), "nproc": rlimit(libc::RLIMIT_NPROC),
    });
    values["checks"] = json!(checks);
    values.to_string()
}

/// A call outside both lists (`uname`, harmless in itself): the filter's
/// default kills the process, so this never returns.
pub fn forbidden_syscall() -> ! {
    // SAFETY: uname into a zeroed local struct (all-integer fields).
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        libc::syscall(libc::SYS_uname, &mut name);
    }
    eprintln!("ragctl __extract: uname was allowed; the sandbox's default action failed");
    std::process::exit(70)
}
