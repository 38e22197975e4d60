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
