//! `ragctl __extract`: the parser child's side of [`super::sandbox`]. It
//! starts the extraction thread, confines the whole process
//! ([`super::confine`]), and only then reads the upload from stdin and
//! hands it to the thread; the text goes to stdout.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::confine;
use super::extract::{self, ExtractError};
use super::self_test::{self, Probe};

/// The exit code when the file was refused; stdout holds the reason.
pub const EXIT_REFUSED: u8 = 65;
/// The exit code when the child could not start its thread or confine
/// itself (it never parses unconfined); stderr says why.
pub const EXIT_NO_SANDBOX: u8 = 71;
/// The extraction thread's stack: fixed, so that recursion depth does not
/// depend on `ulimit -s` and overflows into a guard page.
const STACK_BYTES: usize = 16 << 20;

/// `ragctl __extract`: the child's side.
#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    /// Type of the upload on stdin, as detected at upload.
    #[arg(long, required_unless_present = "self_test")]
    pub mime: Option<String>,
    /// See [`super::sandbox::Limits::max_inflated_bytes`].
    #[arg(long, default_value_t = u64::MAX)]
    pub max_inflated_bytes: u64,
    /// Confine, then try what the sandbox forbids and report (tests).
    #[arg(long, value_enum)]
    pub self_test: Option<Probe>,
}

/// The extraction thread, started before the confinement and waiting for
/// its one task.
struct Runner<T> {
    task: mpsc::SyncSender<Box<dyn FnOnce() -> T + Send>>,
    thread: JoinHandle<Option<T>>,
}

impl<T: Send + 'static> Runner<T> {
    /// Starts the thread and waits until it runs (its start-up calls are
    /// behind it before the filter goes on).
    fn start() -> std::io::Result<Runner<T>> {
        let (task, tasks) = mpsc::sync_channel::<Box<dyn FnOnce() -> T + Send>>(1);
        let (ready, up) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("extract".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let _ = ready.send(());
                tasks.recv().ok().map(|f| f())
            })?;
        let _ = up.recv();
        Ok(Runner { task, thread })
    }

    /// Runs `f` on the thread; `None` if the thread panicked.
    fn run(self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        self.task.send(Box::new(f)).ok()?;
        self.thread.join().ok().flatten()
    }
}

/// Starts the thread and confines the process, or says why not.
fn start_confined<T: Send + 'static>() -> Result<(Runner<T>, confine::Confined), ExitCode> {
    let runner = Runner::start().map_err(|e| {
        eprintln!("ragctl __extract: cannot start the extraction thread: {e}");
        ExitCode::from(EXIT_NO_SANDBOX)
    })?;
    match confine::enter() {
        Ok(confined) => Ok((runner, confined)),
        Err(e) => {
            eprintln!("ragctl __extract: cannot confine the parser ({e}); not parsing");
            Err(ExitCode::from(EXIT_NO_SANDBOX))
        }
    }
}

/// Runs in the child, before any async runtime or logging (so the address
/// space is the parser's): writes the text (exit 0) or the reason the file
/// was refused (exit 65). Anything worse ends the process and is read by
/// the parent from its exit status and stderr.
pub fn child_main(args: &ExtractArgs) -> ExitCode {
    match args.self_test {
        Some(probe) => self_test_main(probe),
        None => extract_main(args),
    }
}

fn extract_main(args: &ExtractArgs) -> ExitCode {
    let (runner, _) = match start_confined() {
        Ok(started) => started,
        Err(code) => return code,
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("ragctl __extract: cannot read the upload: {e}");
        return ExitCode::from(74);
    }
    let (mime, cap) = (
        args.mime.clone().unwrap_or_default(),
        args.max_inflated_bytes,
    );
    let result = runner
        .run(move || extract::extract_text_capped(&bytes, &mime, cap))
        // Parser panics are caught inside; this is the backstop.
        .unwrap_or_else(|| Err(ExtractError::Corrupt("the parser crashed".into())));
    let (body, code) = match result {
        Ok(text) => (text.into_bytes(), 0),
        Err(e) => (e.to_string().into_bytes(), EXIT_REFUSED),
    };
    write_out(&body, code)
}

fn self_test_main(probe: Probe) -> ExitCode {
    let (runner, confined) = match start_confined() {
        Ok(started) => started,
        Err(code) => return code,
    };
    match probe {
        Probe::ForbiddenSyscall => self_test::forbidden_syscall(),
        Probe::Report => {
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            let on_thread = runner.run(move || self_test::thread_checks(uid));
            write_out(self_test::report(&confined, on_thread).as_bytes(), 0)
        }
    }
}

fn write_out(body: &[u8], code: u8) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(body).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::from(code),
        Err(_) => ExitCode::from(74), // the worker stopped reading: it gave up
    }
}
