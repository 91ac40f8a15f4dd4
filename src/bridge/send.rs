//! One write of bytes to a socket that never waits, and what became of it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::task::Poll;

/// What a send that does not wait did.
#[derive(Debug)]
pub enum SendOutcome {
    /// The kernel took this many bytes (0 of a non-empty buffer: the
    /// connection is gone).
    Sent(usize),
    /// The kernel took nothing now; try again when the socket is writable.
    WouldBlock,
    /// The send failed: the connection is broken.
    Failed(io::Error),
}

impl SendOutcome {
    /// A failed send: "not now" (EAGAIN, EINTR) is `WouldBlock`.
    pub fn from_error(e: io::Error) -> SendOutcome {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => SendOutcome::WouldBlock,
            _ => SendOutcome::Failed(e),
        }
    }

    /// What an `AsyncWrite::poll_write` returned.
    pub fn from_poll(p: Poll<io::Result<usize>>) -> SendOutcome {
        match p {
            Poll::Ready(Ok(n)) => SendOutcome::Sent(n),
            Poll::Ready(Err(e)) => SendOutcome::from_error(e),
            Poll::Pending => SendOutcome::WouldBlock,
        }
    }

    /// The raw result of a send system call or completion (`-errno` on
    /// failure).
    pub fn from_raw(res: i32) -> SendOutcome {
        match usize::try_from(res) {
            Ok(n) => SendOutcome::Sent(n),
            Err(_) => SendOutcome::from_error(io::Error::from_raw_os_error(-res)),
        }
    }

    pub fn would_block(&self) -> bool {
        matches!(self, SendOutcome::WouldBlock)
    }
}

/// One non-blocking `send(2)` of `buf` on `fd`.
pub fn send_now(fd: BorrowedFd<'_>, buf: &[u8]) -> SendOutcome {
    // SAFETY: `buf` is valid for its length, and `fd` is borrowed, so open
    // (and not reused for another file) for the length of the call.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    match usize::try_from(n) {
        Ok(n) => SendOutcome::Sent(n),
        Err(_) => SendOutcome::from_error(io::Error::last_os_error()),
    }
}
