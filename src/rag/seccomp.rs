//! The parser child's seccomp filter: the system calls extraction makes,
//! found with `strace -f` on every fixture type after the extraction
//! thread is up (memory, futex, signals and the abort path, reading stdin,
//! writing stdout and stderr), and nothing that opens a file or a socket,
//! runs a program, makes a process or changes an identity.
//!
//! Two filters, because a seccompiler filter has one action on match: the
//! *deny* filter returns `EPERM` for the calls a library might try and
//! recover from (and that the self-test probes); the *allow* filter kills
//! the process (`SIGSYS`) on any call outside its list, which includes the
//! denied ones so that the kernel's precedence (kill > errno > allow)
//! yields `EPERM` for them. Both are applied to every thread (`TSYNC`).

use std::collections::BTreeMap;

use libc::c_long;
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// What extraction needs once its thread is running.
const ALLOWED: &[c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    // abort(): raise() is tgkill(getpid(), gettid(), SIGABRT).
    libc::SYS_getpid,
    libc::SYS_gettid,
    // Reading one's own identity and limits (the self-test does).
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getgroups,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Denied with `EPERM` whatever the arguments.
const DENIED: &[c_long] = &[
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_memfd_create,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_capset,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
];

/// The legacy calls of x86_64 that aarch64 only has as `*at` forms.
#[cfg(target_arch = "x86_64")]
const DENIED_LEGACY: &[c_long] = &[
    libc::SYS_open,
    libc::SYS_creat,
    libc::SYS_accept,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_setrlimit,
    libc::SYS_dup2,
    libc::SYS_pipe,
];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_LEGACY: &[c_long] = &[];

/// `getrlimit` exists on x86_64 only (elsewhere `prlimit64` reads too).
#[cfg(target_arch = "x86_64")]
const ALLOWED_LEGACY: &[c_long] = &[libc::SYS_getrlimit];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_LEGACY: &[c_long] = &[];

/// Builds both filters; `pid` is the child's own, the only process it may
/// signal (`tgkill`, for `abort`).
pub fn filters(pid: u32) -> Result<[BpfProgram; 2], seccompiler::Error> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let denied = conditional_denials(pid)?;
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let every = ALLOWED.iter().chain(ALLOWED_LEGACY).chain(DENIED);
    for nr in every.chain(DENIED_LEGACY).chain(denied.keys()) {
        allowed.insert(*nr, Vec::new());
    }
    let mut deny = denied;
    for nr in DENIED.iter().chain(DENIED_LEGACY) {
        deny.insert(*nr, Vec::new());
    }
    let deny = SeccompFilter::new(deny, SeccompAction::Allow, eperm(), arch)?;
    let allow = SeccompFilter::new(
        allowed,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )?;
    Ok([deny.try_into()?, allow.try_into()?])
}

fn eperm() -> SeccompAction {
    SeccompAction::Errno(libc::EPERM as u32)
}

/// Calls allowed with some arguments only: the rules here match the
/// forbidden arguments (conditions of one rule are and-ed, rules or-ed).
fn conditional_denials(pid: u32) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let exec = u64::from(libc::PROT_EXEC as u32);
    let no_exec = || rule(&[(2, Len::Dword, Op::MaskedEq(exec), exec)]);
    // prctl: only reading no_new_privs, dumpable, the seccomp mode and the
    // parent-death signal, and
    // setting no_new_privs (it only ever restricts; installing the second
    // filter does it, under the first).
    let prctl = rule(&[
        (0, Len::Dword, Op::Ne, libc::PR_SET_NO_NEW_PRIVS as u64),
        (0, Len::Dword, Op::Ne, libc::PR_GET_NO_NEW_PRIVS as u64),
        (0, Len::Dword, Op::Ne, libc::PR_GET_DUMPABLE as u64),
        (0, Len::Dword, Op::Ne, libc::PR_GET_SECCOMP as u64),
        (0, Len::Dword, Op::Ne, libc::PR_GET_PDEATHSIG as u64),
    ])?;
    Ok(BTreeMap::from([
        // No executable memory: a foothold cannot map shellcode.
        (libc::SYS_mmap, vec![no_exec()?]),
        (libc::SYS_mprotect, vec![no_exec()?]),
        (libc::SYS_prctl, vec![prctl]),
        // fcntl: F_GETFD only (counting descriptors); no F_DUPFD.
        (
            libc::SYS_fcntl,
            vec![rule(&[(1, Len::Dword, Op::Ne, libc::F_GETFD as u64)])?],
        ),
        // prlimit64: reading (new limit NULL), not setting.
        (
            libc::SYS_prlimit64,
            vec![rule(&[(2, Len::Qword, Op::Ne, 0)])?],
        ),
        // tgkill: to this process only.
        (
            libc::SYS_tgkill,
            vec![rule(&[(0, Len::Dword, Op::Ne, u64::from(pid))])?],
        ),
    ]))
}

fn rule(conditions: &[(u8, Len, Op, u64)]) -> Result<SeccompRule, BackendError> {
    let conditions = conditions
        .iter()
        .map(|(arg, len, op, value)| SeccompCondition::new(*arg, len.clone(), op.clone(), *value))
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions)
}

/// Applies both filters to every thread of the process, the deny filter
/// first: it lets the second one be installed (`prctl(PR_SET_NO_NEW_PRIVS)`
/// and `seccomp` pass it), and the allow filter then forbids `seccomp`.
pub fn install(pid: u32) -> Result<(), seccompiler::Error> {
    for filter in filters(pid)? {
        seccompiler::apply_filter_all_threads(&filter)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_no_call_is_both_allowed_and_denied_outright() {
        let [deny, allow] = filters(std::process::id()).unwrap();
        assert!(!deny.is_empty() && !allow.is_empty());
        for nr in DENIED.iter().chain(DENIED_LEGACY) {
            assert!(!ALLOWED.contains(nr), "syscall {nr} is on both lists");
        }
    }
}
