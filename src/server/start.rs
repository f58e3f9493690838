//! Start-up: signals, the container's descriptors and the descriptor limit, checked
//! before the socket exists (once its path exists, the agent connects).

use std::os::fd::{OwnedFd, RawFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::Error;
use super::output::{self, Source};
use crate::config::{Config, Descriptors, PIPE_BYTES};
use crate::ring::{Fd, Ring};
use crate::sys::Kind;

/// Descriptors kept for our own (ring, signals, sources, loggers, staging pipes, logs).
const FD_RESERVE: usize = 64;

/// Blocks SIGTERM, which then comes through the signalfd returned, and SIGPIPE, which
/// stays pending (writes to a closed pipe or socket fail with EPIPE instead of killing
/// us).
pub(super) fn signal_fd() -> Result<OwnedFd, Error> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGPIPE);
    mask.thread_block().map_err(Error::BlockSignals)?;
    let mut only_term = SigSet::empty();
    only_term.add(Signal::SIGTERM);
    Ok(SignalFd::with_flags(&only_term, SfdFlags::SFD_CLOEXEC)
        .map_err(Error::SignalFd)?
        .into())
}

/// Takes the container's output streams and their loggers (one stream, stdout, for a
/// PTY), made non-blocking; container pipes are raised to 1 MiB.
pub(super) fn adopt_streams(ring: &mut Ring, fds: &Descriptors) -> Result<(Vec<Source>, Vec<Fd>), Error> {
    let streams: &[(RawFd, RawFd, &str)] = if fds.tty {
        &[(fds.stdout_from_fd, fds.stdout_to_fd, "stdout")]
    } else {
        &[
            (fds.stdout_from_fd, fds.stdout_to_fd, "stdout"),
            (fds.stderr_from_fd, fds.stderr_to_fd, "stderr"),
        ]
    };
    let mut sources = Vec::new();
    let mut loggers = Vec::new();
    for &(from, to, name) in streams {
        let bad = |source| Error::Redirect { stream: name, source };
        inherited(from).and_then(|()| inherited(to)).map_err(bad)?;
        let source = ring.adopt_inherited(from).map_err(bad)?;
        let kind = Kind::of(ring.borrow(source)).map_err(bad)?;
        crate::sys::set_nonblocking(ring.borrow(source)).map_err(bad)?;
        if kind == Kind::Pipe {
            // A reader on another core drains a 1 MiB pipe about three times as fast as a
            // 64 KiB one (tuning.md, K5). Best effort: past the per-user pipe budget
            // (fs.pipe-user-pages-soft) the pipe keeps its size.
            let _ = crate::sys::grow_pipe(ring.borrow(source), PIPE_BYTES);
        }
        sources.push(Source {
            fd: source,
            pty: fds.tty,
            splices: kind.splices_out(),
        });
        let logger = ring.adopt_inherited(to).map_err(bad)?;
        loggers.push(own_nonblocking(ring, logger, name));
    }
    Ok((sources, loggers))
}

/// A logger that is a terminal (or another device) gets a description of our own,
/// opened again through `/proc/self/fd` with `O_NONBLOCK`: a terminal write on a
/// blocking description waits for its reader inside the syscall whichever engine makes
/// it (io_uring issues it inline), which would stop the whole server while the reader is
/// stopped (a ^S, a paused pager). Its original description, which others may share, is
/// left as it is. Pipes, sockets and files need none of this (they take non-blocking
/// writes per call, or never wait for a reader).
fn own_nonblocking(ring: &mut Ring, logger: Fd, name: &str) -> Fd {
    use std::os::unix::fs::OpenOptionsExt;
    if !matches!(Kind::of(ring.borrow(logger)), Ok(Kind::Tty | Kind::Other))
        || crate::sys::is_nonblocking(ring.borrow(logger))
    {
        return logger;
    }
    let path = format!("/proc/self/fd/{}", ring.raw(logger));
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
    {
        Ok(file) => ring.adopt(file.into()),
        Err(e) => {
            tracing::warn!(
                "the {name} logger is a terminal or device that could not be opened again non-blocking ({e}): \
                 while its reader stops, so does the server"
            );
            logger
        }
    }
}

/// Takes the container's stdin, made non-blocking (as Mesos does: a full pipe then waits
/// on a poll). A descriptor that is not open is only logged: input requests then fail.
pub(super) fn adopt_stdin(ring: &mut Ring, fd: RawFd) -> Option<Fd> {
    match inherited(fd).and_then(|()| ring.adopt_inherited(fd)) {
        Ok(fd) => {
            let _ = crate::sys::set_nonblocking(ring.borrow(fd));
            Some(fd)
        }
        Err(e) => {
            tracing::warn!("stdin_to_fd {fd} is not usable: {e}");
            None
        }
    }
}

/// A container descriptor must be one the process was started with (when that was
/// noted): a number it opened itself (its log file, the signalfd) is not the container's.
fn inherited(fd: RawFd) -> std::io::Result<()> {
    match crate::sys::was_inherited(fd) {
        Some(false) => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
        _ => Ok(()),
    }
}

/// The output engine's options. Every connection takes a descriptor, and a zero-copy
/// client two more (its pipe): clients take the zero-copy path only while the pipes leave
/// room for every connection allowed.
pub(super) fn output_options(config: &Config) -> output::Options {
    let connections = config.limits.max_connections;
    let wanted = if config.zero_copy { 3 * connections } else { connections };
    let limit = raise_fd_limit(wanted);
    output::Options {
        hangup_polls: true,
        block_timeout: config.limits.block_timeout,
        zero_copy: config.zero_copy,
        max_zero_copy_clients: limit.saturating_sub(FD_RESERVE + connections) / 2,
        screen: config.screen,
        window_policy: config.window_policy,
    }
}

/// Raises the soft limit on open descriptors towards the hard one, enough for
/// `descriptors` besides our own (the usual soft limit of 1024 is below the default of
/// 4096 connections). Best effort: a lower limit only means accept fails with EMFILE
/// sooner, which is handled. Returns the limit in force.
fn raise_fd_limit(descriptors: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    let want = (descriptors as u64).saturating_add(FD_RESERVE as u64).min(hard);
    if want > soft {
        match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            Ok(()) => {
                tracing::debug!("raised the descriptor limit from {soft} to {want}");
                return usize::try_from(want).unwrap_or(usize::MAX);
            }
            Err(e) => tracing::warn!("cannot raise the descriptor limit from {soft}: {e}"),
        }
    }
    usize::try_from(soft).unwrap_or(usize::MAX)
}
