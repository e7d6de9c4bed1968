//! CPU affinity.

use super::IoError;

/// Pin the calling thread to `core` (best effort: returns the OS error, callers may log
/// and carry on).
pub fn pin_current_thread(core: usize) -> Result<(), IoError> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(IoError::Io(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: core < CPU_SETSIZE was checked above.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: pid 0 = calling thread; `set` is a valid cpu_set_t of the size we pass.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(IoError::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Number of cores this process may run on (its affinity mask), at least 1.
pub fn available_cores() -> usize {
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = calling thread; `set` is valid for writes of its size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc == 0 {
        // SAFETY: `set` was filled in by the kernel.
        (unsafe { libc::CPU_COUNT(&set) } as usize).max(1)
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}
