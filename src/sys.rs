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

/// `bytes` random bytes from the kernel, in hex: names and tokens nobody can guess.
pub fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes a descriptor non-blocking.
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Whether a descriptor is non-blocking (`O_NONBLOCK`); false if that cannot be told.
pub fn is_nonblocking(fd: impl AsFd) -> bool {
    fcntl(&fd, FcntlArg::F_GETFL).is_ok_and(|f| OFlag::from_bits_truncate(f).contains(OFlag::O_NONBLOCK))
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

/// The descriptors this process was started with, noted by [`note_inherited_fds`].
static INHERITED: std::sync::OnceLock<Vec<std::os::fd::RawFd>> = std::sync::OnceLock::new();

/// Notes the descriptors open now, which must be before the process opens any of its
/// own (first thing in `main`): a flag that names a container descriptor may then only
/// name one of these, never one the process opened itself (its log file, its ring).
pub fn note_inherited_fds() {
    use std::os::fd::AsRawFd;
    let Ok(mut dir) = nix::dir::Dir::open(
        "/proc/self/fd",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return;
    };
    let own = dir.as_raw_fd();
    let fds = dir
        .iter()
        .flatten()
        .filter_map(|e| e.file_name().to_str().ok()?.parse().ok())
        .filter(|&fd| fd != own)
        .collect();
    let _ = INHERITED.set(fds);
}

/// Whether `fd` was open when the process started; `None` if that was not noted (a
/// library user's process).
pub fn was_inherited(fd: std::os::fd::RawFd) -> Option<bool> {
    INHERITED.get().map(|fds| fds.contains(&fd))
}

/// What a descriptor is, as far as moving bytes through it goes: whether splice(2) can
/// read from it or write into it without blocking the caller. Decided once, from
/// `fstat` and the status flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pipe or FIFO.
    Pipe,
    /// A regular file; `append` when opened with `O_APPEND`.
    File { append: bool },
    /// A terminal (a PTY's master or slave, a console).
    Tty,
    /// A socket; `stream` for SOCK_STREAM (TCP, unix stream).
    Socket { stream: bool },
    /// `/dev/null`.
    Null,
    /// Any other character device (`/dev/zero`, `/dev/urandom`), a block device, or
    /// anything else.
    Other,
}

impl Kind {
    /// Of the descriptor `fd`.
    pub fn of(fd: impl AsFd) -> io::Result<Kind> {
        use nix::sys::stat::{SFlag, fstat};
        let st = fstat(&fd)?;
        let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        Ok(if fmt == SFlag::S_IFIFO {
            Kind::Pipe
        } else if fmt == SFlag::S_IFREG {
            let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
            Kind::File {
                append: flags.contains(OFlag::O_APPEND),
            }
        } else if fmt == SFlag::S_IFSOCK {
            use nix::sys::socket::{SockType, getsockopt, sockopt};
            Kind::Socket {
                stream: getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == SockType::Stream),
            }
        } else if fmt == SFlag::S_IFCHR && st.st_rdev == nix::sys::stat::makedev(1, 3) {
            Kind::Null
        } else if fmt == SFlag::S_IFCHR && nix::unistd::isatty(&fd).unwrap_or(false) {
            Kind::Tty
        } else {
            Kind::Other
        })
    }

    /// Whether splice(2) can move bytes out of it into a pipe: pipes, files and stream
    /// sockets by reference, terminals by the tty layer's copy. Other devices refuse
    /// (`/dev/null`: EINVAL).
    pub fn splices_out(self) -> bool {
        matches!(
            self,
            Kind::Pipe | Kind::File { .. } | Kind::Tty | Kind::Socket { stream: true }
        )
    }

    /// Whether splice(2) from a pipe into it is correct and never waits for a reader: a
    /// pipe (SPLICE_F_NONBLOCK covers both pipes), a file not opened for appending
    /// (splice refuses those; it may wait for the disk, as any write to it would),
    /// `/dev/null` (which drops what it is given). A socket or a terminal would block
    /// for as long as its reader stops, whatever the flags (the non-blocking flag covers
    /// only the pipe side), and a descriptor's own `O_NONBLOCK` is not ours to set
    /// (others share it).
    pub fn splices_in(self) -> bool {
        matches!(self, Kind::Pipe | Kind::File { append: false } | Kind::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_real_descriptors() {
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(Kind::of(&r).unwrap(), Kind::Pipe);
        assert_eq!(Kind::of(&w).unwrap(), Kind::Pipe);
        let path = std::env::temp_dir().join(format!("sb-kind-{}", std::process::id()));
        let plain = std::fs::File::create(&path).unwrap();
        let append = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        assert_eq!(Kind::of(&plain).unwrap(), Kind::File { append: false });
        assert_eq!(Kind::of(&append).unwrap(), Kind::File { append: true });
        std::fs::remove_file(&path).unwrap();
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        assert_eq!(Kind::of(&null).unwrap(), Kind::Null);
        let zero = std::fs::File::open("/dev/zero").unwrap();
        assert_eq!(Kind::of(&zero).unwrap(), Kind::Other);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(Kind::of(&a).unwrap(), Kind::Socket { stream: true });
        let (d, _e) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert_eq!(Kind::of(&d).unwrap(), Kind::Socket { stream: false });
        let pty = crate::tty::open().unwrap();
        assert_eq!(Kind::of(&pty.master).unwrap(), Kind::Tty);
        assert_eq!(Kind::of(&pty.slave).unwrap(), Kind::Tty);
        // Where splice can go: out of pipes, files, terminals and stream sockets; into
        // pipes, plain files and /dev/null only.
        let outs: Vec<bool> = [Kind::Pipe, Kind::Null, Kind::Other, Kind::Socket { stream: false }]
            .map(Kind::splices_out)
            .into();
        assert_eq!(outs, [true, false, false, false]);
        let ins: Vec<bool> = [
            Kind::File { append: true },
            Kind::Socket { stream: true },
            Kind::Tty,
            Kind::Null,
        ]
        .map(Kind::splices_in)
        .into();
        assert_eq!(ins, [false, false, false, true]);
    }
}
