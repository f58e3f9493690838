//! Terminals: allocating a PTY pair and setting its window size. Its ioctls are the only
//! `unsafe` outside the ring room.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::pty::{Winsize, openpty};

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, Winsize);
nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, Winsize);

/// A pseudo-terminal: the master (the switchboard's side) and the slave (the
/// container's stdin, stdout and stderr). Both are close-on-exec.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Allocates a PTY pair with the kernel's default settings (canonical mode, echo, ONLCR,
/// signals), as Mesos leaves them.
pub fn open() -> io::Result<Pty> {
    let pty = openpty(None, None)?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    }
    Ok(Pty {
        master: pty.master,
        slave: pty.slave,
    })
}

/// Sets the window size of the terminal behind `fd` (a PTY master or slave). The kernel
/// sends SIGWINCH to the terminal's foreground process group. The pixel sizes are zero.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, columns: u16) -> io::Result<()> {
    let size = Winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points to a
    // live local of that type; the descriptor is borrowed, so it is open.
    unsafe { tiocswinsz(fd.as_raw_fd(), &size) }?;
    Ok(())
}

/// The window size of the terminal behind `fd`, as (rows, columns).
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut size = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points to
    // a live local of that type; the descriptor is borrowed, so it is open.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut size) }?;
    Ok((size.ws_row, size.ws_col))
}

/// Makes the command's process start a new session (so it outlives our terminal and
/// process group) and, with `controlling_terminal`, take its stdin (a PTY slave) as its
/// controlling terminal, so that a shell in it gets job control and `^C` signals. Only
/// descriptors up to `last_fd` are inherited: any other the parent holds without
/// close-on-exec (leaked to it by its own parent) is closed at exec.
pub fn new_session(cmd: &mut std::process::Command, controlling_terminal: bool, last_fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: setsid(2), ioctl(2) and close_range(2) are, and
    // nothing here allocates or takes a lock. It runs after the standard descriptors and
    // earlier hooks (such as descriptor mappings) were set up.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if controlling_terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Descriptors the parent leaked (not close-on-exec) end at exec. Marked rather
            // than closed, so the spawn's own error-reporting pipe keeps working.
            let first = (last_fd + 1) as libc::c_uint;
            if libc::close_range(first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A terminal in raw mode until this is dropped (the settings it had are restored).
pub struct RawMode {
    fd: std::os::fd::OwnedFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Puts the terminal behind `fd` into raw mode: no echo, no line editing, no signals
    /// from keys, no output processing.
    pub fn enable(fd: BorrowedFd<'_>) -> io::Result<RawMode> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let fd = fd.try_clone_to_owned()?;
        let saved = tcgetattr(&fd)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&fd, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { fd, saved })
    }

    /// Restores the saved settings now (also done on drop).
    pub fn restore(&self) {
        let _ = nix::sys::termios::tcsetattr(&self.fd, nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn window_sizes_round_trip() {
        let pty = open().unwrap();
        assert_eq!(window_size(pty.slave.as_fd()).unwrap(), (0, 0));
        set_window_size(pty.master.as_fd(), 24, 80).unwrap();
        assert_eq!(window_size(pty.slave.as_fd()).unwrap(), (24, 80));
        let (r, w) = nix::unistd::pipe().unwrap();
        let err = set_window_size(w.as_fd(), 1, 1).unwrap_err();
        assert_eq!(crate::sys::strerror(&err), "Inappropriate ioctl for device");
        drop(r);
    }
}
