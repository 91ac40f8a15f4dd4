//! The binary this process runs, for re-executing itself (the parser
//! child, `serve`'s worker children).

use std::path::PathBuf;

/// On Linux `/proc/self/exe`, which the kernel resolves to the running
/// image even after a deploy replaced or deleted the file at its path (the
/// child then runs the same version as its parent); elsewhere the path the
/// process was started from.
pub fn path() -> std::io::Result<PathBuf> {
    let proc_exe = std::path::Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe()
}
