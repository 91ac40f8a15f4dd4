//! The embedding model for tests: `$RAG_TEST_EMBED_MODEL`, else
//! `<repo>/target/model/all-MiniLM-L6-v2`, installed by `scripts/model.sh`
//! on first use so a plain `cargo test` works on a fresh machine.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The model directory, installed when missing. Test binaries run in
/// parallel, so the install runs under an exclusive `flock` on
/// `target/model/.lock`; the script itself skips a verified copy.
pub fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("RAG_TEST_EMBED_MODEL") {
            return PathBuf::from(dir);
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = repo.join("target/model");
        let dir = root.join("all-MiniLM-L6-v2");
        if !dir.join("model.safetensors").is_file() {
            install(repo, &root);
        }
        dir
    })
    .clone()
}

fn install(repo: &Path, root: &Path) {
    std::fs::create_dir_all(root).expect("create target/model");
    let lock = File::create(root.join(".lock")).expect("create target/model/.lock");
    // SAFETY: flock on a descriptor this function owns; released on close.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock target/model/.lock: {}",
        std::io::Error::last_os_error()
    );
    let status = Command::new("bash")
        .arg(repo.join("scripts/model.sh"))
        .arg(root)
        .current_dir(repo)
        .status()
        .expect("run scripts/model.sh");
    assert!(
        status.success(),
        "scripts/model.sh {} failed: {status}",
        root.display()
    );
}
