//! Why a server could not start, or stopped: each with the text Mesos prints for it,
//! where Mesos has one.

use std::fmt;
use std::io;

use crate::config::ConfigError;

/// A server that could not start or go on serving.
#[derive(Debug)]
pub enum Error {
    /// SIGTERM and SIGPIPE could not be blocked.
    BlockSignals(nix::Error),
    /// The signalfd for SIGTERM could not be made.
    SignalFd(nix::Error),
    /// The ring could not be set up (io_uring refused, or an opcode missing).
    Ring(io::Error),
    /// A container stream or its logger is not usable.
    Redirect { stream: &'static str, source: io::Error },
    /// The relay's sizes do not fit together.
    Config(ConfigError),
    /// The socket could not be created.
    Socket(io::Error),
    /// Waiting for completions failed while serving.
    Serving(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BlockSignals(e) => write!(f, "Failed to block signals: {e}"),
            Error::SignalFd(e) => write!(f, "Failed to register signal 'Terminated': {e}"),
            Error::Ring(e) => write!(f, "{e}"),
            Error::Redirect { stream, source } => {
                write!(f, "Failed redirecting {stream}: {}", crate::sys::strerror(source))
            }
            Error::Config(e) => write!(f, "{e}"),
            Error::Socket(e) => write!(f, "Failed to create the io switchboard server: {e}"),
            Error::Serving(e) => write!(f, "The io switchboard server failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::BlockSignals(e) | Error::SignalFd(e) => Some(e),
            Error::Ring(e) | Error::Socket(e) | Error::Serving(e) => Some(e),
            Error::Redirect { source, .. } => Some(source),
            Error::Config(e) => Some(e),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}
