//! Small safe helpers over the OS that several rooms use.

use std::io;
use std::os::fd::AsFd;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// The C library's text for an error, without Rust's ` (os error N)` suffix: what Mesos
/// prints (`No such file or directory`).
pub fn strerror(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// [`strerror`] of a negative errno, as io_uring reports errors.
pub fn strerror_res(res: i32) -> String {
    strerror(&io::Error::from_raw_os_error(-res))
}

/// Makes a descriptor non-blocking.
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Raises a pipe's capacity (best effort up to `/proc/sys/fs/pipe-max-size`); returns the
/// capacity it has.
pub fn grow_pipe(fd: impl AsFd, bytes: usize) -> io::Result<usize> {
    let want = i32::try_from(bytes).unwrap_or(i32::MAX);
    match fcntl(&fd, FcntlArg::F_SETPIPE_SZ(want)) {
        Ok(n) => Ok(n as usize),
        Err(_) => Ok(fcntl(&fd, FcntlArg::F_GETPIPE_SZ)? as usize),
    }
}
