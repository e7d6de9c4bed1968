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

/// The CPU ids this thread may run on (its affinity mask, inherited from the process), in
/// ascending order; never empty (on error: `0..available_parallelism`).
pub fn allowed_cores() -> Vec<usize> {
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = calling thread; `set` is valid for writes of its size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let cores: Vec<usize> = if rc == 0 {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `set` was filled in by the kernel; every index is < CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cores.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cores
    }
}

/// Number of cores this process may run on (its affinity mask), at least 1.
pub fn available_cores() -> usize {
    allowed_cores().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask as the kernel reports it, not `0..n`: pinned to its last core, a thread
    /// sees that core alone.
    #[test]
    fn allowed_cores_are_the_mask() {
        let cores = allowed_cores();
        assert!(!cores.is_empty());
        assert_eq!(available_cores(), cores.len());
        let last = *cores.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(last).unwrap();
            assert_eq!(allowed_cores(), [last]);
        })
        .join()
        .unwrap();
    }
}
