//! POSIX record locks (`fcntl`), the kind git-annex takes on its lock files, so
//! that annexmesh and git-annex processes exclude each other. The lock is released
//! when the file is closed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Blocks until an exclusive lock on the whole file is held.
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
