//! The few system calls std does not wrap, each in one small unsafe block.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Blocks until an exclusive POSIX record lock (`fcntl`) on the whole file is
/// held: the kind git-annex takes on its lock files, so annexmesh and git-annex
/// processes exclude each other. Released when the file is closed.
#[allow(unsafe_code)]
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: `flock` is a plain C struct; zeroed is a valid value for it, and
    // fcntl(F_SETLKW) only reads it. The descriptor is owned by `file`, which
    // outlives the call.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: see above.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &fl) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Asks the kernel for a larger pipe buffer (Linux `F_SETPIPE_SZ`); fewer, larger
/// reads and writes make streaming through stdio several times cheaper. Best
/// effort: not a pipe, or over the system limit, leaves it as it was.
#[allow(unsafe_code)]
pub fn grow_pipe(fd: impl AsFd, bytes: usize) {
    let raw = fd.as_fd().as_raw_fd();
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl(F_SETPIPE_SZ) takes an int and touches no memory of ours;
    // the descriptor is borrowed for the duration of the call.
    let _ = unsafe { libc::fcntl(raw, libc::F_SETPIPE_SZ, size) };
}

/// Starts writeback of `len` bytes of `file` from `offset` (`len` 0: to the
/// end) without waiting for it (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`).
/// Durability still needs `fdatasync`; this only lets the disk work while we
/// do something else, and lets one later `fdatasync` pass over many files find
/// their data already on its way. Best effort: errors are ignored, since the
/// `fdatasync` that follows reports them.
#[allow(unsafe_code)]
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    let off = libc::off64_t::try_from(offset).unwrap_or(libc::off64_t::MAX);
    let n = libc::off64_t::try_from(len).unwrap_or(0);
    // SAFETY: sync_file_range takes plain integers and touches no memory of
    // ours; the descriptor is owned by `file`, which outlives the call.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Waits until writeback of that range, started earlier, is done, starting it
/// where it was not (`sync_file_range` with `WAIT_BEFORE|WRITE|WAIT_AFTER`).
/// It bounds how much of a large upload is dirty in the page cache at once;
/// it makes nothing durable (no metadata, no disk cache flush). Best effort.
#[allow(unsafe_code)]
pub fn wait_writeback(file: &File, offset: u64, len: u64) {
    let off = libc::off64_t::try_from(offset).unwrap_or(libc::off64_t::MAX);
    let n = libc::off64_t::try_from(len).unwrap_or(0);
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: as in `start_writeback`.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, flags) };
}

/// Writes back every dirty page and inode of the file system holding `file`
/// and waits for it (Linux `syncfs`), with one disk cache flush for all of
/// it, where `fdatasync` on each of N files costs N flushes (on ext4
/// without a journal, as here, every one also writes its inode block
/// synchronously). What was dirty elsewhere on that file system is written
/// too.
#[allow(unsafe_code)]
pub fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: syncfs takes a descriptor, owned by `file`, and no memory.
    let r = unsafe { libc::syncfs(file.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes available to unprivileged users on the file system holding `path`
/// (`statvfs`: `f_bavail × f_frsize`).
#[allow(unsafe_code)]
pub fn available_bytes(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statvfs` is a plain C struct, zeroed is valid; the call writes
    // it and reads the NUL-terminated path, both alive for the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Waits until `fd` is readable (or at its end), for at most `timeout`:
/// `false` when the time ran out first (`poll(2)`).
#[allow(unsafe_code)]
pub fn wait_readable(fd: impl AsFd, timeout: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    let raw = fd.as_fd().as_raw_fd();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut p = libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one pollfd we pass, which lives on
        // our stack for the call; the descriptor is borrowed for its duration.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            if left.is_zero() {
                return Ok(false);
            }
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
