//! Cross-thread wake-up via eventfd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Wakes a backend out of `poll()` from any thread. Cheap to clone; `Send + Sync`.
///
/// Wake-ups are level-like: a `wake()` issued before `poll()` makes the next `poll()` return
/// promptly; several `wake()`s before one `poll()` collapse into one wake-up.
#[derive(Debug, Clone)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// `nonblocking`: the portable backend reads it from epoll (non-blocking); the uring
    /// backend keeps a `Read` armed on it, which needs a blocking eventfd (io_uring returns
    /// `EAGAIN` for reads on `O_NONBLOCK` files instead of waiting).
    pub(crate) fn new(nonblocking: bool) -> io::Result<Self> {
        let mut flags = libc::EFD_CLOEXEC;
        if nonblocking {
            flags |= libc::EFD_NONBLOCK;
        }
        // SAFETY: plain syscall, no pointers.
        let fd = unsafe { libc::eventfd(0, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor we own.
        Ok(Self {
            fd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    /// Wake the backend. Never blocks (the counter cannot realistically overflow).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we keep open.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reset the counter (non-blocking eventfd only).
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}
